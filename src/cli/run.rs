//! `ftexp run`.
use std::path::PathBuf;

use ftexp::error::Problems;
use ftexp::experiment::{self, EXPERIMENTS_DIR};
use ftexp::train::{self, launch, Start};

use super::args::{BaseArg, ConfigArgs};

/// Fine-tune: prepare the data, load the base model, train, and write experiments/<name>/v<N>/.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Override the config's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Continue a run from its newest complete checkpoint: the given run directory, or the newest run
    /// of the config's name.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "RUN_DIR")]
    resume: Option<String>,
    /// A label recorded in run.json (sweeps tag each run with its grid point).
    #[arg(long)]
    tag: Option<String>,
    #[command(flatten)]
    base: BaseArg,
}

pub fn exec(mut a: Args) -> anyhow::Result<()> {
    if let Some(seed) = a.seed {
        a.config.sets.push(format!("seed={seed}"));
    }
    let root = PathBuf::from(EXPERIMENTS_DIR);
    // A process of a group a launcher (this command, torchrun, …) started trains; otherwise a run on
    // several devices starts one process per device.
    match a.resume {
        None => {
            let config = a.config.resolve()?.config;
            if launch::starts_processes(config.train.devices)? {
                // Once here, so the processes find the data prepared and the base in place.
                train::prepare_shared(&config)?;
                return Ok(launch::start_processes(config.train.devices)?);
            }
            let start = Start::New { experiments_root: root, tag: a.tag };
            train::run(&config, start, false)?;
        }
        Some(dir) => {
            let overrides = resume_overrides(&a.config.sets)?;
            let run_dir = if dir.is_empty() {
                let name = a.config.resolve()?.config.name;
                experiment::newest(&root, &name).map_err(|e| e.prefixed("--resume"))?
            } else {
                PathBuf::from(dir)
            };
            let devices = train::saved_config(&run_dir, &overrides)?.train.devices;
            if launch::starts_processes(devices)? {
                return Ok(launch::start_processes(devices)?);
            }
            train::resume(&run_dir, &overrides, a.base.allow_changed_base)?;
        }
    }
    Ok(())
}

/// The `--set`s a resumed run accepts: how many devices continue it, and how long they wait for each
/// other; everything else stays as the run was started.
fn resume_overrides(sets: &[String]) -> Result<Vec<String>, Problems> {
    const ALLOWED: [&str; 2] = ["train.devices", "train.sync_timeout_s"];
    for set in sets {
        let key = set.split('=').next().unwrap_or_default().trim();
        if !ALLOWED.contains(&key) {
            return Err(Problems::one(format!(
                "--set {set}: a resumed run keeps the config it started with; only {} can change (start a new run to change {key})",
                ALLOWED.join(" and ")
            )));
        }
    }
    Ok(sets.to_vec())
}
