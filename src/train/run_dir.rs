//! The run directory of a run: a new version, or a run continued from its newest complete checkpoint;
//! and what the run is made of, recorded in its run.json.
use std::path::Path;
use std::path::PathBuf;

use super::trainer::Trainer;
use super::Start;
use crate::data::Prepared;
use crate::error::Problems;
use crate::experiment::checkpoint;
use crate::experiment::{self, BaseRecord, DataRecord, Experiment, RunLock, RunStatus};
use crate::methods;
use crate::plan::RunPlan;

/// The run directory, locked for this process: a new version, or the resumed run with the trainer
/// restored from its newest complete checkpoint that reads back whole.
pub(super) fn open(
    c: &crate::config::Config,
    start: Start,
    trainer: &mut Trainer,
) -> Result<(Experiment, RunLock), Problems> {
    match start {
        Start::New { experiments_root, tag } => {
            let exp = experiment::allocate(&experiments_root, &c.name)?;
            let lock = exp.lock()?;
            exp.start(c, &trainer.built.placement.device_name())?;
            exp.update(|i| i.tag = tag)?;
            Ok((exp, lock))
        }
        Start::Rerun { experiments_root, of } => {
            let exp = experiment::allocate(&experiments_root, &c.name)?;
            let lock = exp.lock()?;
            exp.start(c, &trainer.built.placement.device_name())?;
            exp.update(|i| i.rerun_of = Some(of.display().to_string()))?;
            Ok((exp, lock))
        }
        Start::Resume { run_dir } => {
            let exp = Experiment::open(&run_dir)?;
            let lock = exp.lock()?;
            if exp.read_run_info()?.status == RunStatus::Completed {
                return Err(Problems::one(format!(
                    "{}: the run is completed; there is nothing to resume (`ftexp rerun {}` runs it again as a new version)",
                    run_dir.display(),
                    run_dir.display()
                )));
            }
            experiment::clean_stale(&run_dir);
            let ckpt = restore_newest(&run_dir, trainer)?;
            exp.update(|i| {
                i.status = RunStatus::Running;
                i.end_time = None;
                i.error = None;
                i.resumed_from = Some(ckpt.display().to_string());
            })?;
            println!("resuming {} from {} (step {})", exp.dir.display(), ckpt.display(), trainer.state.step);
            Ok((exp, lock))
        }
    }
}

/// Restores the newest checkpoint of `run_dir` that reads back whole, skipping (and naming) damaged ones.
fn restore_newest(run_dir: &Path, trainer: &mut Trainer) -> Result<PathBuf, Problems> {
    let mut damaged = Vec::new();
    for ckpt in checkpoint::list(run_dir).into_iter().rev() {
        match trainer.restore(&ckpt) {
            Ok(()) => {
                for why in &damaged {
                    eprintln!("warning: skipped a damaged checkpoint: {why}");
                }
                return Ok(ckpt);
            }
            Err(e) => damaged.push(e.to_string()),
        }
    }
    let tried = if damaged.is_empty() { String::new() } else { format!(" (damaged: {})", damaged.join("; ")) };
    Err(Problems::one(format!(
        "{}: has no complete checkpoint to resume from{tried}; start a new run",
        run_dir.display()
    )))
}

/// Records what the run is made of: precision, data, base model files and parameter counts.
pub(super) fn record_inputs(
    plan: &RunPlan,
    exp: &Experiment,
    trainer: &Trainer,
    data: &Prepared,
) -> Result<(), Problems> {
    let (c, built) = (&plan.config, &trainer.built);
    let counts = methods::count(&built.model.spec, &c.method);
    exp.update(|i| {
        i.precision = Some(built.placement.precision);
        i.data = Some(DataRecord {
            path: c.data.path.clone(),
            cache_key: data.key.clone(),
            split_sizes: data.stats.iter().map(|(k, s)| (k.clone(), s.samples)).collect(),
        });
        i.base = Some(BaseRecord {
            checkpoint: c.model.checkpoint.clone(),
            dir: built.base_dir.clone(),
            files: experiment::provenance::record(&built.base_dir),
        });
        i.parameters = Some(counts);
        i.plan = Some(serde_json::to_value(plan).expect("a plan serializes"));
    })
}
