//! A run's model as a hub checkpoint that transformers, vLLM and ftexp itself load: the method's tensors
//! folded into the weights they change (LoRA: `W + (alpha / r)·B·A`), written in the hub layout —
//! safetensors (sharded above a size, with `model.safetensors.index.json`), `config.json`,
//! `generation_config.json` and the tokenizer files.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tch::{Kind, Tensor};

use crate::config::{Config, ExportDtype, ExportFormat, MethodConfig, MethodKind};
use crate::error::Problems;
use crate::model::gpt::fuse;
use crate::model::layout::{At, Fusion, Module, Param, Proj};
use crate::model::spec::Family;
use crate::model::weights::stored_kind;
use crate::model::{Gpt, TensorSpec};
use crate::source::BaseModel;

use super::staging;

/// How to write a hub checkpoint.
pub struct HubExport<'a> {
    /// The base's `config.json`; written again with the dtype and tie flag of the export.
    pub config_json: &'a Value,
    pub tokenizer_dir: &'a Path,
    pub dtype: Kind,
    /// Safetensors files hold at most this many bytes (one tensor larger than that gets a file alone).
    pub max_shard_bytes: u64,
}

/// What an export reads besides the model: the run's config and where its base came from.
pub struct Source<'a> {
    pub config: &'a Config,
    pub base_dir: &'a Path,
    pub tokenizer_dir: &'a Path,
    /// The base's `config.json`.
    pub config_json: &'a Value,
}

/// Exports a run's `model` in `format` into the new directory `out` — `hf`: the method merged in, in
/// `dtype` or the base checkpoint's own; `peft`: a LoRA run's adapter — and returns the number format
/// written.
pub fn export(
    model: &mut Gpt,
    src: &Source,
    format: ExportFormat,
    dtype: Option<ExportDtype>,
    max_shard_bytes: u64,
    out: &Path,
) -> Result<Kind, Problems> {
    let method = &src.config.method;
    if format == ExportFormat::Peft {
        if method.kind != MethodKind::Lora {
            return Err(Problems::one(format!(
                "method.kind is \"{}\"; --format peft writes LoRA adapters: export this run with --format hf",
                method.kind
            )));
        }
        // The hub repo id when the base came from the hub, else the directory it was loaded from.
        let base_name = match BaseModel::parse(&src.config.model) {
            BaseModel::Hub { repo, .. } => repo,
            _ => src.base_dir.display().to_string(),
        };
        write_peft(model, method, &base_name, out)?;
        return Ok(Kind::Float);
    }
    let mut config_json = src.config_json.clone();
    merge(model, method.kind, &mut config_json)?;
    let kind = match dtype {
        Some(ExportDtype::Bf16) => Kind::BFloat16,
        Some(ExportDtype::Fp16) => Kind::Half,
        Some(ExportDtype::Fp32) => Kind::Float,
        None => stored_kind(src.base_dir).unwrap_or(model.kind()),
    };
    let hub = HubExport { config_json: &config_json, tokenizer_dir: src.tokenizer_dir, dtype: kind, max_shard_bytes };
    write_hub(model, &hub, out)?;
    Ok(kind)
}

/// The shard size the hub's own tools default to.
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// The files copied from the tokenizer's directory, when it has them.
const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"];

/// Folds the tensors of `method` into the model's weights and removes them, so the model computes the
/// same with base tensors alone. Adapter prompts have no place in a hub checkpoint: refused.
pub fn merge(model: &mut Gpt, method: MethodKind, config_json: &mut Value) -> Result<(), Problems> {
    if method.has_adapter_prompts() {
        check_gates_closed(model, method)?;
    }
    match method {
        MethodKind::Full | MethodKind::Adapter => {}
        MethodKind::Lora => tch::no_grad(|| merge_lora(model)),
        MethodKind::AdapterV2 => tch::no_grad(|| fold_adapter_v2(model, config_json))?,
    }
    model.strip_method();
    Ok(())
}

