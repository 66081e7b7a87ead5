//! A checkpoint's `config.json` read into a [`ModelSpec`]: what each family's keys decide, under the
//! names a key goes by in classic and transformers-5 files, with the defaults transformers gives a
//! missing key.
use std::path::Path;

use serde_json::Value;

use super::rope::{self, RopeScaling, RopeSpec};
use super::spec::{Family, Mlp, ModelSpec, Norm, NormPlacement, QkNorm, SlidingWindow};
use crate::error::Problems;

fn get<'a>(json: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| json.get(*k)).filter(|v| !v.is_null())
}

/// A `config.json`, read by the first of several names a key goes by.
struct Json<'a> {
    json: &'a Value,
    /// transformers ≥ 5 nests rotary settings in `rope_parameters`; older configs keep them at the top.
    rope: Value,
}

impl Json<'_> {
    fn int(&self, keys: &[&str]) -> Result<i64, String> {
        self.opt_int(keys).ok_or_else(|| format!("`{}` is missing or not a whole number", keys[0]))
    }

    fn opt_int(&self, keys: &[&str]) -> Option<i64> {
        get(self.json, keys).and_then(Value::as_i64)
    }

    fn float(&self, keys: &[&str]) -> Option<f64> {
        get(self.json, keys).and_then(Value::as_f64)
    }

    fn flag(&self, keys: &[&str]) -> Option<bool> {
        get(self.json, keys).and_then(Value::as_bool)
    }

    fn rope_float(&self, keys: &[&str]) -> Option<f64> {
        keys.iter().find_map(|k| self.rope.get(*k)).and_then(Value::as_f64).or_else(|| self.float(keys))
    }

    /// A number that transformers defaults to `default` when the key is absent and to "none" when it
    /// is `null` (Gemma 2's soft caps).
    fn float_or(&self, key: &str, default: Option<f64>) -> Option<f64> {
        match self.json.get(key) {
            None => default,
            Some(v) => v.as_f64(),
        }
    }
}

const SUPPORTED: &str = "falcon, llama (Llama 2/3, TinyLlama, CodeLlama, Vicuna), mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, olmo2, gpt_neox (Pythia, RedPajama-INCITE, StableLM-alpha)";

fn family_of(model_type: &str) -> Result<Family, String> {
    Ok(match model_type {
        "falcon" | "RefinedWeb" | "RefinedWebModel" => Family::Falcon,
        "llama" | "mistral" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "gemma2" => Family::Gemma2,
        "gemma3_text" => Family::Gemma3,
        "phi3" => Family::Phi3,
        "olmo2" => Family::Olmo2,
        "gpt_neox" => Family::GptNeox,
        "gemma3" => {
            return Err(
                "model_type \"gemma3\" is Gemma 3 with its vision tower; ftexp reads the text-only checkpoints (model_type \"gemma3_text\", e.g. google/gemma-3-1b-pt)".into(),
            )
        }
        other => return Err(format!("model_type \"{other}\" is not supported; supported: {SUPPORTED}")),
    })
}

impl ModelSpec {
    pub fn from_file(path: &Path) -> Result<ModelSpec, Problems> {
        Self::read(path, false).map(|(spec, _)| spec)
    }

    /// The spec of the `config.json` at `path`, with the JSON itself (read once for both);
    /// `allow_unknown` as [`ModelSpec::from_json_allowing`].
    pub fn read(path: &Path, allow_unknown: bool) -> Result<(ModelSpec, Value), Problems> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            Problems::one(format!("{}: invalid JSON at line {}, column {}: {e}", path.display(), e.line(), e.column()))
        })?;
        let spec = Self::from_json_allowing(&json, allow_unknown)
            .map_err(|msg| Problems::one(format!("{}: {msg}", path.display())))?;
        Ok((spec, json))
    }

    /// The spec of a `config.json`, refusing every key ftexp does not account for
    /// ([`super::config_keys`]).
    pub fn from_json(json: &Value) -> Result<ModelSpec, String> {
        Self::from_json_allowing(json, false)
    }

    /// [`ModelSpec::from_json`]; with `allow_unknown` (`model.allow_unknown_config_keys`) the keys ftexp
    /// does not account for are let through and listed in `ignored_config_keys` instead of refused.
    pub fn from_json_allowing(json: &Value, allow_unknown: bool) -> Result<ModelSpec, String> {
        let mut spec = parse(json)?;
        spec.skipped_config_keys = super::config_keys::skipped(json, &spec.model_type);
        let unknown = super::config_keys::unaccounted(json, &spec.model_type);
        if unknown.is_empty() || allow_unknown {
            spec.ignored_config_keys = unknown;
            return Ok(spec);
        }
        let (these, it) = if unknown.len() == 1 { ("key", "it") } else { ("keys", "them") };
        Err(format!(
            "ftexp does not implement {these} {} of this {} config.json, which can change what the model computes; use a checkpoint without {it}, or set model.allow_unknown_config_keys = true to ignore {it} (ftexp's model then differs from transformers')",
            unknown.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
            spec.model_type
        ))
    }
}

