//! Checkpoints: `checkpoints/step-NNNNNN/`, `checkpoints/final/` and, with `train.save_best`,
//! `checkpoints/best/` (the lowest val loss so far; never resumed from), each with the trained tensors
//! (`trained.safetensors`; the whole model for `full`), the optimizer's moments and the trainer's
//! position. Written to a temporary directory and renamed, so a crash never leaves a half checkpoint
//! that looks complete.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::MethodKind;
use crate::error::Problems;

pub const TRAINED: &str = "trained.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const STATE: &str = "state.json";

/// Where training stood when a checkpoint was written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Micro-batches done.
    pub iter: u64,
    /// Training samples consumed (the position in the seeded data order).
    pub samples_seen: u64,
    /// Real (non-padding) tokens trained on.
    pub tokens: u64,
    pub elapsed_s: f64,
    #[serde(default)]
    pub method: Option<MethodKind>,
    /// The lowest val loss of an evaluation so far, and its step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_step: Option<u64>,
    /// Evaluations in a row that did not improve on the best by `train.min_delta` (the patience used up).
    #[serde(default)]
    pub evals_without_improvement: u64,
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

pub const BEST: &str = "best";

/// Which checkpoint of a run to use: a step's, or the best one (`--step best`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Step(u64),
    Best,
}

impl Pick {
    pub fn dir_name(self) -> String {
        match self {
            Pick::Step(step) => dir_name(step),
            Pick::Best => BEST.into(),
        }
    }
}

impl std::str::FromStr for Pick {
    type Err = String;

    fn from_str(s: &str) -> Result<Pick, String> {
        match s {
            BEST => Ok(Pick::Best),
            _ => s.parse().map(Pick::Step).map_err(|_| format!("\"{s}\" is neither a step number nor `best`")),
        }
    }
}

fn io(path: &Path) -> impl Fn(tch::TchError) -> Problems + '_ {
    move |e| Problems::io(format!("{}: cannot write the checkpoint: {e}", path.display()))
}

/// Writes a checkpoint named `name` under `run_dir/checkpoints/`; without `optimizer` moments (`best`,
/// which is never resumed from) it has no optimizer file.
pub fn save(
    run_dir: &Path,
    name: &str,
    trained: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    state: &TrainerState,
) -> Result<PathBuf, Problems> {
    let root = run_dir.join("checkpoints");
    let fail = |e: std::io::Error| Problems::io(format!("{}: cannot write the checkpoint: {e}", root.display()));
    std::fs::create_dir_all(&root).map_err(fail)?;
    super::clean_stale(&root);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(fail)?;
    let written = (|| {
        let detached: Vec<(String, Tensor)> = trained.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
        Tensor::write_safetensors(&detached, tmp.join(TRAINED)).map_err(io(&tmp))?;
        if !optimizer.is_empty() {
            Tensor::write_safetensors(optimizer, tmp.join(OPTIMIZER)).map_err(io(&tmp))?;
        }
        std::fs::write(tmp.join(STATE), serde_json::to_string_pretty(state).expect("state serializes"))
            .map_err(fail)?;
        let target = root.join(name);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(fail)?;
        }
        std::fs::rename(&tmp, &target).map_err(fail)?;
        Ok(target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

pub fn read_state(dir: &Path) -> Result<TrainerState, Problems> {
    let path = dir.join(STATE);
    let text =
        std::fs::read_to_string(&path).map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Problems::one(format!("{}: invalid trainer state: {e}", path.display())))
}

pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, Problems> {
    Tensor::read_safetensors(path).map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))
}

/// The complete checkpoints a run can continue from (those with a state file), oldest step first;
/// `final` last. `best` is not among them: it is older than the steps after it.
pub fn list(run_dir: &Path) -> Vec<PathBuf> {
    let mut found = list_all(run_dir);
    found.retain(|p| !p.ends_with(BEST));
    found
}

/// Every complete checkpoint of a run, `best` too.
pub fn list_all(run_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(STATE).is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    found.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        (name == "final", name)
    });
    found
}
