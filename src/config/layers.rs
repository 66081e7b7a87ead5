//! The layers a config is made of, each a TOML table with where it came from.
use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};

use super::schema::{self, KEYS};
use crate::error::Problems;

#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env,
    Set(String),
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub origin: Origin,
    pub table: toml::Table,
    /// The file's text, to point errors at a line.
    pub text: Option<String>,
}

impl Layer {
    /// Every value this layer sets, by dotted key. Tables the schema does not know are kept whole, so
    /// that an unknown `[traing]` table is reported once, not once per key inside it.
    pub fn leaves(&self) -> Vec<(String, &toml::Value)> {
        let mut out = Vec::new();
        collect_leaves(&self.table, "", &mut out);
        out
    }

    /// Where `key` was set in this layer, for messages and `ftexp plan`.
    pub fn label_for(&self, key: &str) -> String {
        match &self.origin {
            Origin::Default => "default".into(),
            Origin::File(path) => match self.text.as_deref().and_then(|t| line_of(t, key)) {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            },
            Origin::Env => format!("env {}", env_var_name(key)),
            Origin::Set(arg) => format!("--set {arg}"),
        }
    }
}

fn collect_leaves<'a>(table: &'a toml::Table, prefix: &str, out: &mut Vec<(String, &'a toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) if schema::is_table(&key) => collect_leaves(t, &key, out),
            _ => out.push((key, v)),
        }
    }
}

impl Provider for &Layer {
    fn metadata(&self) -> Metadata {
        let name = match &self.origin {
            Origin::Default => "built-in defaults".to_string(),
            Origin::File(p) => p.display().to_string(),
            Origin::Env => "FTEXP_ environment variables".into(),
            Origin::Set(arg) => format!("--set {arg}"),
        };
        Metadata::named(name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.table).data()
    }
}

/// The built-in defaults of [`KEYS`], and `name` from the config file's name.
pub fn defaults(config_path: &Path) -> Layer {
    let mut table = toml::Table::new();
    for key in KEYS {
        if let Some(literal) = key.default {
            insert_path(&mut table, key.key, parse_literal(literal));
        }
    }
    let stem = config_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    insert_path(&mut table, "name", toml::Value::String(stem));
    Layer { origin: Origin::Default, table, text: None }
}

/// Reads `path` and, depth first, the files it extends; bases come before the files naming them.
pub fn load_chain(path: &Path, stack: &mut Vec<PathBuf>, out: &mut Vec<Layer>, problems: &mut Problems) {
    let chain = |stack: &[PathBuf], last: &Path| {
        stack
            .iter()
            .map(|p| p.display().to_string())
            .chain([last.display().to_string()])
            .collect::<Vec<_>>()
            .join(" → ")
    };
    let canonical = match path.canonicalize() {
        Ok(c) => c,
        Err(_) => {
            let msg = if stack.is_empty() {
                format!("{}: config file not found; check the path", path.display())
            } else {
                format!(
                    "{}: extends a file that does not exist: {} (chain: {}); fix the path in `extends`, which is relative to the file naming it",
                    stack.last().unwrap().display(),
                    path.display(),
                    chain(stack, path)
                )
            };
            problems.push(msg);
            return;
        }
    };
    if stack.iter().any(|p| p.canonicalize().ok().as_ref() == Some(&canonical)) {
        problems.push(format!(
            "{}: `extends` makes a cycle: {}; remove one of these `extends` entries",
            stack.last().unwrap().display(),
            chain(stack, path)
        ));
        return;
    }
    if out.iter().any(|l| matches!(&l.origin, Origin::File(p) if p.canonicalize().ok().as_ref() == Some(&canonical))) {
        return; // already read through another branch of the chain
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return problems.push(format!("{}: cannot read: {e}", path.display())),
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            let first = e.message().lines().next().unwrap_or("invalid TOML").to_string();
            return problems.push(match line {
                Some(l) => format!("{}:{l}: invalid TOML: {first}", path.display()),
                None => format!("{}: invalid TOML: {first}", path.display()),
            });
        }
    };
    let bases: Vec<String> = match table.get("extends") {
        None => vec![],
        Some(toml::Value::Array(items)) if items.iter().all(|v| v.is_str()) => {
            items.iter().map(|v| v.as_str().unwrap().to_string()).collect()
        }
        Some(_) => {
            return problems.push(format!(
                "{}: `extends` must be a list of file paths, e.g. extends = [\"base/lora.toml\"]",
                path.display()
            ))
        }
    };
    stack.push(path.to_path_buf());
    let dir = path.parent().unwrap_or(Path::new("."));
    for base in bases {
        load_chain(&dir.join(base), stack, out, problems);
    }
    stack.pop();
    out.push(Layer { origin: Origin::File(path.to_path_buf()), table, text: Some(text) });
}

pub const ENV_PREFIX: &str = "FTEXP_";

/// `FTEXP_TRAIN__LEARNING_RATE=3e-4` sets `train.learning_rate`.
pub fn from_env(vars: impl IntoIterator<Item = (String, String)>, problems: &mut Problems) -> Option<Layer> {
    let mut table = toml::Table::new();
    let mut vars: Vec<_> = vars.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (name, value) in &vars {
        let key = name[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
        if key.is_empty() || key.split('.').any(str::is_empty) {
            problems.push(format!(
                "env {name}: not a config key; write FTEXP_<TABLE>__<KEY>, e.g. FTEXP_TRAIN__LEARNING_RATE"
            ));
            continue;
        }
        insert_path(&mut table, &key, parse_literal(value));
    }
    (!table.is_empty()).then_some(Layer { origin: Origin::Env, table, text: None })
}

pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"))
}

/// `--set train.learning_rate=3e-4`.
pub fn from_set(arg: &str) -> Result<Layer, String> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(format!("--set {arg}: expected KEY=VALUE, e.g. --set train.learning_rate=3e-4"));
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("--set {arg}: `{key}` is not a key; write it as table.key, e.g. train.epochs"));
    }
    let mut table = toml::Table::new();
    insert_path(&mut table, key, parse_literal(value.trim()));
    Ok(Layer { origin: Origin::Set(arg.to_string()), table, text: None })
}

/// A command-line or environment value: a TOML literal (`3e-4`, `true`, `[1, 2]`, `"x"`), else a string.
pub fn parse_literal(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

pub fn insert_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut cur = table;
    for part in parts {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        cur = entry.as_table_mut().unwrap();
    }
    cur.insert(last.to_string(), value);
}

/// Removes the dotted `key` from `table` (and tables it leaves empty).
pub fn remove_path(table: &mut toml::Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((head, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(head) {
                remove_path(inner, rest);
                if inner.is_empty() {
                    table.remove(head);
                }
            }
        }
    }
}

/// The 1-based line of `text` that sets the dotted `key` (in a `[table]`, dotted, or inline table).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let clean =
        |s: &str| s.split('.').map(|p| p.trim().trim_matches('"').trim_matches('\'')).collect::<Vec<_>>().join(".");
    let mut header = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') && !line.starts_with("[[") {
            header = clean(line.trim_start_matches('[').split(']').next().unwrap_or(""));
            if header == key {
                return Some(i + 1);
            }
            continue;
        }
        let Some((lhs, _)) = line.split_once('=') else { continue };
        if line.starts_with('#') {
            continue;
        }
        let local = clean(lhs);
        let full = if header.is_empty() { local } else { format!("{header}.{local}") };
        if full == key || key.starts_with(&format!("{full}.")) {
            return Some(i + 1);
        }
    }
    None
}
