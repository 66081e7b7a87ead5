//! A run's model as a hub checkpoint that transformers, vLLM and ftexp itself load: the method's tensors
//! folded into the weights they change (LoRA: `W + (alpha / r)·B·A`), written in the hub layout —
//! safetensors (sharded above a size, with `model.safetensors.index.json`), `config.json`,
//! `generation_config.json` and the tokenizer files.
use std::path::Path;

use serde_json::Value;
use tch::{Kind, Tensor};

use crate::config::MethodKind;
use crate::error::Problems;
use crate::model::layout::{At, Module, Param};
use crate::model::Gpt;

/// How to write a hub checkpoint.
pub struct HubExport<'a> {
    /// The base's `config.json`; written again with the dtype and tie flag of the export.
    pub config_json: &'a Value,
    pub tokenizer_dir: &'a Path,
    pub dtype: Kind,
    /// Safetensors files hold at most this many bytes (one tensor larger than that gets a file alone).
    pub max_shard_bytes: u64,
}

/// The shard size the hub's own tools default to.
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// The files copied from the tokenizer's directory, when it has them.
const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"];

/// Folds the tensors of `method` into the model's weights and removes them, so the model computes the
/// same with base tensors alone. Adapter prompts have no place in a hub checkpoint: refused.
pub fn merge(model: &mut Gpt, method: MethodKind) -> Result<(), Problems> {
    match method {
        MethodKind::Full => Ok(()),
        MethodKind::Lora => {
            tch::no_grad(|| merge_lora(model));
            model.strip_method();
            Ok(())
        }
        MethodKind::Adapter | MethodKind::AdapterV2 => Err(Problems::one(format!(
            "method.kind = \"{method}\": its adapter prompts (attended through trained gates) cannot be written as a hub checkpoint, which has no place for them; export runs of method.kind = \"lora\" or \"full\""
        ))),
    }
}

/// `W += scale · B·A` (in fp32) for every linear layer with LoRA; a tied head gets a weight of its own.
fn merge_lora(model: &mut Gpt) {
    let scale = model.lora.scale;
    let targets: Vec<Module> =
        model.layout.iter().filter(|t| t.at.param == Param::LoraA).map(|t| t.at.module).collect();
    for module in targets {
        let a = model.slot(At { module, param: Param::LoraA }).to_kind(Kind::Float); // (r, in)
        let b = model.slot(At { module, param: Param::LoraB }).to_kind(Kind::Float); // (out, r)
        if module == Module::Head && model.spec.tie_embeddings {
            model.spec.tie_embeddings = false;
            model.head.weight = model.embed.copy();
        }
        let w = model.slot(At { module, param: Param::Weight });
        *w = (w.to_kind(Kind::Float) + b.matmul(&a) * scale).to_kind(w.kind()); // (out, in)
    }
}

/// Writes `model`'s checkpoint tensors as a hub checkpoint into `out`, which must not exist yet; the
/// directory appears complete or not at all.
pub fn write_hub(model: &mut Gpt, e: &HubExport, out: &Path) -> Result<(), Problems> {
    if out.exists() {
        return Err(Problems::one(format!("{}: already exists; export into a new directory", out.display())));
    }
    let fail = |e: String| Problems::one(format!("{}: cannot export the model: {e}", out.display()));
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name().map_or("model".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail(e.to_string()))?;
    let written = write_files(model, e, &tmp).and_then(|()| std::fs::rename(&tmp, out).map_err(|e| e.to_string()));
    if let Err(msg) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(fail(msg));
    }
    Ok(())
}

fn write_files(model: &mut Gpt, e: &HubExport, dir: &Path) -> Result<(), String> {
    let weights: Vec<(String, Tensor)> = tch::no_grad(|| {
        model.hub_weights().into_iter().map(|(n, t)| (n, t.detach().to_kind(e.dtype).contiguous())).collect()
    });
    write_shards(&weights, e.max_shard_bytes, dir)?;
    let mut config = e.config_json.clone();
    if let Some(obj) = config.as_object_mut() {
        let dtype = match e.dtype {
            Kind::BFloat16 => "bfloat16",
            Kind::Half => "float16",
            _ => "float32",
        };
        obj.insert("torch_dtype".into(), dtype.into());
        obj.insert("dtype".into(), dtype.into());
        obj.insert("tie_word_embeddings".into(), model.spec.tie_embeddings.into());
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("config.json"), text).map_err(|e| e.to_string())?;
    for name in TOKENIZER_FILES {
        let src = e.tokenizer_dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, dir.join(name)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// One `model.safetensors`, or shards of at most `max_bytes` each with their index.
fn write_shards(weights: &[(String, Tensor)], max_bytes: u64, dir: &Path) -> Result<(), String> {
    let bytes = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut size = 0;
    for (name, t) in weights {
        if size > 0 && size + bytes(t) > max_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes(t);
        shards.last_mut().expect("one shard at least").push((name.clone(), t.shallow_clone()));
    }
    if shards.len() == 1 {
        return Tensor::write_safetensors(&shards[0], dir.join("model.safetensors")).map_err(|e| e.to_string());
    }
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        Tensor::write_safetensors(shard, dir.join(&file)).map_err(|e| e.to_string())?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    let total: u64 = weights.iter().map(|(_, t)| bytes(t)).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).map_err(|e| e.to_string())
}