/// Adapter prompts act through their gates; a hub checkpoint has no place for them, so a model can be
/// exported only while every gate is exactly zero (the prompts then change nothing).
fn check_gates_closed(model: &mut Gpt, method: MethodKind) -> Result<(), Problems> {
    let gates: Vec<At> = model.layout.iter().filter(|t| t.at.param == Param::AdapterGate).map(|t| t.at).collect();
    for at in gates {
        let largest = tch::no_grad(|| model.slot(at).abs().max().double_value(&[]));
        if largest != 0.0 {
            let layer = match at.module {
                Module::Adapter(i) => i,
                _ => 0,
            };
            return Err(Problems::one(format!(
                "method.kind = \"{method}\": the adapter prompt of layer {layer} acts through a trained gate (largest |gate| {largest:.3e}), and a hub checkpoint has no place for adapter prompts; export runs of method.kind = \"lora\" or \"full\""
            )));
        }
    }
    Ok(())
}

/// Adapter v2 computes `s ⊙ (W·x + b + c)` on each linear layer: written as `W' = diag(s)·W` and
/// `b' = s ⊙ (b + c)`, with the family's bias flags set in `config.json` where a bias is needed and the
/// hub class can hold one; a bias it cannot hold is refused.
fn fold_adapter_v2(model: &mut Gpt, config_json: &mut Value) -> Result<(), Problems> {
    let spec = model.spec.clone();
    let modules: Vec<Module> =
        model.layout.iter().filter(|t| t.at.param == Param::AdapterScale).map(|t| t.at.module).collect();
    let mut biases = [spec.qkv_bias, spec.o_bias, spec.mlp_bias];
    for module in modules {
        let scale = model.slot(At { module, param: Param::AdapterScale }).to_kind(Kind::Float); // (out,)
        let shift = model.slot(At { module, param: Param::AdapterBias }).to_kind(Kind::Float); // (out,)
        let group = bias_group(module);
        let has_bias = group.is_some_and(|g| [spec.qkv_bias, spec.o_bias, spec.mlp_bias][g]);
        let old_bias = if has_bias {
            model.slot(At { module, param: Param::Bias }).to_kind(Kind::Float)
        } else {
            shift.zeros_like()
        };
        let bias = &scale * (old_bias + &shift);
        let needed = has_bias || bias.abs().max().double_value(&[]) != 0.0;
        if needed && !has_bias {
            let expressible = !matches!(
                (spec.family, group),
                (_, None)
                    | (Family::Qwen2 | Family::Phi3, _)
                    | (Family::Qwen3 | Family::Olmo2 | Family::Gemma2 | Family::Gemma3, Some(2))
            );
            if !expressible {
                return Err(Problems::one(format!(
                    "method.kind = \"adapter_v2\": its trained bias on {} would need a bias that a {:?} checkpoint cannot hold there; export runs of method.kind = \"lora\" or \"full\"",
                    TensorSpec { at: At { module, param: Param::Weight }, shape: vec![] }.name().trim_end_matches(".weight"),
                    spec.family
                )));
            }
            if let Some(g) = group {
                biases[g] = true;
            }
        }
        if module == Module::Head && spec.tie_embeddings {
            model.spec.tie_embeddings = false;
            model.head.weight = model.embed.copy().into();
        }
        let w = model.slot(At { module, param: Param::Weight });
        *w = (w.to_kind(Kind::Float) * scale.unsqueeze(1)).to_kind(w.kind()); // diag(s)·W: rows scaled
        let kind = w.kind();
        if needed {
            *model.slot(At { module, param: Param::Bias }) = bias.to_kind(kind);
        }
    }
    settle_biases(model, config_json, biases);
    Ok(())
}

/// Which bias switch a linear layer's bias falls under: 0 q/k/v, 1 attention's output, 2 the MLP.
fn bias_group(module: Module) -> Option<usize> {
    match module {
        Module::Linear(_, Proj::Q | Proj::K | Proj::V) => Some(0),
        Module::Linear(_, Proj::O) => Some(1),
        Module::Linear(..) => Some(2),
        _ => None,
    }
}

