//! The architecture of a checkpoint, read from its hub `config.json` alone: one GPT description with
//! switches for each family, and the full list of its weights (HF names and shapes).
use std::path::Path;

use serde_json::Value;

use crate::error::Problems;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Falcon,
    Llama,
    Qwen2,
    GptNeox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    LayerNorm,
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mlp {
    /// fc → GELU (exact, erf) → proj.
    Gelu,
    /// fc → GELU (tanh approximation: `gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`) → proj.
    GeluTanh,
    /// down(silu(gate) · up).
    SwiGlu,
}

/// Llama 3.1 style frequency scaling of rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Sliding-window attention (Mistral; Qwen2 with `use_sliding_window`): on the layers it marks, each
/// query sees only the last `size` positions, itself included (transformers' `kv > q - size`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlidingWindow {
    pub size: i64,
    /// Per layer: whether its attention slides (the others see every earlier position).
    pub layers: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelSpec {
    pub family: Family,
    /// `model_type` as the checkpoint names it.
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub n_layer: i64,
    pub n_head: i64,
    /// Key/value heads: n_head for multi-head, 1 for multi-query, in between for grouped-query.
    pub n_query_groups: i64,
    pub head_size: i64,
    pub intermediate_size: i64,
    pub norm: Norm,
    pub norm_eps: f64,
    pub mlp: Mlp,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output and MLP projections.
    pub proj_bias: bool,
    /// x + attn(norm1(x)) + mlp(norm2(x)) instead of two sequential residual blocks.
    pub parallel_residual: bool,
    /// Parallel residual with one norm feeding both attention and MLP (Falcon 7B).
    pub shared_attention_norm: bool,
    /// How many dimensions of each head get rotary embeddings (all, or `rotary_pct` of them).
    pub rope_dims: i64,
    pub rope_theta: f64,
    pub rope_llama3: Option<Llama3Scaling>,
    pub tie_embeddings: bool,
    pub max_position_embeddings: i64,
    pub sliding_window: Option<SlidingWindow>,
    /// `config.json` keys ftexp does not implement, let through by `model.allow_unknown_config_keys`.
    pub ignored_config_keys: Vec<String>,
}

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
}

impl ModelSpec {
    /// The attention window of layer `layer`, when it slides.
    pub fn window(&self, layer: usize) -> Option<i64> {
        let w = self.sliding_window.as_ref()?;
        w.layers.get(layer).copied().unwrap_or(false).then_some(w.size)
    }

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
        let mut spec = Self::parse(json)?;
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

