//! `ftexp report`: compares runs side by side. One row per run with the config keys that differ
//! between the runs shown and their results, groups of runs that differ only in the seed (mean ± sample
//! std), and `report.png` with every run's val-loss curve.
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::{json, Value};

use crate::error::Problems;
use crate::experiment::{metrics, plot, versions, RunInfo};

/// One run: where it is, how it went, its whole config and its results.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// `<name>/v<N>`.
    pub label: String,
    pub dir: PathBuf,
    /// run.json's status (`completed`, `failed`, `interrupted`, `running`), or `missing` without a run.json,
    /// `unreadable` when run.json cannot be parsed.
    pub status: String,
    pub seed: Option<u64>,
    /// The sweep point, when the run was one.
    pub tag: Option<String>,
    /// Every config value under its dotted key (`train.learning_rate`), in the schema's order.
    pub config: Vec<(String, toml::Value)>,
    /// The lowest val loss of the run's evaluations (run.json's, else metrics.csv's), and its step.
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    pub final_val_loss: Option<f64>,
    pub test_loss: Option<f64>,
    /// Exact match on the test split, when `ftexp eval` recorded one.
    pub exact_match: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub seconds: Option<f64>,
    /// (optimizer step, val loss) at each evaluation.
    pub val_curve: Vec<(u64, f64)>,
}

impl RunRow {
    pub fn value(&self, key: &str) -> Option<&toml::Value> {
        self.config.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The loss runs are ranked by: the final val loss, else the best one.
    pub fn rank_loss(&self) -> Option<f64> {
        self.final_val_loss.filter(|v| v.is_finite()).or(self.best_val_loss)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table and the seed groups.
    Text,
    /// One object: `columns`, `runs` (one object per row, keyed by column) and `groups` (`--json`,
    /// spelled as in every other command).
    #[value(skip)]
    Json,
    /// A header and one line per run.
    Csv,
}

/// Columns of their own, never among the differing config keys.
const OWN_COLUMNS: [&str; 2] = ["name", "seed"];
const METRICS: [&str; 7] =
    ["best_val_loss", "best_step", "final_val_loss", "test_loss", "exact_match", "tokens_per_s", "seconds"];

/// The runs under `paths`: each an experiment directory `experiments/<name>` (all its `v<N>` runs) or a
/// run directory `experiments/<name>/v<N>`. A run given twice is listed once.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<RunRow>, Problems> {
    let mut problems = Problems::default();
    let mut dirs = Vec::new();
    for path in paths {
        if is_run_dir(path) {
            dirs.push(path.clone());
        } else if path.is_dir() && !run_versions(path).is_empty() {
            dirs.extend(run_versions(path).into_iter().map(|v| path.join(format!("v{v}"))));
        } else if !path.exists() {
            problems.push(format!("{}: no such directory", path.display()));
        } else {
            problems.push(format!(
                "{}: neither an experiment directory (experiments/<name>, holding v<N> runs) nor a run directory (experiments/<name>/v<N>)",
                path.display()
            ));
        }
    }
    problems.into_result()?;
    let mut seen = HashSet::new();
    dirs.retain(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())));
    Ok(dirs.iter().map(|d| read_run(d)).collect())
}

fn is_run_dir(path: &Path) -> bool {
    let versioned = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('v'))
        .is_some_and(|n| n.parse::<u32>().is_ok());
    versioned && (path.join("config.toml").is_file() || path.join("run.json").is_file())
}

/// The `v<N>` subdirectories of an experiment directory, ascending.
fn run_versions(path: &Path) -> Vec<u32> {
    versions(path).into_iter().filter(|v| path.join(format!("v{v}")).is_dir()).collect()
}

