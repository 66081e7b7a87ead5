//! A run's base as the plan found it.
use std::path::PathBuf;

use serde::Serialize;

use crate::model::spec::ModelSpec;

/// A base found on disk (or the tokenizer and `[model.architecture]` of a model trained from scratch).
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    /// The base's directory (the tokenizer's for a model trained from scratch).
    pub base_dir: PathBuf,
    pub tokenizer_dir: PathBuf,
    /// The base's `config.json`, written again with an exported model.
    #[serde(skip)]
    pub config_json: serde_json::Value,
    #[serde(skip)]
    pub spec: ModelSpec,
}
