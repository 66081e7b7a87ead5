//! Where a config's base model and tokenizer are, and the architecture its `config.json` gives: found
//! once, by the plan, and handed to the build.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Init, ModelConfig};
use crate::error::Problems;
use crate::model::spec::ModelSpec;
use crate::source::{self, BaseModel};

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

/// Finds the base of `m`: the `recorded` directory of a run that is resumed or rerun, else the one
/// `model.checkpoint` names, downloaded (or exported from a run) first when `allow_download`.
pub fn locate(m: &ModelConfig, allow_download: bool, recorded: Option<&Path>) -> Result<Located, Problems> {
    if m.init == Init::Random {
        let (json, tokenizer_dir) = super::random_architecture(m, allow_download)?;
        let spec = ModelSpec::from_json(&json).map_err(|e| Problems::one(format!("[model.architecture]: {e}")))?;
        return Ok(Located { base_dir: tokenizer_dir.clone(), tokenizer_dir, config_json: json, spec });
    }
    let base_dir = match recorded {
        Some(dir) => dir.to_path_buf(),
        None if allow_download => super::locate_base(m)?,
        None => BaseModel::parse(m).locate(false)?,
    };
    let config = base_dir.join("config.json");
    if !config.is_file() {
        return Err(Problems::one(match recorded.is_some() || allow_download {
            true => format!("{}: not found; is {} a model checkpoint directory?", config.display(), base_dir.display()),
            false => crate::hub::not_downloaded_hint(&m.checkpoint, &base_dir),
        }));
    }
    let (spec, config_json) = ModelSpec::read(&config)?;
    let tokenizer_dir = match (&m.tokenizer, recorded) {
        (None, Some(dir)) => dir.to_path_buf(),
        _ => source::tokenizer_dir(m, allow_download)?,
    };
    Ok(Located { base_dir, tokenizer_dir, config_json, spec })
}