fn read_run(dir: &Path) -> RunRow {
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = dir.parent().map(file_name).filter(|n| !n.is_empty()).unwrap_or_else(|| ".".into());
    let config = read_config(&dir.join("config.toml"));
    let info: Option<Result<RunInfo, ()>> = std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .map(|text| serde_json::from_str::<RunInfo>(&text).map_err(|_| ()));
    let status = match &info {
        None => "missing".to_string(),
        Some(Err(())) => "unreadable".to_string(),
        Some(Ok(i)) => i.status.as_str().to_string(),
    };
    let info = info.and_then(Result::ok);
    let results = info.as_ref().and_then(|i| i.results.as_ref());
    let val_curve: Vec<(u64, f64)> = metrics::read(&dir.join("metrics.csv"))
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Some((r.step, r.val_loss.filter(|v| v.is_finite())?)))
        .collect();
    let lowest = val_curve.iter().copied().reduce(|a, b| if b.1 < a.1 { b } else { a });
    let recorded = results.and_then(|r| Some((r.best_step?, r.best_val_loss?)));
    let best = recorded.or(lowest);
    let seed =
        config.iter().find(|(k, _)| k == "seed").and_then(|(_, v)| v.as_integer()).and_then(|s| u64::try_from(s).ok());
    RunRow {
        label: format!("{name}/{}", file_name(dir)),
        dir: dir.to_path_buf(),
        status,
        seed,
        tag: info.as_ref().and_then(|i| i.tag.clone()),
        best_val_loss: best.map(|b| b.1),
        best_step: best.map(|b| b.0),
        final_val_loss: results.and_then(|r| r.final_val_loss),
        test_loss: results.and_then(|r| r.test_loss),
        exact_match: info
            .as_ref()
            .and_then(|i| i.evaluations.get(crate::data::Split::Test.name()))
            .and_then(|e| e.exact_match),
        tokens_per_s: results.map(|r| r.tokens_per_s),
        seconds: results.map(|r| r.train_seconds),
        config,
        val_curve,
    }
}

/// The saved config, resolved (so keys an older run did not write get their defaults) without the
/// environment; as written when it no longer resolves; empty without one.
fn read_config(path: &Path) -> Vec<(String, toml::Value)> {
    let table = match crate::config::resolve_with_env(path, &[], std::iter::empty()) {
        Ok(resolved) => toml::Value::try_from(&resolved.config).ok(),
        Err(_) => std::fs::read_to_string(path).ok().and_then(|t| toml::from_str::<toml::Value>(&t).ok()),
    };
    let mut out = Vec::new();
    if let Some(table) = table {
        flatten("", &table, &mut out);
    }
    out
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        v => out.push((prefix.to_string(), v.clone())),
    }
}

