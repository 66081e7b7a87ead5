//! `ftexp export`: a run's fine-tuned model leaves ftexp as a hub checkpoint (the method merged into
//! the base weights), loadable by transformers, vLLM and `ftexp --checkpoint`.
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Kind;

use crate::config::MethodKind;
use crate::error::Problems;
use crate::eval::{load_run, LoadOptions, LoadedRun};
use crate::methods::export::{merge, write_hub, write_peft, HubExport};
use crate::model::weights::stored_kind;

/// The layout an export is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A hub checkpoint, as transformers saves one: the method merged into the weights.
    Hf,
    /// A PEFT LoRA adapter beside the base (LoRA runs).
    Peft,
}

pub struct ExportRequest {
    pub format: Format,
    /// The checkpoint of this step instead of the final one.
    pub step: Option<u64>,
    /// The number format to write; `None`: the base checkpoint's own.
    pub dtype: Option<Kind>,
    pub max_shard_bytes: u64,
    pub allow_changed_base: bool,
}

#[derive(Debug, Serialize)]
pub struct Exported {
    pub out: PathBuf,
    pub dtype: String,
    pub tensors: usize,
    pub parameters: i64,
}

/// Exports the run in `dir` (its final checkpoint, or `req.step`) into the new directory `out`.
pub fn export_run(dir: &Path, out: &Path, req: &ExportRequest) -> Result<Exported, Problems> {
    let load = LoadOptions { step: req.step, allow_changed_base: req.allow_changed_base, ..LoadOptions::default() };
    let mut run = load_run(dir, load)?;
    if req.format == Format::Peft {
        return export_peft(dir, out, &mut run);
    }
    merge(&mut run.model, run.config.method.kind).map_err(|e| e.prefixed(&dir.display().to_string()))?;
    let dtype = req.dtype.or_else(|| stored_kind(&run.base_dir)).unwrap_or(run.model.kind());
    let export = HubExport {
        config_json: &run.config_json,
        tokenizer_dir: &run.tokenizer_dir,
        dtype,
        max_shard_bytes: req.max_shard_bytes,
    };
    write_hub(&mut run.model, &export, out)?;
    let parameters = run.model.spec.num_params();
    Ok(Exported { out: out.to_path_buf(), dtype: format!("{dtype:?}"), tensors: run.model.layout.len(), parameters })
}

fn export_peft(dir: &Path, out: &Path, run: &mut LoadedRun) -> Result<Exported, Problems> {
    let m = &run.config.method;
    if m.kind != MethodKind::Lora {
        return Err(Problems::one(format!(
            "{}: method.kind is \"{}\"; --format peft writes LoRA adapters: export this run with --format hf",
            dir.display(),
            m.kind
        )));
    }
    // The hub repo id when the base came from the hub, else the directory it was loaded from.
    let checkpoint = &run.config.model.checkpoint;
    let base_name = match crate::source::BaseModel::parse(&run.config.model) {
        crate::source::BaseModel::Hub { .. } => checkpoint.clone(),
        _ => run.base_dir.display().to_string(),
    };
    write_peft(&mut run.model, m, &base_name, out)?;
    Ok(Exported {
        out: out.to_path_buf(),
        dtype: "Float".into(),
        tensors: run.model.layout.iter().filter(|t| t.is_method()).count(),
        parameters: crate::methods::count(&run.model.spec, m).trainable,
    })
}
