//! The `ftexp` command line.
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, schema};
use crate::error::Problems;
use crate::plan;

#[derive(Parser)]
#[command(name = "ftexp", about = "Fine-tune large language models from declarative TOML experiment files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print ftexp's and libtorch's versions and the CUDA devices found.
    Env,
    /// Resolve a config (extends, FTEXP_* env, --set) and print what a run would do; reads no weights.
    Plan {
        config: PathBuf,
        /// Override a key: --set train.learning_rate=3e-4 (repeatable; value is a TOML literal).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every config key with its type, default and meaning.
    Keys {
        /// As a Markdown table (README's config reference).
        #[arg(long)]
        markdown: bool,
    },
}

/// `0.1.0 (libtorch 2.11.0, CUDA available: no, CUDA devices: 0)`.
pub fn version_line() -> String {
    let cuda = tch::Cuda::is_available();
    format!(
        "{} (libtorch {}, CUDA available: {}, CUDA devices: {})",
        env!("CARGO_PKG_VERSION"),
        env!("FTEXP_LIBTORCH_VERSION"),
        if cuda { "yes" } else { "no" },
        tch::Cuda::device_count()
    )
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let wants_version = std::env::args().skip(1).any(|a| a == "--version" || a == "-V");
    let version: &'static str =
        if wants_version { Box::leak(version_line().into_boxed_str()) } else { env!("CARGO_PKG_VERSION") };
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<Problems>() {
            Some(problems) => {
                for line in &problems.0 {
                    eprintln!("error: {line}");
                }
                2
            }
            None => {
                eprintln!("error: {e:#}");
                1
            }
        },
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Env => {
            println!("ftexp {}", version_line());
            println!("ftexp:     {}", env!("CARGO_PKG_VERSION"));
            println!("libtorch:  {}", env!("FTEXP_LIBTORCH_VERSION"));
            println!("cuda:      {}", if tch::Cuda::is_available() { "available" } else { "not available" });
            println!("devices:   {}", tch::Cuda::device_count());
            println!("threads:   {}", tch::get_num_threads());
        }
        Command::Plan { config, sets, json } => {
            let resolved = config::resolve(&config, &sets)?;
            let plan = plan::make(&resolved);
            if json {
                println!("{}", serde_json::to_string_pretty(&plan::to_json(&resolved, &plan))?);
            } else {
                print!("{}", plan::render(&resolved, &plan));
            }
        }
        Command::Keys { markdown } => print!("{}", keys_reference(markdown)),
    }
    Ok(())
}

/// The config reference, from the schema itself.
pub fn keys_reference(markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    }
    for k in schema::KEYS {
        let default = k.default.map(|d| format!("`{d}`")).unwrap_or_else(|| "unset".into());
        if markdown {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.key,
                k.kind.describe(),
                default,
                k.doc.replace('|', "\\|")
            ));
        } else {
            out.push_str(&format!("{} ({}; default {}): {}\n", k.key, k.kind.describe(), default, k.doc));
        }
    }
    out
}
