//! `ftexp export RUN --format gguf`: a run's model, merged exactly as the hub export merges it, as
//! one GGUF file (version 3) that llama.cpp, Ollama and LM Studio load: llama.cpp's architecture and
//! tensor names for the family (`names`), its hyperparameters, the tokenizer and the chat template
//! the run was trained with (`vocab`), matrices in f16, bf16 or q8_0 (`quant`), norms and biases in
//! f32, in the container `writer` writes. The file is written under a temporary directory beside
//! `out` and renamed into place: it appears whole or not at all.
mod names;
pub mod quant;
mod vocab;
pub mod writer;

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Kind;

use crate::config::{Config, DataFormat};
use crate::data::chat::ChatTemplate;
use crate::data::{prompt, Record};
use crate::error::Problems;
use crate::eval::{load_run, LoadOptions, LoadedRun};
use crate::experiment::checkpoint::Pick;
use crate::methods::export::merge;
use crate::methods::staging;
use quant::GgmlType;
use writer::{TensorData, Value};

pub use names::SUPPORTED as SUPPORTED_FAMILIES;
pub use quant::QUANTS;

pub struct GgufRequest {
    /// The checkpoint of this step (or the best one) instead of the final one.
    pub step: Option<Pick>,
    /// `f16`, `bf16` or `q8_0`: the format of the matrices.
    pub quant: String,
    pub allow_changed_base: bool,
}

#[derive(Debug, Serialize)]
pub struct GgufExported {
    pub out: PathBuf,
    pub format: &'static str,
    pub quant: String,
    pub architecture: &'static str,
    pub tensors: usize,
}

/// Exports the run in `dir` as the new GGUF file `out`. `out` and the quant are checked before
/// anything is loaded; the family, its hyperparameters and the tokenizer before anything is merged.
pub fn export_gguf(dir: &Path, out: &Path, req: &GgufRequest) -> Result<GgufExported, Problems> {
    let ty = GgmlType::parse(&req.quant).map_err(Problems::one)?;
    check_out(out)?;
    let load = LoadOptions { step: req.step, allow_changed_base: req.allow_changed_base, ..LoadOptions::default() };
    let mut run = load_run(dir, load)?;
    let prefix = dir.display().to_string();
    let arch = names::architecture(&run.model.spec).map_err(|e| Problems::one(e).prefixed(&prefix))?;
    let metadata = metadata(&run, arch, ty, dir).map_err(|e| Problems::one(e).prefixed(&prefix))?;
    let mut config_json = run.config_json.clone();
    merge(&mut run.model, run.config.method.kind, &mut config_json).map_err(|e| e.prefixed(&prefix))?;
    let tensors = tch::no_grad(|| names::tensors(&mut run.model, arch));
    let check_kind = if ty == GgmlType::F16 { Kind::Half } else { Kind::Float };
    staging::check_values(&tensors, check_kind)?;
    let encoded: Vec<TensorData> = tch::no_grad(|| tensors.iter().map(|(n, t)| encode(n, t, ty)).collect());
    write_file(out, &metadata, &encoded)?;
    Ok(GgufExported {
        out: out.to_path_buf(),
        format: "gguf",
        quant: req.quant.clone(),
        architecture: arch,
        tensors: encoded.len(),
    })
}

/// Refuses an `out` that exists (a file is never overwritten), whose directory cannot hold it, or that
/// lies inside a run directory.
fn check_out(out: &Path) -> Result<(), Problems> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Problems::one(format!(
            "--out {}: already exists; ftexp never overwrites a file: name a new .gguf file",
            out.display()
        )));
    }
    super::check_out(out, "to a file")
}

