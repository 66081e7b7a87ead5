//! `ftexp rerun`.
use std::path::PathBuf;

use ftexp::dist::Rank;

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
    let devices = ftexp::train::saved_config(&a.run_dir, &[])?.train.devices;
    if devices > 1 && Rank::from_env()?.is_none_or(|r| r.world <= 1) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return Ok(ftexp::train::launch::spawn_local(devices as usize, &args)?);
    }
    ftexp::train::rerun(&a.run_dir, a.seed, a.base.allow_changed_base)?;
    Ok(())
}
