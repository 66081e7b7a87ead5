//! `ftexp plan`.
use ftexp::error::Problems;
use ftexp::plan;

use super::args::{print_json, ConfigArgs, JsonArg};

/// Resolve a config (extends, FTEXP_* env, --set) and print what a run would do: every value with where
/// it was set, the data split, step counts and the model's parameters. Reads no weights, downloads and
/// tokenizes nothing.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    json: JsonArg,
    /// After printing the plan, exit with an error (code 2) when the run would not fit the device's
    /// memory or would be refused on this machine.
    #[arg(long)]
    check: bool,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let resolved = a.config.resolve()?;
    let plan = plan::make(&resolved)?;
    if a.json.json {
        print_json(&plan::to_json(&resolved, &plan))?;
    } else {
        print!("{}", plan::render(&resolved, &plan));
    }
    if a.check {
        if plan.fits == Some(false) {
            return Err(Problems::one(
                "plan --check: the run does not fit the device's memory (see `fits:` in the plan above)",
            )
            .into());
        }
        plan.refuse()?;
    }
    Ok(())
}
