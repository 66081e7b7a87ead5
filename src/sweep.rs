//! Sweeps: a grid of `--set` values (and seeds) expanded into one `ftexp run` per point, printed as
//! command lines or as a Makefile so `make -j N` runs the points in parallel.
use std::path::Path;

use crate::config::{self, schema};
use crate::error::{did_you_mean, Problems};

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// `key=value` pairs, in grid order.
    pub sets: Vec<String>,
    pub seed: Option<u64>,
    /// `key=value,key=value`: the label recorded in the run's run.json.
    pub tag: String,
}

/// Expands `grid` (`"train.learning_rate=3e-3,9e-3 method.lora_r=8,16"`) and `seeds` (`"1 2 3"`),
/// checking every point resolves with `config`.
pub fn points(config: &Path, grid: &str, seeds: &str) -> Result<Vec<Point>, Problems> {
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    let mut problems = Problems::default();
    for entry in grid.split_whitespace() {
        let Some((key, values)) = entry.split_once('=') else {
            problems.push(format!("--grid {entry}: expected KEY=V1,V2,…, e.g. train.learning_rate=3e-3,9e-3"));
            continue;
        };
        if schema::find(key).is_none() {
            let hint = did_you_mean(key, schema::KEYS.iter().map(|k| k.key))
                .map_or("`ftexp keys` lists every key".to_string(), |k| format!("did you mean `{k}`?"));
            problems.push(format!("--grid {entry}: unknown key `{key}`; {hint}"));
            continue;
        }
        let values: Vec<String> =
            values.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from).collect();
        if values.is_empty() {
            problems.push(format!("--grid {entry}: no values; list them after `=`, separated by commas"));
            continue;
        }
        axes.push((key.to_string(), values));
    }
    let seeds: Vec<Option<u64>> = if seeds.trim().is_empty() {
        vec![None]
    } else {
        seeds
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map(Some).map_err(|_| format!("--seeds: \"{s}\" is not a whole number")))
            .collect::<Result<_, _>>()
            .map_err(Problems::one)?
    };
    problems.into_result()?;
    let mut combos: Vec<Vec<String>> = vec![vec![]];
    for (key, values) in &axes {
        combos = combos
            .iter()
            .flat_map(|c| values.iter().map(move |v| [c.clone(), vec![format!("{key}={v}")]].concat()))
            .collect();
    }
    let mut out = Vec::new();
    for sets in combos {
        for seed in &seeds {
            let mut all = sets.clone();
            if let Some(s) = seed {
                all.push(format!("seed={s}"));
            }
            config::resolve(config, &all)?;
            let tag = tag(&sets, &axes);
            out.push(Point { sets: sets.clone(), seed: *seed, tag });
        }
    }
    Ok(out)
}

/// `learning_rate=3e-4,lora_r=8`: each `key=value` of a point with its key shortened to its last part
/// (the whole key where two axes share that last part), and every value whole, as written.
fn tag(sets: &[String], axes: &[(String, Vec<String>)]) -> String {
    let leaf = |key: &str| key.rsplit('.').next().unwrap_or(key).to_string();
    let short = |key: &str| {
        let shared = axes.iter().filter(|(k, _)| leaf(k) == leaf(key)).count() > 1;
        if shared {
            key.to_string()
        } else {
            leaf(key)
        }
    };
    let parts: Vec<String> = sets
        .iter()
        .map(|s| match s.split_once('=') {
            Some((key, value)) => format!("{}={value}", short(key)),
            None => s.clone(),
        })
        .collect();
    parts.join(",")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The `ftexp run` arguments of a point (after the config path).
pub fn run_args(p: &Point) -> String {
    let mut args: Vec<String> = p.sets.iter().map(|s| format!("--set {}", quote(s))).collect();
    if let Some(seed) = p.seed {
        args.push(format!("--seed {seed}"));
    }
    if !p.tag.is_empty() {
        args.push(format!("--tag {}", quote(&p.tag)));
    }
    args.join(" ")
}

/// `line` as a recipe line make runs as written: make expands `$`, so each becomes `$$`.
fn recipe(line: &str) -> String {
    line.replace('$', "$$")
}

/// A Makefile with one target per point; each seed's data is prepared once before its points run.
pub fn makefile(bin: &Path, config: &Path, points: &[Point]) -> String {
    let (bin, config) = (quote(&bin.display().to_string()), quote(&config.display().to_string()));
    let targets: Vec<String> = (1..=points.len()).map(|i| format!("point-{i}")).collect();
    let mut out = format!(
        "# Made by `ftexp sweep --makefile`: {} runs.\n.PHONY: all {}\nall: {}\n",
        points.len(),
        targets.join(" "),
        targets.join(" ")
    );
    let mut seeds: Vec<Option<u64>> = points.iter().map(|p| p.seed).collect();
    seeds.dedup();
    for seed in &seeds {
        let name = seed.map_or("prepare".to_string(), |s| format!("prepare-seed-{s}"));
        let set = seed.map_or(String::new(), |s| format!(" --set seed={s}"));
        let line = recipe(&format!("{bin} prepare {config}{set} --json > /dev/null"));
        out.push_str(&format!(".PHONY: {name}\n{name}:\n\t{line}\n"));
    }
    for (target, p) in targets.iter().zip(points) {
        let prep = p.seed.map_or("prepare".to_string(), |s| format!("prepare-seed-{s}"));
        out.push_str(&format!("{target}: {prep}\n\t{}\n", recipe(&format!("{bin} run {config} {}", run_args(p)))));
    }
    out
}
