//! `ftexp run`.
use std::path::PathBuf;

use ftexp::experiment::{self, EXPERIMENTS_DIR};
use ftexp::train::{self, Start};

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
    match a.resume {
        None => {
            let start = Start::New { experiments_root: root, tag: a.tag };
            train::run(&a.config.resolve()?.config, start, false)?;
        }
        Some(dir) if dir.is_empty() => {
            let name = a.config.resolve()?.config.name;
            let run_dir = experiment::newest(&root, &name).map_err(|e| e.prefixed("--resume"))?;
            train::resume(&run_dir, a.base.allow_changed_base)?;
        }
        Some(dir) => {
            train::resume(&PathBuf::from(dir), a.base.allow_changed_base)?;
        }
    }
    Ok(())
}
