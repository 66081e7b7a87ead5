//! `ftexp sweep`.
use std::path::PathBuf;

use ftexp::sweep;

/// Expand a grid of values into one run per point (and seed): `--print-points` lists the `ftexp run`
/// arguments of each point, `--makefile` writes a Makefile so `make -j N` runs them in parallel.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["print_points", "makefile"])))]
pub struct Args {
    /// The experiment's TOML file each point runs with its grid values set.
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// Space-separated KEY=V1,V2,… entries, e.g. 'train.learning_rate=3e-3,9e-3 method.lora_r=8,16'.
    #[arg(long, default_value = "")]
    grid: String,
    /// Seeds to run every point with, e.g. '1 2 3'.
    #[arg(long, default_value = "")]
    seeds: String,
    /// Print each point's `ftexp run` arguments, one line per point.
    #[arg(long)]
    print_points: bool,
    /// Print a Makefile with one target per point.
    #[arg(long)]
    makefile: bool,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let config = &a.config;
    let points = sweep::points(config, &a.grid, &a.seeds)?;
    if a.makefile {
        print!("{}", sweep::makefile(&std::env::current_exe()?, config, &points));
    } else {
        for p in &points {
            println!("{}", sweep::run_args(p));
        }
    }
    Ok(())
}
