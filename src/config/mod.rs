//! Layered experiment configs: built-in defaults < `extends` chain < the file < `FTEXP_*` env < `--set`.
//! Each layer is checked on its own (so an error names the file, variable or flag that caused it),
//! then figment merges the layers and extracts the typed [`Config`].
mod choices;
mod layers;
mod resolved;
pub mod schema;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

pub use choices::{
    DataFormat, DeviceSetting, ExportDtype, ExportFormat, Init, LongSamples, LrSchedule, MethodKind, ModelType,
    Precision, Quantize, TrainOn,
};
use figment::Figment;
pub use layers::{parse_literal, Layer, Origin};
pub use resolved::Resolved;
pub use schema::{
    Architecture, Columns, Config, DataConfig, KeyDoc, MethodConfig, ModelConfig, SplitRatios, Switch, TrackConfig,
    TrainConfig, KEYS,
};
pub use validate::{check_name, check_run, run_rules};

use crate::error::Problems;

/// Resolves `path` with the process environment and the `--set` overrides.
pub fn resolve(path: &Path, sets: &[String]) -> Result<Resolved, Problems> {
    resolve_with_env(path, sets, std::env::vars())
}

/// As [`resolve`], with the environment given (tests pass their own).
pub fn resolve_with_env(
    path: &Path,
    sets: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Resolved, Problems> {
    let mut problems = Problems::default();
    let mut stack = Vec::new();
    let mut file_layers = Vec::new();
    layers::load_chain(path, &mut stack, &mut file_layers, &mut problems);
    problems.into_result()?;

    let mut all = vec![layers::defaults(path)];
    all.extend(file_layers);
    all.extend(layers::from_env(env, &mut problems));
    for set in sets {
        match layers::from_set(set) {
            Ok(layer) => all.push(layer),
            Err(msg) => problems.push(msg),
        }
    }
    for layer in &mut all {
        validate::check_layer(layer, &mut problems);
    }

    let mut figment = Figment::new();
    let mut sources = BTreeMap::new();
    for layer in &all {
        for (key, _) in layer.leaves() {
            sources.insert(key.clone(), layer.label_for(&key));
        }
        figment = figment.merge(layer);
    }
    let mut config: Config = match figment.extract() {
        Ok(config) => config,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            return Err(problems);
        }
    };
    config.extends = all
        .iter()
        .rev()
        .find(|l| matches!(l.origin, Origin::File(_)))
        .and_then(|l| l.table.get("extends"))
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let files = all
        .iter()
        .filter_map(|l| match &l.origin {
            Origin::File(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let resolved = Resolved { config, sources, files };
    validate::check_config(&resolved, &mut problems);
    problems.into_result()?;
    Ok(resolved)
}

/// The resolved config as a re-runnable TOML file: every key, no `extends`.
pub fn to_toml(config: &Config) -> String {
    toml::to_string(config).expect("a Config always serializes to TOML")
}

/// The config reference (`ftexp keys`, the table of docs/config.md), from the schema itself.
pub fn keys_reference(markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    }
    for k in KEYS {
        let default = k.default.map(|d| format!("`{d}`")).unwrap_or_else(|| "unset".into());
        if markdown {
            let doc = k.doc.replace('|', "\\|");
            out.push_str(&format!("| `{}` | {} | {default} | {doc} |\n", k.key, k.kind.describe()));
        } else {
            out.push_str(&format!("{} ({}; default {default}): {}\n", k.key, k.kind.describe(), k.doc));
        }
    }
    out
}
