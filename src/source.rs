//! The base model a config names in `model.checkpoint` (`BaseModel::parse`): a local directory, a hub repo
//! (downloaded into `checkpoints/<org>/<name>/` on first use), or a finished experiment
//! (`experiment:<name>[/v<N>][@best]`: the hub checkpoint a completed run exported, of its final or its
//! best checkpoint).
use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::Problems;
use crate::experiment::{newest_completed, EXPERIMENTS_DIR};
use crate::hub;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseModel {
    Dir(PathBuf),
    Hub {
        repo: String,
        revision: Option<String>,
    },
    /// `best`: the run's best checkpoint (`@best`) instead of its final one.
    Experiment {
        name: String,
        version: Option<u32>,
        best: bool,
    },
}

impl BaseModel {
    pub fn parse(m: &ModelConfig) -> BaseModel {
        if let Some(run) = m.checkpoint.strip_prefix("experiment:") {
            let (run, best) = match run.strip_suffix("@best") {
                Some(run) => (run, true),
                None => (run, false),
            };
            let (name, version) = match run.split_once('/') {
                Some((n, v)) => (n, v.strip_prefix('v').and_then(|v| v.parse::<u32>().ok())),
                None => (run, None),
            };
            return BaseModel::Experiment { name: name.to_string(), version, best };
        }
        if Path::new(&m.checkpoint).is_dir() {
            return BaseModel::Dir(PathBuf::from(&m.checkpoint));
        }
        BaseModel::Hub { repo: m.checkpoint.clone(), revision: m.revision.clone() }
    }

    /// The directory holding the model's files. A hub repo that is not in `checkpoints/` yet is
    /// downloaded when `allow_download`, else named in an error that says how to get it.
    pub fn locate(&self, allow_download: bool) -> Result<PathBuf, Problems> {
        match self {
            BaseModel::Dir(dir) => Ok(dir.clone()),
            BaseModel::Hub { repo, revision } if allow_download => hub::ensure_local(repo, revision.as_deref()),
            BaseModel::Hub { repo, .. } => {
                let dir = hub::local_dir(repo);
                match dir.join("config.json").is_file() {
                    true => Ok(dir),
                    false => Err(Problems::one(hub::not_downloaded_hint(repo, &dir))),
                }
            }
            BaseModel::Experiment { name, version, best } => experiment_model(name, *version, *best),
        }
    }

    /// For `experiment:<name>[/vN]`, the run directory it names.
    pub fn experiment_run(&self) -> Option<Result<PathBuf, Problems>> {
        match self {
            BaseModel::Experiment { name, version, .. } => Some(experiment_run(name, *version)),
            _ => None,
        }
    }

    /// For `experiment:<name>…@best`: the run's best checkpoint is meant.
    pub fn wants_best(&self) -> bool {
        matches!(self, BaseModel::Experiment { best: true, .. })
    }

    /// Where the model's files are or will be, without looking further (for `ftexp plan`).
    pub fn expected_dir(&self) -> PathBuf {
        match self {
            BaseModel::Dir(dir) => dir.clone(),
            BaseModel::Hub { repo, .. } => hub::local_dir(repo),
            BaseModel::Experiment { .. } => self.locate(false).unwrap_or_default(),
        }
    }
}

/// The run directory `experiment:<name>[/vN]` names: that version, or the newest completed one.
fn experiment_run(name: &str, version: Option<u32>) -> Result<PathBuf, Problems> {
    let parent = Path::new(EXPERIMENTS_DIR).join(name);
    let Some(version) = version.or_else(|| newest_completed(Path::new(EXPERIMENTS_DIR), name)) else {
        return Err(Problems::one(format!(
            "model.checkpoint = \"experiment:{name}\": no completed run of \"{name}\" under {}; run it first",
            parent.display()
        )));
    };
    Ok(parent.join(format!("v{version}")))
}

fn experiment_model(name: &str, version: Option<u32>, best: bool) -> Result<PathBuf, Problems> {
    let run = experiment_run(name, version)?;
    let named = format!(
        "model.checkpoint = \"experiment:{name}{}{}\"",
        version.map_or(String::new(), |v| format!("/v{v}")),
        if best { "@best" } else { "" }
    );
    let dir = run.join(exported_model(best));
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    if best && !dir.parent().is_some_and(|ckpt| ckpt.join("state.json").is_file()) {
        return Err(Problems::one(format!(
            "{named}: {} has no best checkpoint; runs keep one with train.save_best = true (or train.early_stopping set)",
            run.display()
        )));
    }
    Err(Problems::one(format!(
        "{named}: {} has no exported model; a run is the base of another when it exported one: `full` runs do, LoRA runs with export.format = \"hf\" (or `ftexp export RUN --out DIR` and model.checkpoint = DIR)",
        run.display()
    )))
}

/// Where in a run directory its exported hub checkpoint is.
pub const EXPORTED_MODEL: &str = "checkpoints/final/model";

/// Where in a run directory the hub checkpoint of its final (or `best`) checkpoint is exported.
pub fn exported_model(best: bool) -> &'static str {
    match best {
        true => "checkpoints/best/model",
        false => EXPORTED_MODEL,
    }
}

/// The directory of the tokenizer to use: `model.tokenizer`, else the base model's.
pub fn tokenizer_dir(m: &ModelConfig, allow_download: bool) -> Result<PathBuf, Problems> {
    match &m.tokenizer {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => BaseModel::parse(m).locate(allow_download),
    }
}