/// Gives the linears the biases the family's flags decide once some need one (Llama's and Falcon's
/// flags cover all of them; Qwen3's, OLMo 2's and Gemma's `attention_bias` q, k, v and o): zeros where
/// the run had none, and the flags in `config.json`.
fn settle_biases(model: &mut Gpt, config_json: &mut Value, [qkv, o, mlp]: [bool; 3]) {
    let spec = model.spec.clone();
    let any = qkv || o || mlp;
    let attention = qkv || o;
    let biases = match spec.family {
        Family::Llama | Family::Falcon => [any; 3],
        Family::Qwen3 | Family::Olmo2 | Family::Gemma2 | Family::Gemma3 => [attention, attention, mlp],
        Family::GptNeox | Family::Qwen2 | Family::Phi3 => [qkv, o, mlp],
    };
    let device = model.device();
    for block in 0..spec.n_layer as usize {
        let projections = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];
        for proj in projections.into_iter().filter(|p| *p != Proj::Gate || spec.mlp.gated()) {
            let module = Module::Linear(block, proj);
            let on = bias_group(module).is_some_and(|g| biases[g]);
            if on && !model.slot(At { module, param: Param::Bias }).defined() {
                let w = model.slot(At { module, param: Param::Weight });
                let (rows, kind) = (w.size()[0], w.kind());
                *model.slot(At { module, param: Param::Bias }) = Tensor::zeros([rows], (kind, device));
            }
        }
    }
    [model.spec.qkv_bias, model.spec.o_bias, model.spec.mlp_bias] = biases;
    if let Some(obj) = config_json.as_object_mut() {
        match spec.family {
            Family::Llama => {
                obj.insert("attention_bias".into(), any.into());
                obj.insert("mlp_bias".into(), any.into());
            }
            Family::Falcon => {
                obj.insert("bias".into(), any.into());
            }
            Family::GptNeox => {
                obj.insert("attention_bias".into(), qkv.into());
            }
            Family::Qwen3 | Family::Olmo2 | Family::Gemma2 | Family::Gemma3 => {
                obj.insert("attention_bias".into(), attention.into());
            }
            Family::Qwen2 | Family::Phi3 => {}
        }
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
            model.head.weight = model.embed.copy().into();
        }
        let w = model.slot(At { module, param: Param::Weight });
        *w = (w.to_kind(Kind::Float) + b.matmul(&a) * scale).to_kind(w.kind()); // (out, in)
    }
}

/// Writes `model`'s checkpoint tensors as a hub checkpoint into `out`, which must not exist yet; the
/// directory appears complete or not at all, and not at all when a tensor holds values it cannot write.
pub fn write_hub(model: &mut Gpt, e: &HubExport, out: &Path) -> Result<(), Problems> {
    staging::check_out(out)?;
    let weights: Vec<(String, Tensor)> =
        tch::no_grad(|| model.hub_weights().into_iter().map(|(n, t)| (n, t.detach())).collect());
    staging::check_values(&weights, e.dtype)?;
    let weights: Vec<(String, Tensor)> =
        tch::no_grad(|| weights.into_iter().map(|(n, t)| (n, t.to_kind(e.dtype).contiguous())).collect());
    let tmp = staging::stage(out)?;
    let written = write_files(model, e, &weights, &tmp);
    staging::finish(&tmp, out, written, "model")
}

