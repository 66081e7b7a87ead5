//! `ftexp export`: a run's fine-tuned model leaves ftexp as a hub checkpoint (the method merged into
//! the base weights) or a PEFT adapter, loadable by transformers, peft, vLLM and `ftexp --checkpoint`.
pub mod gguf;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{ExportDtype, ExportFormat};
use crate::error::Problems;
use crate::eval::{load_run, LoadOptions};
use crate::methods::export::{export, Source};
use crate::methods::staging;

pub struct ExportRequest {
    pub format: ExportFormat,
    /// The checkpoint of this step (or the best one) instead of the final one.
    pub step: Option<crate::experiment::checkpoint::Pick>,
    /// The number format to write; `None`: the base checkpoint's own.
    pub dtype: Option<ExportDtype>,
    pub max_shard_bytes: u64,
    pub allow_changed_base: bool,
}

#[derive(Debug, Serialize)]
pub struct Exported {
    pub out: PathBuf,
    pub format: ExportFormat,
    pub dtype: String,
}

/// Exports the run in `dir` (its final checkpoint, or `req.step`) into the new directory `out`.
/// `out` is checked before anything is loaded: it must be new, creatable through its links, and
/// outside every run directory.
pub fn export_run(dir: &Path, out: &Path, req: &ExportRequest) -> Result<Exported, Problems> {
    check_out(out, "into a directory")?;
    let load = LoadOptions { step: req.step, allow_changed_base: req.allow_changed_base, ..LoadOptions::default() };
    let mut run = load_run(dir, load)?;
    let src = Source {
        config: &run.config,
        base_dir: &run.base_dir,
        tokenizer_dir: &run.tokenizer_dir,
        config_json: &run.config_json,
    };
    let kind = export(&mut run.model, &src, req.format, req.dtype, req.max_shard_bytes, out)
        .map_err(|e| e.prefixed(&dir.display().to_string()))?;
    Ok(Exported { out: out.to_path_buf(), format: req.format, dtype: format!("{kind:?}") })
}

/// Refuses an `out` that [`staging::check_out`] refuses, or one inside a run directory (any run's, not
/// only this one's): ftexp reads, replaces and removes what is there as parts of the run. `instead`
/// says where to export ("into a directory", "to a file").
pub(crate) fn check_out(out: &Path, instead: &str) -> Result<(), Problems> {
    staging::check_out(out).map_err(|e| e.prefixed("--out"))?;
    if let Some(run) = crate::experiment::run_dir_around(out) {
        return Err(Problems::one(format!(
            "--out {}: in the place of a run directory ({}), whose files ftexp reads, replaces and removes as the run's own; export {instead} outside every run directory",
            out.display(),
            run.display()
        )));
    }
    Ok(())
}
