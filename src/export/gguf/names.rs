//! Each family's llama.cpp architecture: its name, its hyperparameters as GGUF metadata and ftexp's
//! tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, …, `output_norm`, `output`).
//!
//! Rotary layouts: ftexp (as transformers) rotates each head's dimension `j` with `j + d/2`
//! ("rotate half", llama.cpp's NEOX rope). llama.cpp runs `llama` with its NORM rope, which rotates
//! neighbouring pairs `(2j, 2j+1)`; so, as llama.cpp's converter does, each head's rows of q and k are
//! reordered `[x_0 … x_{d/2-1}, y_0 … y_{d/2-1}] → [x_0, y_0, x_1, y_1, …]`, which makes the two
//! rotations the same computation. `qwen2`, `qwen3`, `falcon`, `gptneox` and `olmo2` use the NEOX
//! rope: no reordering. Falcon's and GPT-NeoX's q, k and v are one matrix there (`attn_qkv`: the rows
//! of q, then k, then v; ftexp holds them apart, so no per-head interleaving is undone).
use tch::Tensor;

use super::writer::Value;
use crate::model::layout::{self, At, Module, Param, Proj};
use crate::model::rope::RopeScaling;
use crate::model::spec::ModelSpec;
use crate::model::spec::{Family, Mlp, Norm, NormPlacement, QkNorm};
use crate::model::Gpt;

/// The families a GGUF export writes, as the refusal names them.
pub const SUPPORTED: &str = "Llama (Llama 2/3, Mistral, TinyLlama, …), Qwen2, Qwen3, Falcon, GPT-NeoX and OLMo 2";

/// What llama.cpp's graph for an architecture computes, to check a model against.
struct Rules {
    norm: Norm,
    placement: NormPlacement,
    qk_norm: Option<QkNorm>,
    mlp: &'static [Mlp],
    /// `None`: either (a metadata switch says which).
    parallel: Option<bool>,
    /// Rotary dimensions fewer than the head's (a metadata value says how many).
    partial_rope: bool,
    /// The biases it reads: q/k/v, attention's output, the MLP's (`None`: either).
    biases: [Option<bool>; 3],
}

fn rules(arch: &str) -> Rules {
    let gelu: &[Mlp] = &[Mlp::Gelu, Mlp::GeluTanh];
    let rms = |qk_norm, placement, biases| Rules {
        norm: Norm::RmsNorm,
        placement,
        qk_norm,
        mlp: &[Mlp::SwiGlu],
        parallel: Some(false),
        partial_rope: false,
        biases,
    };
    let none = [Some(false); 3];
    match arch {
        "llama" => rms(None, NormPlacement::Pre, [None; 3]),
        "qwen2" => rms(None, NormPlacement::Pre, [Some(true), Some(false), Some(false)]),
        "qwen3" => rms(Some(QkNorm::PerHead), NormPlacement::Pre, none),
        "olmo2" => {
            Rules { norm: Norm::RmsNormScaledInFp32, ..rms(Some(QkNorm::Projection), NormPlacement::Post, none) }
        }
        "falcon" => {
            Rules { norm: Norm::LayerNorm, mlp: gelu, parallel: Some(true), ..rms(None, NormPlacement::Pre, none) }
        }
        _ => Rules {
            norm: Norm::LayerNorm,
            mlp: gelu,
            parallel: None,
            partial_rope: true,
            ..rms(None, NormPlacement::Pre, [Some(true); 3])
        },
    }
}

/// llama.cpp's architecture name of `spec`'s family, or why it cannot be written.
pub fn architecture(spec: &ModelSpec) -> Result<&'static str, String> {
    let arch = match spec.family {
        Family::Llama => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Falcon => "falcon",
        Family::GptNeox => "gptneox",
        Family::Olmo2 => "olmo2",
        other => {
            return Err(format!(
                "--format gguf writes {SUPPORTED} models; this run's model is {other:?} (model_type \"{}\"): export it with --format hf and convert that with llama.cpp's convert_hf_to_gguf.py",
                spec.model_type
            ))
        }
    };
    check_switches(spec, arch)?;
    Ok(arch)
}

