//! `ftexp rerun`.
use std::path::PathBuf;

use super::args::BaseArg;

/// Run a finished experiment again from its saved config.toml, on the base it was trained on, into a new
/// version: on the same machine and thread count the same seed gives the same metrics.csv (but the
/// timing columns).
#[derive(clap::Args)]
pub struct Args {
    /// The run directory, experiments/<name>/v<N>.
    run_dir: PathBuf,
    /// Use another seed (another split, data order and initialisation).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    base: BaseArg,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    // A run on several devices is run again on as many, each process started here.
    let devices = ftexp::train::saved_config(&a.run_dir, &[])?.config.train.devices;
    if ftexp::train::launch::starts_processes(devices)? {
        return Ok(ftexp::train::launch::start_processes(devices)?);
    }
    ftexp::train::rerun(&a.run_dir, a.seed, a.base.allow_changed_base)?;
    Ok(())
}