/// The config keys whose values differ between `rows` (a key some runs lack differs too), in the order
/// they first appear; `name` and `seed` excluded.
pub fn differing_keys(rows: &[RunRow]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for row in rows {
        for (k, _) in &row.config {
            if !OWN_COLUMNS.contains(&k.as_str()) && !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys.retain(|k| rows.iter().any(|r| r.value(k) != rows[0].value(k)));
    keys
}

/// The rows ranked by val loss (final, else best), runs without one last; ties keep their order.
fn sorted(rows: &[RunRow]) -> Vec<&RunRow> {
    let mut out: Vec<&RunRow> = rows.iter().collect();
    out.sort_by(|a, b| match (a.rank_loss(), b.rank_loss()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    out
}

/// One table cell in each output's form.
struct Cell {
    text: String,
    csv: String,
    json: Value,
    right: bool,
}

impl Cell {
    fn str(s: Option<&str>) -> Cell {
        let s = s.unwrap_or_default();
        Cell { text: if s.is_empty() { "-".into() } else { s.into() }, csv: s.into(), json: json!(s), right: false }
    }

    fn num(v: Option<f64>, decimals: usize) -> Cell {
        match v.filter(|v| v.is_finite()) {
            Some(v) => Cell { text: format!("{v:.decimals$}"), csv: v.to_string(), json: json!(v), right: true },
            None => Cell { text: "-".into(), csv: String::new(), json: Value::Null, right: true },
        }
    }

    fn config(v: Option<&toml::Value>) -> Cell {
        match v {
            Some(v) => {
                let shown = show(v);
                let json = serde_json::to_value(v).unwrap_or_else(|_| json!(shown));
                Cell {
                    text: shown.clone(),
                    csv: shown,
                    json,
                    right: matches!(v, toml::Value::Integer(_) | toml::Value::Float(_)),
                }
            }
            None => Cell { text: "-".into(), csv: String::new(), json: Value::Null, right: false },
        }
    }
}

/// A config value as a person writes it: strings without quotes.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn metric_cells(r: &RunRow) -> [Cell; 7] {
    let mut best_step = Cell::num(r.best_step.map(|s| s as f64), 0);
    best_step.json = r.best_step.map_or(Value::Null, |s| json!(s));
    [
        Cell::num(r.best_val_loss, 4),
        best_step,
        Cell::num(r.final_val_loss, 4),
        Cell::num(r.test_loss, 4),
        Cell::num(r.exact_match, 3),
        Cell::num(r.tokens_per_s, 0),
        Cell::num(r.seconds, 1),
    ]
}

fn table(rows: &[&RunRow], keys: &[String]) -> (Vec<String>, Vec<Vec<Cell>>) {
    let mut header: Vec<String> = ["run", "status", "seed", "tag"].map(String::from).to_vec();
    header.extend(keys.iter().cloned());
    header.extend(METRICS.map(String::from));
    let body = rows
        .iter()
        .map(|r| {
            let seed = r.seed.map(|s| s.to_string());
            let mut seed_cell = Cell::str(seed.as_deref());
            seed_cell.json = r.seed.map_or(Value::Null, |s| json!(s));
            seed_cell.right = true;
            let mut tag = Cell::str(r.tag.as_deref());
            if r.tag.is_none() {
                tag.json = Value::Null;
            }
            let mut cells = vec![Cell::str(Some(&r.label)), Cell::str(Some(&r.status)), seed_cell, tag];
            cells.extend(keys.iter().map(|k| Cell::config(r.value(k))));
            cells.extend(metric_cells(r));
            cells
        })
        .collect();
    (header, body)
}

/// Runs with the same values of every differing key: the same sweep point, other seeds.
pub struct Group<'a> {
    /// `key=value` of each differing key.
    pub point: Vec<(String, String)>,
    pub runs: Vec<&'a RunRow>,
}

impl Group<'_> {
    pub fn label(&self) -> String {
        if self.point.is_empty() {
            return "all runs".into();
        }
        self.point.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    }

    fn stats(&self, get: impl Fn(&RunRow) -> Option<f64>) -> Stats {
        Stats::of(&self.runs.iter().filter_map(|r| get(r).filter(|v| v.is_finite())).collect::<Vec<_>>())
    }
}

/// The groups of `rows` with at least two runs, in the order of their best-ranked run.
pub fn groups<'a>(rows: &[&'a RunRow], keys: &[String]) -> Vec<Group<'a>> {
    let mut out: Vec<Group<'a>> = Vec::new();
    for &row in rows {
        let point: Vec<(String, String)> =
            keys.iter().map(|k| (k.clone(), row.value(k).map(show).unwrap_or_else(|| "-".into()))).collect();
        let values: Vec<Option<&toml::Value>> = keys.iter().map(|k| row.value(k)).collect();
        match out.iter_mut().find(|g| keys.iter().map(|k| g.runs[0].value(k)).eq(values.iter().copied())) {
            Some(g) => g.runs.push(row),
            None => out.push(Group { point, runs: vec![row] }),
        }
    }
    out.retain(|g| g.runs.len() >= 2);
    out
}

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub mean: Option<f64>,
    pub std: Option<f64>,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let n = values.len();
        let mean = (n > 0).then(|| values.iter().sum::<f64>() / n as f64);
        let std = mean
            .filter(|_| n > 1)
            .map(|m| (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Stats { n, mean, std }
    }

    fn text(&self) -> String {
        match (self.mean, self.std) {
            (Some(m), Some(s)) => format!("{m:.4} ± {s:.4}"),
            (Some(m), None) => format!("{m:.4}"),
            _ => "-".into(),
        }
    }

    fn json(&self) -> Value {
        json!({"mean": self.mean, "std": self.std, "n": self.n})
    }
}

fn group_json(g: &Group) -> Value {
    let point: serde_json::Map<String, Value> = g
        .point
        .iter()
        .map(|(k, _)| (k.clone(), g.runs[0].value(k).and_then(|v| serde_json::to_value(v).ok()).unwrap_or(Value::Null)))
        .collect();
    json!({
        "point": point,
        "label": g.label(),
        "count": g.runs.len(),
        "runs": g.runs.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
        "final_val_loss": g.stats(|r| r.final_val_loss).json(),
        "test_loss": g.stats(|r| r.test_loss).json(),
    })
}

/// The report of `rows` in `format`.
pub fn render(rows: &[RunRow], format: Format) -> String {
    let keys = differing_keys(rows);
    let ranked = sorted(rows);
    let (header, body) = table(&ranked, &keys);
    let groups = groups(&ranked, &keys);
    match format {
        Format::Text => render_text(&header, &body, &groups),
        Format::Json => {
            let runs: Vec<Value> = body
                .into_iter()
                .map(|cells| Value::Object(header.iter().cloned().zip(cells.into_iter().map(|c| c.json)).collect()))
                .collect();
            let groups: Vec<Value> = groups.iter().map(group_json).collect();
            let out = json!({"columns": header, "differing_keys": keys, "runs": runs, "groups": groups});
            serde_json::to_string_pretty(&out).expect("the report serializes") + "\n"
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(&header);
            for cells in &body {
                let _ = w.write_record(cells.iter().map(|c| c.csv.as_str()));
            }
            String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
        }
    }
}

