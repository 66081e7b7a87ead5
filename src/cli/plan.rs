//! `ftexp plan`.
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
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let resolved = a.config.resolve()?;
    let plan = plan::make(&resolved)?;
    if a.json.json {
        print_json(&plan::to_json(&resolved, &plan))
    } else {
        print!("{}", plan::render(&resolved, &plan));
        Ok(())
    }
}