    fn parse(json: &Value) -> Result<ModelSpec, String> {
        let model_type = get(json, &["model_type"]).and_then(Value::as_str).unwrap_or("").to_string();
        let family = match model_type.as_str() {
            "falcon" | "RefinedWeb" | "RefinedWebModel" => Family::Falcon,
            "llama" | "mistral" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "gpt_neox" => Family::GptNeox,
            other => {
                return Err(format!(
                    "model_type \"{other}\" is not supported; supported: falcon, llama (Llama 2/3, TinyLlama, CodeLlama, Vicuna), mistral, qwen2, gpt_neox (Pythia, RedPajama-INCITE, StableLM-alpha)"
                ))
            }
        };
        let j = Json { json, rope: get(json, &["rope_parameters"]).cloned().unwrap_or(Value::Null) };
        let hidden_size = j.int(&["hidden_size", "n_embed", "d_model"])?;
        let n_head = j.int(&["num_attention_heads", "n_head"])?;
        if n_head <= 0 || hidden_size % n_head != 0 {
            return Err(format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {n_head}"));
        }
        let head_size = j.opt_int(&["head_dim"]).unwrap_or(hidden_size / n_head);
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
            mlp: Mlp::Gelu,
            qkv_bias: false,
            proj_bias: false,
            parallel_residual: false,
            shared_attention_norm: false,
            rope_dims: head_size,
            rope_theta: j.rope_float(&["rope_theta", "rotary_emb_base"]).unwrap_or(10000.0),
            rope_llama3: None,
            tie_embeddings: j.flag(&["tie_word_embeddings"]).unwrap_or(false),
            max_position_embeddings: j.opt_int(&["max_position_embeddings", "n_positions"]).unwrap_or(2048),
            sliding_window: None,
            ignored_config_keys: Vec::new(),
        };
        let spec = match family {
            Family::Falcon => falcon(&j, base)?,
            Family::Llama | Family::Qwen2 => llama(&j, base)?,
            Family::GptNeox => gpt_neox(&j, base)?,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Sizes, counts and numbers a model can be built from: positive sizes, heads that divide, rotary
    /// dimensions that pair up, a finite positive theta and norm epsilon, a parameter count that fits.
    fn check(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.n_layer),
            ("num_attention_heads", self.n_head),
            ("head_dim", self.head_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((key, v)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("`{key}` is {v}; it must be at least 1"));
        }
        if self.n_query_groups <= 0 || self.n_head % self.n_query_groups != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of the key/value heads {}",
                self.n_head, self.n_query_groups
            ));
        }
        if self.rope_dims < 0 || self.rope_dims % 2 != 0 || self.rope_dims > self.head_size {
            return Err(format!(
                "rotary embeddings on {} of the {} dimensions of a head: they must be an even number, at most the head size; check `rotary_pct` / `partial_rotary_factor`",
                self.rope_dims, self.head_size
            ));
        }
        for (key, v) in [("rope_theta", self.rope_theta), ("the norm epsilon", self.norm_eps)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{key} is {v}; it must be a positive number"));
            }
        }
        // Every tensor's element count, and their sum, must fit in an i64 (and so in memory arithmetic).
        let widest =
            [self.vocab_size, self.intermediate_size, (self.n_head + 2 * self.n_query_groups) * self.head_size]
                .into_iter()
                .try_fold(0i64, |max, rows| rows.checked_mul(self.hidden_size).map(|n| max.max(n)));
        let total = widest.and_then(|w| w.checked_mul(4)).and_then(|w| w.checked_mul(self.n_layer + 2));
        if total.is_none_or(|t| t > 1 << 48) {
            return Err(format!(
                "hidden_size {}, intermediate_size {}, vocab_size {} and {} layers make a model too large to build; check these numbers",
                self.hidden_size, self.intermediate_size, self.vocab_size, self.n_layer
            ));
        }
        Ok(())
    }
    /// The hub's names for this family's weights.
    pub fn names(&self) -> WeightNames {
        match self.family {
            Family::Falcon => {
                // Parallel blocks with two norms (the 40B/180B layout) name them ln_attn/ln_mlp.
                let two_parallel_norms = self.parallel_residual && !self.shared_attention_norm;
                WeightNames {
                    embed: "transformer.word_embeddings",
                    layers: "transformer.h",
                    norm1: if two_parallel_norms { "ln_attn" } else { "input_layernorm" },
                    norm2: if two_parallel_norms { "ln_mlp" } else { "post_attention_layernorm" },
                    qkv: Qkv::Fused("self_attention.query_key_value"),
                    attn_out: "self_attention.dense",
                    mlp_gate: "",
                    mlp_up: "mlp.dense_h_to_4h",
                    mlp_down: "mlp.dense_4h_to_h",
                    final_norm: "transformer.ln_f",
                    head: "lm_head",
                }
            }
            Family::Llama | Family::Qwen2 => WeightNames {
                embed: "model.embed_tokens",
                layers: "model.layers",
                norm1: "input_layernorm",
                norm2: "post_attention_layernorm",
                qkv: Qkv::Split("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                attn_out: "self_attn.o_proj",
                mlp_gate: "mlp.gate_proj",
                mlp_up: "mlp.up_proj",
                mlp_down: "mlp.down_proj",
                final_norm: "model.norm",
                head: "lm_head",
            },
            Family::GptNeox => WeightNames {
                embed: "gpt_neox.embed_in",
                layers: "gpt_neox.layers",
                norm1: "input_layernorm",
                norm2: "post_attention_layernorm",
                qkv: Qkv::Fused("attention.query_key_value"),
                attn_out: "attention.dense",
                mlp_gate: "",
                mlp_up: "mlp.dense_h_to_4h",
                mlp_down: "mlp.dense_4h_to_h",
                final_norm: "gpt_neox.final_layer_norm",
                head: "embed_out",
            },
        }
    }
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
        proj_bias: bias,
        parallel_residual: parallel,
        shared_attention_norm: parallel && !two_norms,
        tie_embeddings: j.flag(&["tie_word_embeddings"]).unwrap_or(true),
        ..base
    })
}

