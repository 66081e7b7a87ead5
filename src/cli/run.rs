//! `ftexp run`.
use std::path::PathBuf;

use ftexp::experiment::EXPERIMENTS_DIR;
use ftexp::train::{self, launch, Start};

use super::args::ConfigArgs;

/// Fine-tune: prepare the data, load the base model, train, and write experiments/<name>/v<N>/.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Override the config's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// A label recorded in run.json (sweeps tag each run with its grid point).
    #[arg(long)]
    tag: Option<String>,
}

pub fn exec(mut a: Args) -> anyhow::Result<()> {
    if let Some(seed) = a.seed {
        a.config.sets.push(format!("seed={seed}"));
    }
    let resolved = a.config.resolve()?;
    let start = Start::New { experiments_root: PathBuf::from(EXPERIMENTS_DIR), tag: a.tag };
    let plan = train::plan_for(&resolved, &start, false)?;
    plan.refuse()?;
    // A process of a group a launcher (this command, torchrun, …) started trains; otherwise a run on
    // several devices starts one process per device.
    if launch::starts_processes(plan.world_size)? {
        // Once here, so the processes find the data prepared and the base in place.
        train::prepare_shared(&plan)?;
        return Ok(launch::start_processes(plan.world_size)?);
    }
    train::run(&plan, start)?;
    Ok(())
}
