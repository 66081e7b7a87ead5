//! `ftexp resume`.
use std::path::{Path, PathBuf};

use ftexp::device::Placement;
use ftexp::error::Problems;
use ftexp::experiment;
use ftexp::plan;
use ftexp::train::{self, launch};

use super::args::BaseArg;

/// Continue an interrupted or failed run from its newest complete checkpoint, with the config, base
/// and prepared data it started with.
#[derive(clap::Args)]
pub struct Args {
    /// The run directory, experiments/<name>/v<N>, or experiments/<name> for its newest version.
    run_dir: PathBuf,
    /// Continue on another number of devices (`--set train.devices=N`) or wait longer for them
    /// (`--set train.sync_timeout_s=S`, `train.allow_oversubscribe`, `train.run_over_plan`); nothing else
    /// of a run can change
    /// (a `--set` of the value the run already has is accepted).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    base: BaseArg,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let run_dir = run_dir(a.run_dir)?;
    let overrides = resume_overrides(&run_dir, &a.sets)?;
    let c = train::saved_config(&run_dir, &overrides)?.config;
    let devices = c.train.devices;
    if let Some(why) = plan::oversubscribed(&c, &Placement::resolve(c.model.device, c.model.precision), devices) {
        return Err(Problems::one(why).into());
    }
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

/// The `--set`s a resumed run accepts: how many devices continue it, how long they wait for each
/// other, and whether CPU processes may outnumber the cores; everything else stays as the run was
/// started (a `--set` that repeats the run's own value changes nothing, so it is accepted and dropped).
fn resume_overrides(run_dir: &Path, sets: &[String]) -> Result<Vec<String>, Problems> {
    const ALLOWED: [&str; 4] =
        ["train.devices", "train.sync_timeout_s", "train.allow_oversubscribe", "train.run_over_plan"];
    let saved = train::saved_config(run_dir, &[])?.config;
    let mut kept = Vec::new();
    for set in sets {
        let key = set.split('=').next().unwrap_or_default().trim();
        if ALLOWED.contains(&key) {
            kept.push(set.clone());
        } else if train::saved_config(run_dir, std::slice::from_ref(set))?.config != saved {
            return Err(Problems::one(format!(
                "--set {set}: a resumed run keeps the config it started with; only {} can change (start a new run to change {key})",
                ALLOWED.join(", ")
            )));
        }
    }
    Ok(kept)
}