/// Refuses the switches llama.cpp's graph for `arch` does not compute, naming the first.
fn check_switches(spec: &ModelSpec, arch: &str) -> Result<(), String> {
    let r = rules(arch);
    let biases = [spec.qkv_bias, spec.o_bias, spec.mlp_bias];
    let problem = if spec.norm != r.norm || spec.norm_placement != r.placement {
        Some("its norms")
    } else if !r.mlp.contains(&spec.mlp) {
        Some("its MLP's activation")
    } else if spec.qk_norm != r.qk_norm {
        Some("its q/k norms")
    } else if spec.rope.dims != spec.head_size && !r.partial_rope {
        Some("a partial rotary embedding")
    } else if r.parallel.is_some_and(|p| p != spec.parallel_residual) {
        Some("its residual layout")
    } else if r.biases.iter().zip(biases).any(|(want, has)| want.is_some_and(|w| w != has)) {
        Some("its linear layers' biases")
    } else if spec.attention_scale.is_some() || spec.attention_softcap.is_some() || spec.final_softcap.is_some() {
        Some("its attention scale or soft-caps")
    } else if spec.scale_embeddings || spec.rope_local.is_some() {
        Some("its embedding scale or local rotary base")
    } else {
        None
    };
    match problem {
        Some(what) => Err(format!(
            "--format gguf: this {:?} model has {what} as llama.cpp's \"{arch}\" does not compute them; export it with --format hf",
            spec.family
        )),
        None => Ok(()),
    }
}

/// The hyperparameters as `<arch>.*` metadata.
pub fn hyperparameters(spec: &ModelSpec, arch: &str) -> Result<Vec<(String, Value)>, String> {
    let u = |v: i64| Value::U32(v as u32);
    // A sliding window over every layer bounds what any query sees: llama.cpp's plain attention over
    // at most that many positions computes the same.
    let window = spec.sliding_window.as_ref().filter(|w| w.layers.iter().all(|s| *s)).map(|w| w.size);
    if spec.sliding_window.as_ref().is_some_and(|w| w.layers.iter().any(|s| *s)) && window.is_none() {
        return Err(
            "--format gguf: a sliding window on some layers only is not written to GGUF; export with --format hf"
                .into(),
        );
    }
    let context = window.map_or(spec.max_position_embeddings, |w| w.min(spec.max_position_embeddings));
    let mut kv = vec![
        ("context_length", u(context)),
        ("embedding_length", u(spec.hidden_size)),
        ("block_count", u(spec.n_layer)),
        ("feed_forward_length", u(spec.intermediate_size)),
        ("attention.head_count", u(spec.n_head)),
        ("attention.head_count_kv", u(spec.n_query_groups)),
        ("attention.key_length", u(spec.head_size)),
        ("attention.value_length", u(spec.head_size)),
        ("rope.dimension_count", u(spec.rope.dims)),
        ("rope.freq_base", Value::F32(spec.rope.theta as f32)),
        (eps_key(spec.norm), Value::F32(spec.norm_eps as f32)),
        ("vocab_size", u(spec.vocab_size)),
    ];
    if arch == "gptneox" {
        kv.push(("use_parallel_residual", Value::Bool(spec.parallel_residual)));
    }
    match &spec.rope.scaling {
        RopeScaling::Default => {}
        &RopeScaling::Linear { factor } => {
            kv.push(("rope.scaling.type", Value::Str("linear".into())));
            kv.push(("rope.scaling.factor", Value::F32(factor as f32)));
        }
        other => {
            let name = format!("{other:?}");
            let name = name.split([' ', '{']).next().unwrap_or("").to_lowercase();
            return Err(format!(
                "--format gguf: rotary scaling \"{name}\" is not written to GGUF by ftexp (none and linear are); export with --format hf"
            ));
        }
    }
    Ok(kv.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)).collect())
}

fn eps_key(norm: Norm) -> &'static str {
    match norm {
        Norm::LayerNorm => "attention.layer_norm_epsilon",
        _ => "attention.layer_norm_rms_epsilon",
    }
}

