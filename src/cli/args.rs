//! Argument groups several commands share.
use std::path::PathBuf;

use ftexp::config::{self, DeviceSetting, Precision, Resolved};
use ftexp::device::Placement;
use ftexp::error::Problems;

/// A config file and its `--set` overrides.
#[derive(clap::Args)]
pub struct ConfigArgs {
    /// The experiment's TOML file; the files in its `extends` list are read first.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Override a key, e.g. --set train.learning_rate=3e-4 (repeatable). The value is a TOML literal
    /// (a bare word is read as a string); `ftexp keys` lists every key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl ConfigArgs {
    /// The config resolved with the `FTEXP_*` environment and the `--set` overrides.
    pub fn resolve(&self) -> Result<Resolved, Problems> {
        config::resolve(&self.config, &self.sets)
    }
}

/// Where to run a model that is used, not trained.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// auto (a GPU when there is one), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<DeviceSetting>())]
    pub device: DeviceSetting,
    /// auto (32-true on CPU, bf16-true on CUDA), 32-true, bf16-true, bf16-mixed or 16-true.
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<Precision>())]
    pub precision: Precision,
}

impl DeviceArgs {
    /// The device and precision, checked to be on this machine.
    pub fn placement(&self) -> Result<Placement, Problems> {
        let placement = Placement::resolve(self.device, self.precision);
        placement
            .check_available()
            .map_err(|why| Problems::one(format!("--device {}: {why}; use --device cpu", self.device)))?;
        Ok(placement)
    }
}

/// `--json`: one JSON object on stdout instead of text.
#[derive(clap::Args)]
pub struct JsonArg {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `--allow-changed-base`, for commands that use a run on the base it was trained on.
#[derive(clap::Args)]
pub struct BaseArg {
    /// Use the run's base model even when its files changed since the run was trained on it (the run's
    /// trained weights may then compute something else than they did).
    #[arg(long)]
    pub allow_changed_base: bool,
}