/// `general.*`, the architecture's hyperparameters and the tokenizer.
fn metadata(run: &LoadedRun, arch: &str, ty: GgmlType, dir: &Path) -> Result<Vec<(String, Value)>, String> {
    let name = dir
        .iter()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    let mut kv = vec![
        ("general.architecture".to_string(), Value::Str(arch.into())),
        ("general.name".to_string(), Value::Str(name)),
        ("general.file_type".to_string(), Value::U32(ty.file_type())),
        ("general.quantization_version".to_string(), Value::U32(2)),
    ];
    kv.extend(names::hyperparameters(&run.model.spec, arch)?);
    let src = vocab::VocabSource {
        dir: &run.tokenizer_dir,
        tokenizer: &run.tokenizer,
        rows: run.model.spec.vocab_size as usize,
        chat_template: chat_template(&run.config, &run.tokenizer_dir, &run.tokenizer)?,
    };
    kv.extend(vocab::metadata(&src)?);
    Ok(kv)
}

/// The chat template the run was trained with and what ends a turn: a chat run's template; for a run
/// on prompt-style records (alpaca), that prompt as a Jinja template of one user turn, the answer
/// ended by EOS as in training; none for a plain-text run.
fn chat_template(
    config: &Config,
    tokenizer_dir: &Path,
    tokenizer: &crate::tokenizer::Tokenizer,
) -> Result<Option<(String, String)>, String> {
    let data = &config.data;
    match data.format {
        DataFormat::Chat => {
            let t = ChatTemplate::load(tokenizer_dir, data.chat_template.as_deref()).map_err(|e| e.to_string())?;
            Ok(Some((t.source.clone(), t.end_of_turn.clone())))
        }
        DataFormat::Text => Ok(None),
        DataFormat::Alpaca => {
            const MARK: &str = "\u{1}instruction\u{1}";
            let record = Record { instruction: MARK.into(), input: String::new(), output: String::new() };
            let text = prompt::render(&data.prompt_style, &record);
            let Some((before, after)) = text.split_once(MARK) else { return Ok(None) };
            let lit = |s: &str| serde_json::to_string(s).expect("a string serialises");
            let template = format!(
                "{{% for message in messages %}}{{% if message['role'] == 'user' %}}{{{{ {} }}}}{{{{ message['content'] }}}}{{{{ {} }}}}{{% elif message['role'] == 'assistant' %}}{{{{ message['content'] }}}}{{{{ eos_token }}}}{{% endif %}}{{% endfor %}}",
                lit(before),
                lit(after)
            );
            let eos = tokenizer.eos_ids.first().map(|&id| tokenizer.inner.id_to_token(id).unwrap_or_default());
            Ok(Some((template, eos.unwrap_or_default())))
        }
    }
}

/// A tensor in the file's format: matrices as `ty` (q8_0 only where a row is whole blocks of 32, f16
/// otherwise, as llama.cpp's converter falls back), vectors (norms, biases) in f32.
fn encode(name: &str, t: &tch::Tensor, ty: GgmlType) -> TensorData {
    let dims: Vec<u64> = t.size().iter().rev().map(|&d| d as u64).collect();
    let ty = match (t.dim(), ty) {
        (1, _) => GgmlType::F32,
        (_, GgmlType::Q8_0) if !(dims[0] as usize).is_multiple_of(quant::Q8_0_BLOCK) => GgmlType::F16,
        (_, ty) => ty,
    };
    TensorData { name: name.to_string(), dims, ggml_type: ty.code(), bytes: quant::encode(t, ty) }
}

/// Writes the file into a temporary directory beside `out`, then renames it to `out`; on any failure
/// nothing is left behind.
fn write_file(out: &Path, metadata: &[(String, Value)], tensors: &[TensorData]) -> Result<(), Problems> {
    let tmp = staging::stage(out)?;
    let file = tmp.join("model.gguf");
    let written = std::fs::File::create(&file)
        .and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            writer::write(&mut w, metadata, tensors)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        })
        .and_then(|()| place(&file, out));
    let _ = std::fs::remove_dir_all(&tmp);
    written.map_err(|e| Problems::io(format!("{}: cannot write the GGUF file: {e}", out.display())))
}

/// Puts the finished `file` at `out` without replacing a file that appeared there meanwhile (a hard
/// link fails on an existing name), renaming where the file system has no hard links.
fn place(file: &Path, out: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(file, out) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => std::fs::rename(file, out),
        other => other,
    }
}