/// Llama-family and Qwen2 checkpoints: RMSNorm, SwiGLU, grouped-query attention, optional Llama 3 rope
/// scaling.
fn llama(j: &Json, base: ModelSpec) -> Result<ModelSpec, String> {
    let rope_type = j
        .rope
        .get("rope_type")
        .or_else(|| get(j.json, &["rope_scaling"]).and_then(|s| s.get("rope_type").or_else(|| s.get("type"))))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = if j.rope.is_object() { Some(&j.rope) } else { get(j.json, &["rope_scaling"]) };
    let rope_llama3 = match (rope_type, scaling) {
        ("default", _) => None,
        ("llama3", Some(s)) => {
            let f = |k: &str| s.get(k).and_then(Value::as_f64).ok_or(format!("rope scaling `{k}` is missing"));
            Some(Llama3Scaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")?,
            })
        }
        (other, _) => {
            return Err(format!("rope scaling type \"{other}\" is not supported; supported: default, llama3"))
        }
    };
    let qwen = base.family == Family::Qwen2;
    let attention_bias = j.flag(&["attention_bias"]).unwrap_or(false);
    Ok(ModelSpec {
        n_query_groups: j.opt_int(&["num_key_value_heads"]).unwrap_or(base.n_head),
        intermediate_size: j.int(&["intermediate_size"])?,
        norm: Norm::RmsNorm,
        norm_eps: j.float(&["rms_norm_eps"]).unwrap_or(1e-6),
        mlp: Mlp::SwiGlu,
        qkv_bias: qwen || attention_bias,
        proj_bias: !qwen && attention_bias,
        rope_llama3,
        sliding_window: sliding_window(j, &base)?,
        ..base
    })
}

/// The sliding window of a Mistral or Qwen2 checkpoint, as transformers reads it: Mistral slides on
/// every layer (`sliding_window` absent: 4096; `null`: no window); Qwen2 only with
/// `use_sliding_window`, on the layers `layer_types` marks `sliding_attention` (without it, those from
/// `max_window_layers` on).
fn sliding_window(j: &Json, base: &ModelSpec) -> Result<Option<SlidingWindow>, String> {
    let qwen = base.family == Family::Qwen2;
    if !qwen && base.model_type != "mistral" {
        return Ok(None);
    }
    let n = base.n_layer.max(0) as usize;
    let layers = if qwen { qwen_sliding_layers(j, n)? } else { vec![true; n] };
    if qwen && !j.flag(&["use_sliding_window"]).unwrap_or(false) {
        return Ok(None);
    }
    let size = match j.json.get("sliding_window") {
        None => 4096,
        Some(Value::Null) => return Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|&w| w >= 1)
            .ok_or_else(|| format!("`sliding_window` is {v}; it must be a whole number of at least 1, or null"))?,
    };
    Ok(layers.contains(&true).then_some(SlidingWindow { size, layers }))
}

/// Which of a Qwen2 checkpoint's `n` layers slide when its window is on.
fn qwen_sliding_layers(j: &Json, n: usize) -> Result<Vec<bool>, String> {
    let Some(types) = get(j.json, &["layer_types"]) else {
        let from = j.opt_int(&["max_window_layers"]).unwrap_or(28);
        return Ok((0..n).map(|i| i as i64 >= from).collect());
    };
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
        .collect()
}

fn gpt_neox(j: &Json, base: ModelSpec) -> Result<ModelSpec, String> {
    let pct = j.rope_float(&["partial_rotary_factor", "rotary_pct"]).unwrap_or(1.0);
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
        proj_bias: true,
        parallel_residual: j.flag(&["use_parallel_residual"]).unwrap_or(true),
        rope_dims: (base.head_size as f64 * pct) as i64,
        ..base
    })
}

#[derive(Debug, Clone, Copy)]
pub enum Qkv {
    /// One matrix, q/k/v interleaved per key/value group (Falcon, GPT-NeoX).
    Fused(&'static str),
    Split(&'static str, &'static str, &'static str),
}

/// The hub's module names of a family (a tensor's name adds `.weight` or `.bias`).
#[derive(Debug, Clone, Copy)]
pub struct WeightNames {
    pub embed: &'static str,
    pub layers: &'static str,
    pub norm1: &'static str,
    pub norm2: &'static str,
    pub qkv: Qkv,
    pub attn_out: &'static str,
    /// SwiGLU's gate projection; unused by GELU MLPs.
    pub mlp_gate: &'static str,
    pub mlp_up: &'static str,
    pub mlp_down: &'static str,
    pub final_norm: &'static str,
    pub head: &'static str,
}
