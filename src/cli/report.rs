//! `ftexp report`.
use std::path::PathBuf;

use ftexp::report::{self, Format};

use super::args::JsonArg;

/// Compare runs: one row per run with the values that differ between them, losses, exact match and
/// speed, sorted by val loss; same-point runs with different seeds summarised as mean ± std. Writes a
/// plot of the val-loss curves overlaid.
#[derive(clap::Args)]
pub struct Args {
    /// Experiment directories (experiments/<name>) or run directories (experiments/<name>/v<N>).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// text or csv (`--json` for one JSON object).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    json: JsonArg,
    /// Where to write the plot.
    #[arg(long, default_value = "report.png")]
    png: PathBuf,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let format = if a.json.json { Format::Json } else { a.format };
    print!("{}", report::report(&a.paths, format, Some(&a.png))?);
    Ok(())
}
