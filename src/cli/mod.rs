//! The commands, one file each: a `clap::Args` struct and an `exec` that calls the library and prints.
//! Exit codes: 0 done; otherwise the [`ErrorKind`]'s (2 a problem the user can fix, each printed as one
//! `error:` line; 3 out of memory; 4 a peer process lost; 5 file I/O; 1 libtorch's and anything else).
mod args;
mod bench;
mod download;
mod env;
mod eval;
mod export;
mod generate;
mod keys;
mod plan;
mod prepare;
mod report;
mod rerun;
mod resume;
mod run;
mod sweep;
mod tokenizer;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ftexp::error::{ErrorKind, Problems};

#[derive(Parser)]
#[command(name = "ftexp", about = "Fine-tune large language models from declarative TOML experiment files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Env(env::Args),
    Plan(plan::Args),
    Run(run::Args),
    Resume(resume::Args),
    Bench(bench::Args),
    Sweep(sweep::Args),
    Rerun(rerun::Args),
    Prepare(prepare::Args),
    Download(download::Args),
    Generate(generate::Args),
    Eval(eval::Args),
    Export(export::Args),
    Report(report::Args),
    Tokenizer(tokenizer::Args),
    Keys(keys::Args),
}

fn exec(command: Command) -> Result<()> {
    match command {
        Command::Env(a) => env::exec(a),
        Command::Plan(a) => plan::exec(a),
        Command::Run(a) => run::exec(a),
        Command::Resume(a) => resume::exec(a),
        Command::Bench(a) => bench::exec(a),
        Command::Sweep(a) => sweep::exec(a),
        Command::Rerun(a) => rerun::exec(a),
        Command::Prepare(a) => prepare::exec(a),
        Command::Download(a) => download::exec(a),
        Command::Generate(a) => generate::exec(a),
        Command::Eval(a) => eval::exec(a),
        Command::Export(a) => export::exec(a),
        Command::Report(a) => report::exec(a),
        Command::Tokenizer(a) => tokenizer::exec(a),
        Command::Keys(a) => keys::exec(a),
    }
}

pub fn main() -> ExitCode {
    let wants_version = std::env::args().skip(1).any(|a| a == "--version" || a == "-V");
    let version: &'static str =
        if wants_version { Box::leak(env::version_line().into_boxed_str()) } else { env!("CARGO_PKG_VERSION") };
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The last boundary for libtorch errors the commands do not name more closely.
    let result = ftexp::error::guard("ftexp", || exec(cli.command)).map_err(anyhow::Error::from).and_then(|r| r);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints `e` and gives the exit code of its kind: a [`Problems`] anywhere in the chain says its own, an
/// I/O error that reached here unclassified is [`ErrorKind::Io`], anything else is internal (1).
fn report(e: &anyhow::Error) -> ExitCode {
    if let Some(problems) = e.chain().find_map(|c| c.downcast_ref::<Problems>()) {
        for line in &problems.0 {
            eprintln!("error: {line}");
        }
        return ExitCode::from(problems.kind().exit_code());
    }
    eprintln!("error: {e:#}");
    match e.chain().any(|c| c.is::<std::io::Error>()) {
        true => ExitCode::from(ErrorKind::Io.exit_code()),
        false => ExitCode::from(ErrorKind::Libtorch.exit_code()),
    }
}
