//! `ftexp resume`.
use std::path::PathBuf;

use ftexp::error::Problems;
use ftexp::experiment;
use ftexp::train::{self, launch};

use super::args::BaseArg;

/// Continue an interrupted or failed run from its newest complete checkpoint, with the config, base
/// and prepared data it started with.
#[derive(clap::Args)]
pub struct Args {
    /// The run directory, experiments/<name>/v<N>, or experiments/<name> for its newest version.
    run_dir: PathBuf,
    /// Continue on another number of devices (`--set train.devices=N`) or wait longer for them
    /// (`--set train.sync_timeout_s=S`); nothing else of a run can change.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    base: BaseArg,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let overrides = resume_overrides(&a.sets)?;
    let run_dir = run_dir(a.run_dir)?;
    let devices = train::saved_config(&run_dir, &overrides)?.config.train.devices;
    if launch::starts_processes(devices)? {
        return Ok(launch::start_processes(devices)?);
    }
    train::resume(&run_dir, &overrides, a.base.allow_changed_base)?;
    Ok(())
}

/// `dir` itself when it is a run directory, else the newest version in it.
fn run_dir(dir: PathBuf) -> Result<PathBuf, Problems> {
    if dir.join("config.toml").is_file() {
        return Ok(dir);
    }
    let (Some(root), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else {
        return Err(Problems::one(format!("{}: not a run directory (no config.toml)", dir.display())));
    };
    experiment::newest(root, name).map_err(|_| {
        Problems::one(format!("{}: not a run directory (no config.toml) nor holds any run", dir.display()))
    })
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