fn parse(json: &Value) -> Result<ModelSpec, String> {
    let model_type = get(json, &["model_type"]).and_then(Value::as_str).unwrap_or("").to_string();
    let family = family_of(&model_type)?;
    let j = Json { json, rope: get(json, &["rope_parameters"]).cloned().unwrap_or(Value::Null) };
    let hidden_size = j.int(&["hidden_size", "n_embed", "d_model"])?;
    let n_head = j.int(&["num_attention_heads", "n_head"])?;
    // transformers' Qwen3 and Gemma configs default `head_dim` to a number of their own, not hidden / heads.
    let own_default = match family {
        Family::Qwen3 => Some(128),
        Family::Gemma2 | Family::Gemma3 => Some(256),
        _ => None,
    };
    let head_size = match j.opt_int(&["head_dim"]).or(own_default) {
        Some(h) => h,
        None if n_head > 0 && hidden_size % n_head == 0 => hidden_size / n_head,
        None => return Err(format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {n_head}")),
    };
    let max_position_embeddings = j.opt_int(&["max_position_embeddings", "n_positions"]).unwrap_or(2048);
    // What every family shares; each family's function overrides what its config.json decides.
    let base = ModelSpec {
        family,
        model_type,
        vocab_size: j.int(&["vocab_size"])?,
        hidden_size,
        n_layer: j.int(&["num_hidden_layers", "n_layer"])?,
        n_head,
        n_query_groups: n_head,
        head_size,
        intermediate_size: j.opt_int(&["intermediate_size"]).unwrap_or(4 * hidden_size),
        norm: Norm::LayerNorm,
        norm_eps: 1e-5,
        norm_placement: NormPlacement::Pre,
        qk_norm: None,
        mlp: Mlp::Gelu,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        parallel_residual: false,
        shared_attention_norm: false,
        rope: RopeSpec { theta: 10000.0, dims: head_size, scaling: RopeScaling::Default, max_position_embeddings },
        rope_local: None,
        scale_embeddings: false,
        attention_scale: None,
        attention_softcap: None,
        final_softcap: None,
        tie_embeddings: j.flag(&["tie_word_embeddings"]).unwrap_or(false),
        max_position_embeddings,
        sliding_window: None,
        ignored_config_keys: Vec::new(),
        skipped_config_keys: Vec::new(),
    };
    let spec = match family {
        Family::Falcon => falcon(&j, base)?,
        Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Phi3 | Family::Olmo2 => llama(&j, base)?,
        Family::Gemma2 | Family::Gemma3 => gemma(&j, base)?,
        Family::GptNeox => gpt_neox(&j, base)?,
    };
    let spec = with_rope(&j, spec)?;
    spec.check()?;
    Ok(spec)
}

fn falcon(j: &Json, base: ModelSpec) -> Result<ModelSpec, String> {
    if j.flag(&["alibi"]) == Some(true) {
        return Err("Falcon with alibi = true is not supported; only rotary Falcon checkpoints are".into());
    }
    let new_arch = j.flag(&["new_decoder_architecture"]).unwrap_or(false);
    let groups = if new_arch {
        j.opt_int(&["num_kv_heads", "n_head_kv"]).unwrap_or(base.n_head)
    } else if j.flag(&["multi_query"]).unwrap_or(true) {
        1
    } else {
        base.n_head
    };
    let parallel = j.flag(&["parallel_attn"]).unwrap_or(true);
    if !parallel && new_arch {
        return Err("Falcon with new_decoder_architecture and parallel_attn = false is not supported".into());
    }
    let two_norms = new_arch && j.opt_int(&["num_ln_in_parallel_attn"]).unwrap_or(2) == 2;
    let bias = j.flag(&["bias"]).unwrap_or(false);
    Ok(ModelSpec {
        n_query_groups: groups,
        intermediate_size: j.opt_int(&["ffn_hidden_size"]).unwrap_or(4 * base.hidden_size),
        norm_eps: j.float(&["layer_norm_epsilon"]).unwrap_or(1e-5),
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: bias,
        parallel_residual: parallel,
        shared_attention_norm: parallel && !two_norms,
        tie_embeddings: j.flag(&["tie_word_embeddings"]).unwrap_or(true),
        ..base
    })
}

/// Llama-family, Qwen2/3, Phi-3 and OLMo 2 checkpoints: RMSNorm, SwiGLU, grouped-query attention.
fn llama(j: &Json, base: ModelSpec) -> Result<ModelSpec, String> {
    let family = base.family;
    let attention_bias = j.flag(&["attention_bias"]).unwrap_or(false);
    let qwen2 = family == Family::Qwen2;
    let olmo = family == Family::Olmo2;
    Ok(ModelSpec {
        n_query_groups: j.opt_int(&["num_key_value_heads"]).unwrap_or(base.n_head),
        intermediate_size: j.int(&["intermediate_size"])?,
        norm: if olmo { Norm::RmsNormScaledInFp32 } else { Norm::RmsNorm },
        norm_eps: j.float(&["rms_norm_eps"]).unwrap_or(if family == Family::Phi3 { 1e-5 } else { 1e-6 }),
        norm_placement: if olmo { NormPlacement::Post } else { NormPlacement::Pre },
        qk_norm: match family {
            Family::Qwen3 => Some(QkNorm::PerHead),
            Family::Olmo2 => Some(QkNorm::Projection),
            _ => None,
        },
        mlp: Mlp::SwiGlu,
        qkv_bias: qwen2 || attention_bias,
        o_bias: !qwen2 && attention_bias,
        // ftexp reads Llama's `mlp_bias` as equal to `attention_bias` (config_keys refuses otherwise).
        mlp_bias: family == Family::Llama && attention_bias,
        sliding_window: sliding_window(j, &base)?,
        ..base
    })
}

/// Gemma 2 and Gemma 3 (text): scaled embeddings, `(1 + w)` RMSNorms before and after attention and
/// the MLP, GeGLU, `query_pre_attn_scalar`, soft caps, sliding layers; Gemma 3 adds q/k norms.
fn gemma(j: &Json, base: ModelSpec) -> Result<ModelSpec, String> {
    let act = get(j.json, &["hidden_activation"]).and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh");
    if !matches!(act, "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") {
        return Err(format!(
            "{} hidden_activation \"{act}\" is not supported; supported: gelu_pytorch_tanh",
            base.model_type
        ));
    }
    let gemma2 = base.family == Family::Gemma2;
    let attention_bias = j.flag(&["attention_bias"]).unwrap_or(false);
    let scalar = j.float(&["query_pre_attn_scalar"]).unwrap_or(256.0);
    Ok(ModelSpec {
        n_query_groups: j.opt_int(&["num_key_value_heads"]).unwrap_or(base.n_head),
        intermediate_size: j.int(&["intermediate_size"])?,
        norm: Norm::RmsNormPlusOne,
        norm_eps: j.float(&["rms_norm_eps"]).unwrap_or(1e-6),
        norm_placement: NormPlacement::Sandwich,
        qk_norm: (!gemma2).then_some(QkNorm::PerHead),
        mlp: Mlp::GeGlu,
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        scale_embeddings: true,
        attention_scale: Some(if scalar > 0.0 { scalar.powf(-0.5) } else { f64::NAN }),
        attention_softcap: j.float_or("attn_logit_softcapping", gemma2.then_some(50.0)),
        final_softcap: j.float_or("final_logit_softcapping", gemma2.then_some(30.0)),
        tie_embeddings: j.flag(&["tie_word_embeddings"]).unwrap_or(true),
        sliding_window: sliding_window(j, &base)?,
        ..base
    })
}

fn gpt_neox(j: &Json, base: ModelSpec) -> Result<ModelSpec, String> {
    let act = get(j.json, &["hidden_act"]).and_then(Value::as_str).unwrap_or("gelu");
    let mlp = match act {
        "gelu" => Mlp::Gelu,
        "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Mlp::GeluTanh,
        _ => {
            return Err(format!(
            "gpt_neox hidden_act \"{act}\" is not supported; supported: gelu, gelu_new, gelu_fast, gelu_pytorch_tanh"
        ))
        }
    };
    Ok(ModelSpec {
        norm_eps: j.float(&["layer_norm_eps"]).unwrap_or(1e-5),
        mlp,
        qkv_bias: j.flag(&["attention_bias"]).unwrap_or(true),
        o_bias: true,
        mlp_bias: true,
        parallel_residual: j.flag(&["use_parallel_residual"]).unwrap_or(true),
        ..base
    })
}

/// The rotary embeddings: the share of each head that rotates, the base and the scaling, from
/// `rope_parameters` (transformers ≥ 5) or the classic top-level keys and `rope_scaling`. Gemma 3
/// gives its sliding layers a base of their own (`rope_local_base_freq`, or the `sliding_attention`
/// entry of `rope_parameters`), and its scaling applies to the full-attention layers only.
fn with_rope(j: &Json, spec: ModelSpec) -> Result<ModelSpec, String> {
    let pct = j.rope_float(&["partial_rotary_factor", "rotary_pct"]).unwrap_or(1.0);
    let dims = (spec.head_size as f64 * pct) as i64;
    if dims < 0 || dims % 2 != 0 || dims > spec.head_size {
        return Err(format!(
            "rotary embeddings on {dims} of the {} dimensions of a head: they must be an even number, at most the head size; check `rotary_pct` / `partial_rotary_factor`",
            spec.head_size
        ));
    }
    let max = spec.max_position_embeddings;
    let classic = || get(j.json, &["rope_scaling"]).cloned().unwrap_or(Value::Null);
    if spec.family == Family::Gemma3 {
        let nested = |kind: &str| j.rope.get(kind).filter(|v| v.is_object()).cloned();
        let (full, local) = match (nested("full_attention"), nested("sliding_attention")) {
            (None, None) => (classic(), Value::Null),
            (full, local) => (full.unwrap_or(Value::Null), local.unwrap_or(Value::Null)),
        };
        let theta = |table: &Value, top: &str, default: f64| {
            table.get("rope_theta").and_then(Value::as_f64).or_else(|| j.float(&[top])).unwrap_or(default)
        };
        let rope = rope::parse(&full, theta(&full, "rope_theta", 1e6), dims, max)?;
        let local = rope::parse(&local, theta(&local, "rope_local_base_freq", 1e4), dims, max)?;
        return Ok(ModelSpec { rope, rope_local: Some(local), ..spec });
    }
    let table = rope::rope_dictionary(j.json);
    let theta = table.get("rope_theta").and_then(Value::as_f64);
    let theta = theta.or_else(|| j.rope_float(&["rope_theta", "rotary_emb_base"])).unwrap_or(10000.0);
    Ok(ModelSpec { rope: rope::parse(&table, theta, dims, max)?, ..spec })
}

/// The sliding window as transformers reads it: Mistral and Phi-3 slide on every layer, Qwen2/3 only
/// with `use_sliding_window` on the layers `layer_types` (else `max_window_layers`) marks, Gemma on
/// the layers `layer_types` (else every other one for Gemma 2, all but every `sliding_window_pattern`th
/// for Gemma 3) marks. `sliding_window` absent: 4096 (none for Phi-3); `null`: no window.
fn sliding_window(j: &Json, base: &ModelSpec) -> Result<Option<SlidingWindow>, String> {
    let n = base.n_layer.max(0) as usize;
    let (layers, default) = match base.family {
        Family::Llama if base.model_type == "mistral" => (vec![true; n], Some(4096)),
        Family::Phi3 => (vec![true; n], None),
        Family::Qwen2 | Family::Qwen3 => {
            let layers = layer_types(j, n)?.unwrap_or_else(|| {
                let from = j.opt_int(&["max_window_layers"]).unwrap_or(28);
                (0..n).map(|i| i as i64 >= from).collect()
            });
            if !j.flag(&["use_sliding_window"]).unwrap_or(false) {
                return Ok(None);
            }
            (layers, Some(4096))
        }
        Family::Gemma2 | Family::Gemma3 => {
            let every = if base.family == Family::Gemma2 {
                2
            } else {
                j.opt_int(&["sliding_window_pattern", "_sliding_window_pattern"]).unwrap_or(6)
            };
            let pattern = || (0..n).map(|i| every <= 0 || (i as i64 + 1) % every != 0).collect();
            (layer_types(j, n)?.unwrap_or_else(pattern), Some(4096))
        }
        _ => return Ok(None),
    };
    let size = match j.json.get("sliding_window") {
        None => match default {
            Some(size) => size,
            None => return Ok(None),
        },
        Some(Value::Null) => return Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|&w| w >= 1)
            .ok_or_else(|| format!("`sliding_window` is {v}; it must be a whole number of at least 1, or null"))?,
    };
    Ok(layers.contains(&true).then_some(SlidingWindow { size, layers }))
}

/// Which of `n` layers `layer_types` marks as sliding, when the file has it.
fn layer_types(j: &Json, n: usize) -> Result<Option<Vec<bool>>, String> {
    let Some(types) = get(j.json, &["layer_types"]) else { return Ok(None) };
    let bad =
        || format!("`layer_types` must name \"full_attention\" or \"sliding_attention\" for each of the {n} layers");
    let types = types.as_array().filter(|t| t.len() == n).ok_or_else(bad)?;
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(false),
            Some("sliding_attention") => Ok(true),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
