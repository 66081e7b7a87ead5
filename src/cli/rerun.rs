//! `ftexp rerun`.
use std::path::PathBuf;

/// Run a finished experiment again from its saved config.toml, into a new version: on the same machine
/// and thread count the same seed gives the same metrics.csv (but the timing columns).
#[derive(clap::Args)]
pub struct Args {
    /// The run directory, experiments/<name>/v<N>.
    run_dir: PathBuf,
    /// Use another seed (another split, data order and initialisation).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    ftexp::train::rerun(&a.run_dir, a.seed)?;
    Ok(())
}