fn render_text(header: &[String], body: &[Vec<Cell>], groups: &[Group]) -> String {
    let mut out = String::new();
    if body.is_empty() {
        out.push_str("no runs\n");
        return out;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| body.iter().map(|r| r[i].text.chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let right: Vec<bool> = (0..header.len()).map(|i| body.iter().all(|r| r[i].right || r[i].text == "-")).collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .enumerate()
            .map(|(i, s)| if right[i] { format!("{s:>w$}", w = widths[i]) } else { format!("{s:<w$}", w = widths[i]) })
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    out.push_str(&line(&mut header.iter().map(String::as_str)));
    for row in body {
        out.push_str(&line(&mut row.iter().map(|c| c.text.as_str())));
    }
    if !groups.is_empty() {
        out.push_str("\nruns that differ only in the seed (mean ± sample std):\n");
        for g in groups {
            let runs: Vec<&str> = g.runs.iter().map(|r| r.label.as_str()).collect();
            let _ = writeln!(
                out,
                "  {}: {} runs ({})  final_val_loss {}  test_loss {}",
                g.label(),
                g.runs.len(),
                runs.join(", "),
                g.stats(|r| r.final_val_loss).text(),
                g.stats(|r| r.test_loss).text()
            );
        }
    }
    out
}

/// The short name of a config key in a legend: its last part, `lr` for the learning rate.
fn short_key(key: &str, keys: &[String]) -> String {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let short = last(key);
    if keys.iter().filter(|k| last(k) == short).count() > 1 {
        return key.to_string();
    }
    if short == "learning_rate" {
        "lr".into()
    } else {
        short
    }
}

/// Each run's legend label: its name, the values of the differing keys, and the seed where seeds differ.
fn legend_labels(rows: &[RunRow]) -> Vec<String> {
    let keys = differing_keys(rows);
    let seeds_differ = rows.iter().any(|r| r.seed != rows[0].seed);
    rows.iter()
        .map(|r| {
            let mut label = r.label.clone();
            for k in &keys {
                let _ =
                    write!(label, " {}={}", short_key(k, &keys), r.value(k).map(show).unwrap_or_else(|| "-".into()));
            }
            if let Some(seed) = r.seed.filter(|_| seeds_differ) {
                let _ = write!(label, " seed={seed}");
            }
            label
        })
        .collect()
}

/// Well-separated colors that read on white, then plotters' palette.
fn color(i: usize) -> RGBAColor {
    const COLORS: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match COLORS.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b).to_rgba(),
        None => Palette99::pick(i).to_rgba(),
    }
}

/// Draws the val-loss curves of `rows` into the PNG `path` (through a temporary file).
pub fn plot(rows: &[RunRow], path: &Path) -> Result<(), Problems> {
    plot::write_png(path, |tmp| draw(tmp, rows))
}

fn draw(path: &Path, rows: &[RunRow]) -> Result<(), Box<dyn std::error::Error>> {
    let labels = legend_labels(rows);
    let points: Vec<(f64, f64)> = rows.iter().flat_map(|r| &r.val_curve).map(|&(x, y)| (x as f64, y)).collect();
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    let mut chart = plot::loss_axes(&root, "ftexp report", "val loss (cross entropy)", &points)?;
    let mut drawn = 0;
    for (i, (row, label)) in rows.iter().zip(&labels).enumerate() {
        if row.val_curve.is_empty() {
            continue;
        }
        let color = color(i);
        let curve: Vec<(f64, f64)> =
            row.val_curve.iter().filter(|p| plot::plottable(p.1)).map(|&(s, v)| (s as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(curve.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        drawn += 1;
    }
    if drawn > 0 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Collects the runs under `paths`, renders them in `format`, and draws `png` when given.
pub fn report(paths: &[PathBuf], format: Format, png: Option<&Path>) -> Result<String, Problems> {
    let rows = collect(paths)?;
    if let Some(png) = png {
        plot(&rows, png)?;
    }
    Ok(render(&rows, format))
}