/// Each tensor of the (merged) model under its llama.cpp name, in ftexp's layout order.
pub fn tensors(model: &mut Gpt, arch: &str) -> Vec<(String, Tensor)> {
    let spec = model.spec.clone();
    let mut out = Vec::new();
    for t in layout::tensors(&spec, None) {
        let suffix = if t.at.param == Param::Bias { "bias" } else { "weight" };
        let tensor = model.slot(t.at).detach();
        let name = match t.at.module {
            Module::Linear(i, proj @ (Proj::Q | Proj::K | Proj::V)) if matches!(arch, "falcon" | "gptneox") => {
                if proj != Proj::V {
                    continue;
                }
                let mut part = |p| model.slot(At { module: Module::Linear(i, p), param: t.at.param }).detach();
                out.push((
                    format!("blk.{i}.attn_qkv.{suffix}"),
                    Tensor::cat(&[part(Proj::Q), part(Proj::K), tensor], 0),
                ));
                continue;
            }
            Module::Linear(_, Proj::Q) if arch == "llama" => {
                out.push((format!("{}.{suffix}", base_name(t.at.module, arch, false)), pairs(&tensor, spec.n_head)));
                continue;
            }
            Module::Linear(_, Proj::K) if arch == "llama" => {
                out.push((
                    format!("{}.{suffix}", base_name(t.at.module, arch, false)),
                    pairs(&tensor, spec.n_query_groups),
                ));
                continue;
            }
            module => base_name(module, arch, spec.shared_attention_norm),
        };
        out.push((format!("{name}.{suffix}"), tensor));
    }
    // llama.cpp's olmo2 and gptneox read no tied head: the embedding is written again as the head
    if spec.tie_embeddings && matches!(arch, "olmo2" | "gptneox") {
        out.push(("output.weight".into(), model.embed.detach()));
    }
    out
}

/// llama.cpp's name of a module. Falcon 40B's two norms (transformers' `ln_attn`, `ln_mlp`) are
/// llama.cpp's `attn_norm_2` (attention's) and `attn_norm` (the MLP's); Falcon 7B's one shared norm
/// is `attn_norm`.
fn base_name(module: Module, arch: &str, shared_norm: bool) -> String {
    let proj = |p: Proj| match p {
        Proj::Q => "attn_q",
        Proj::K => "attn_k",
        Proj::V => "attn_v",
        Proj::O => "attn_output",
        Proj::Gate => "ffn_gate",
        Proj::Up => "ffn_up",
        Proj::Down => "ffn_down",
    };
    match module {
        Module::Embed => "token_embd".into(),
        Module::FinalNorm => "output_norm".into(),
        Module::Head => "output".into(),
        Module::Norm1(i) if arch == "falcon" && !shared_norm => format!("blk.{i}.attn_norm_2"),
        Module::Norm1(i) => format!("blk.{i}.attn_norm"),
        Module::Norm2(i) if arch == "falcon" => format!("blk.{i}.attn_norm"),
        Module::Norm2(i) => format!("blk.{i}.ffn_norm"),
        Module::PostAttnNorm(i) => format!("blk.{i}.post_attention_norm"),
        Module::PostMlpNorm(i) => format!("blk.{i}.post_ffw_norm"),
        Module::QNorm(i) => format!("blk.{i}.attn_q_norm"),
        Module::KNorm(i) => format!("blk.{i}.attn_k_norm"),
        Module::Linear(i, p) => format!("blk.{i}.{}", proj(p)),
        Module::Adapter(_) => unreachable!("adapter prompts are merged or refused before naming"),
    }
}

/// Each head's rows (of a weight or a bias) reordered from rotate-half to neighbouring pairs.
fn pairs(t: &Tensor, heads: i64) -> Tensor {
    let size = t.size();
    let mut split = vec![heads, 2, size[0] / heads / 2];
    split.extend_from_slice(&size[1..]);
    t.reshape(split.as_slice()).transpose(1, 2).reshape(size.as_slice())
}
