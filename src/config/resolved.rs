//! The outcome of resolving a config: its values, and the layer each one came from.
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::schema::Config;

/// A config with every value resolved, and where each value came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    /// Dotted key → where its value was set (`default`, `configs/x.toml:4`, `env FTEXP_SEED`, `--set seed=1`).
    pub sources: BTreeMap<String, String>,
    /// The config files read, bases first, the named file last.
    pub files: Vec<PathBuf>,
}

impl Resolved {
    pub fn source(&self, key: &str) -> &str {
        self.sources.get(key).map(String::as_str).unwrap_or("unset")
    }
}