fn write_files(model: &Gpt, e: &HubExport, weights: &[(String, Tensor)], dir: &Path) -> Result<(), String> {
    write_shards(weights, e.max_shard_bytes, dir)?;
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

/// A LoRA run's adapter in PEFT's format, into the new directory `out`: `adapter_config.json` and
/// `adapter_model.safetensors` (`base_model.model.<module>.lora_A.weight` …). A fused q/k/v projection
/// (Falcon, GPT-NeoX) is one PEFT module: its A stacks the A of each targeted part, its B puts each
/// part's B in that part's rows (interleaved per key/value group) and columns, and `rank_pattern` and
/// `alpha_pattern` keep the scale alpha / r.
pub fn write_peft(model: &mut Gpt, m: &MethodConfig, base_name: &str, out: &Path) -> Result<(), Problems> {
    staging::check_out(out)?;
    let modules = tch::no_grad(|| peft_modules(model, m));
    let mut tensors = Vec::new();
    let (mut targets, mut rank_pattern, mut alpha_pattern) =
        (Vec::new(), serde_json::Map::new(), serde_json::Map::new());
    for p in &modules {
        tensors.push((format!("base_model.model.{}.lora_A.weight", p.module), p.a.shallow_clone()));
        tensors.push((format!("base_model.model.{}.lora_B.weight", p.module), p.b.shallow_clone()));
        let local = p.module.rsplit('.').next().unwrap_or(&p.module).to_string();
        if p.parts > 1 {
            rank_pattern.insert(local.clone(), (m.lora_r * p.parts).into());
            alpha_pattern.insert(local.clone(), (m.lora_alpha * p.parts as f64).into());
        }
        if !targets.contains(&local) {
            targets.push(local);
        }
    }
    let config = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
        "r": m.lora_r, "lora_alpha": m.lora_alpha, "lora_dropout": m.lora_dropout,
        "target_modules": targets, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "modules_to_save": null,
    });
    staging::check_values(&tensors, Kind::Float)?;
    let tmp = staging::stage(out)?;
    let written = Tensor::write_safetensors(&tensors, tmp.join("adapter_model.safetensors"))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
            std::fs::write(tmp.join("adapter_config.json"), text).map_err(|e| e.to_string())
        });
    staging::finish(&tmp, out, written, "adapter")
}

/// One PEFT LoRA module: its hub module path, A `(r × parts, in)`, B `(out, r × parts)`.
struct PeftModule {
    module: String,
    a: Tensor,
    b: Tensor,
    parts: u64,
}

/// A LoRA layer's A and B.
type LoraPair = (Tensor, Tensor);

fn peft_modules(model: &mut Gpt, m: &MethodConfig) -> Vec<PeftModule> {
    let spec = model.spec.clone();
    let targets: Vec<Module> =
        model.layout.iter().filter(|t| t.at.param == Param::LoraA).map(|t| t.at.module).collect();
    let mut fused: BTreeMap<String, (Fusion, Vec<Option<LoraPair>>)> = BTreeMap::new();
    let mut out = Vec::new();
    for module in targets {
        let a = model.slot(At { module, param: Param::LoraA }).detach().to_kind(Kind::Float);
        let b = model.slot(At { module, param: Param::LoraB }).detach().to_kind(Kind::Float);
        let weight = TensorSpec { at: At { module, param: Param::Weight }, shape: vec![] };
        let hub = weight.hub_name(&spec).expect("linear layers have hub names");
        // PEFT names modules as transformers builds them; from version 5 on every family's output head
        // is `lm_head` (GPT-NeoX checkpoints still store it as `embed_out.weight`).
        let path = match module {
            Module::Head => "lm_head".to_string(),
            _ => hub.name.trim_end_matches(".weight").to_string(),
        };
        match hub.fused {
            None => out.push(PeftModule { module: path, a, b, parts: 1 }),
            Some((fusion, part)) => {
                let n = fusion.part_rows(&spec).len();
                fused.entry(path).or_insert_with(|| (fusion, (0..n).map(|_| None).collect())).1[part] = Some((a, b));
            }
        }
    }
    let r = m.lora_r as i64;
    for (path, (fusion, parts)) in fused {
        let rows = fusion.part_rows(&spec);
        let present: Vec<usize> = (0..parts.len()).filter(|&p| parts[p].is_some()).collect();
        let n = present.len() as i64;
        let a =
            Tensor::cat(&present.iter().map(|&p| parts[p].as_ref().unwrap().0.shallow_clone()).collect::<Vec<_>>(), 0);
        // Each part's rows of B: its own B in its own columns, zeros elsewhere.
        let block = |p: usize| {
            let full = Tensor::zeros([rows[p], r * n], (Kind::Float, a.device()));
            if let Some(j) = present.iter().position(|&q| q == p) {
                full.narrow(1, j as i64 * r, r).copy_(&parts[p].as_ref().unwrap().1);
            }
            full
        };
        let b = fuse(&spec, fusion, &(0..parts.len()).map(block).collect::<Vec<_>>());
        out.push(PeftModule { module: path, a, b, parts: n as u64 });
    }
    out
}
