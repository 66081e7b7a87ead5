//! The architecture of a checkpoint, read from its hub `config.json` alone: one GPT description with
//! switches for each family, and the full list of its weights (HF names and shapes).
use super::rope::RopeSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Falcon,
    Llama,
    Qwen2,
    /// Qwen2 with a per-head RMSNorm on q and k and no q/k/v biases.
    Qwen3,
    Gemma2,
    /// Gemma 2 with per-head q/k norms and a rotary base of its own on the sliding layers.
    Gemma3,
    /// Llama-like, with fused `qkv_proj` and `gate_up_proj` weights.
    Phi3,
    /// Norms after attention and the MLP (none before), q/k norms over the whole projection.
    Olmo2,
    GptNeox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    LayerNorm,
    /// Normalised in fp32, cast back, then scaled (Llama).
    RmsNorm,
    /// Normalised and scaled in fp32, then cast back (OLMo 2).
    RmsNormScaledInFp32,
    /// `x · (1 + w)` in fp32, then cast back (Gemma).
    RmsNormPlusOne,
}

/// Where a block's norms sit around attention and the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormPlacement {
    /// Before each (`x + f(norm(x))`).
    Pre,
    /// Before and after each (`x + post(f(pre(x)))`, Gemma).
    Sandwich,
    /// After each only (`x + post(f(x))`, OLMo 2).
    Post,
}

/// RMSNorm on the queries and keys before rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNorm {
    /// Over each head (Qwen3, Gemma 3): a weight of `head_dim`.
    PerHead,
    /// Over the whole projection (OLMo 2): a weight of `heads × head_dim`.
    Projection,
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
    /// down(gelu_tanh(gate) · up) (Gemma).
    GeGlu,
}

impl Mlp {
    /// Whether it has a gate projection.
    pub fn gated(self) -> bool {
        matches!(self, Mlp::SwiGlu | Mlp::GeGlu)
    }
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
    pub norm_placement: NormPlacement,
    pub qk_norm: Option<QkNorm>,
    pub mlp: Mlp,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// x + attn(norm1(x)) + mlp(norm2(x)) instead of two sequential residual blocks.
    pub parallel_residual: bool,
    /// Parallel residual with one norm feeding both attention and MLP (Falcon 7B).
    pub shared_attention_norm: bool,
    /// Rotary embeddings: base, dimensions of each head that rotate (all, or `rotary_pct` of them) and
    /// scaling.
    pub rope: RopeSpec,
    /// The sliding layers' own rotary embeddings (Gemma 3's local base); `None`: [`ModelSpec::rope`].
    pub rope_local: Option<RopeSpec>,
    /// Token embeddings multiplied by √hidden_size (Gemma).
    pub scale_embeddings: bool,
    /// The attention scores' scale; `None`: 1/√head_dim.
    pub attention_scale: Option<f64>,
    /// `cap · tanh(x / cap)` on the attention scores (Gemma 2).
    pub attention_softcap: Option<f64>,
    /// `cap · tanh(x / cap)` on the logits (Gemma 2).
    pub final_softcap: Option<f64>,
    pub tie_embeddings: bool,
    pub max_position_embeddings: i64,
    pub sliding_window: Option<SlidingWindow>,
    /// `config.json` keys ftexp does not implement, let through by `model.allow_unknown_config_keys`.
    pub ignored_config_keys: Vec<String>,
    /// The family's `config.json` keys skipped as harmless (not about the computation, or at a value
    /// whose computation is ftexp's), for the plan.
    pub skipped_config_keys: Vec<String>,
}

impl ModelSpec {
    /// The attention window of layer `layer`, when it slides.
    pub fn window(&self, layer: usize) -> Option<i64> {
        let w = self.sliding_window.as_ref()?;
        w.layers.get(layer).copied().unwrap_or(false).then_some(w.size)
    }

    /// Sizes, counts and numbers a model can be built from: positive sizes, heads that divide, rotary
    /// dimensions that pair up, a finite positive theta and norm epsilon, a parameter count that fits.
    pub(super) fn check(&self) -> Result<(), String> {
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
        let dims = self.rope.dims;
        if dims < 0 || dims % 2 != 0 || dims > self.head_size {
            return Err(format!(
                "rotary embeddings on {dims} of the {} dimensions of a head: they must be an even number, at most the head size; check `rotary_pct` / `partial_rotary_factor`",
                self.head_size
            ));
        }
        let local_theta = self.rope_local.as_ref().map_or(self.rope.theta, |r| r.theta);
        let scales =
            [("query_pre_attn_scalar", self.attention_scale), ("attn_logit_softcapping", self.attention_softcap)];
        let scales = scales.into_iter().chain([("final_logit_softcapping", self.final_softcap)]);
        for (key, v) in scales.filter_map(|(k, v)| v.map(|v| (k, v))) {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("`{key}` gives {v}; it must be a positive number"));
            }
        }
        let positive = [("rope_theta", self.rope.theta), ("the local rope_theta", local_theta)];
        for (key, v) in positive.into_iter().chain([("the norm epsilon", self.norm_eps)]) {
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
        let llama = WeightNames {
            embed: "model.embed_tokens",
            layers: "model.layers",
            norm1: "input_layernorm",
            norm2: "post_attention_layernorm",
            post_attn_norm: "",
            post_mlp_norm: "",
            q_norm: "self_attn.q_norm",
            k_norm: "self_attn.k_norm",
            qkv: Qkv::Split("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            attn_out: "self_attn.o_proj",
            mlp_gate: "mlp.gate_proj",
            mlp_up: "mlp.up_proj",
            mlp_down: "mlp.down_proj",
            gate_up_fused: false,
            final_norm: "model.norm",
            head: "lm_head",
        };
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
                    ..llama
                }
            }
            Family::Llama | Family::Qwen2 | Family::Qwen3 => llama,
            Family::Gemma2 | Family::Gemma3 => WeightNames {
                norm2: "pre_feedforward_layernorm",
                post_attn_norm: "post_attention_layernorm",
                post_mlp_norm: "post_feedforward_layernorm",
                ..llama
            },
            Family::Olmo2 => WeightNames {
                norm1: "",
                norm2: "",
                post_attn_norm: "post_attention_layernorm",
                post_mlp_norm: "post_feedforward_layernorm",
                ..llama
            },
            Family::Phi3 => WeightNames {
                qkv: Qkv::Concat("self_attn.qkv_proj"),
                mlp_gate: "mlp.gate_up_proj",
                mlp_up: "mlp.gate_up_proj",
                gate_up_fused: true,
                ..llama
            },
            Family::GptNeox => WeightNames {
                embed: "gpt_neox.embed_in",
                layers: "gpt_neox.layers",
                qkv: Qkv::Fused("attention.query_key_value"),
                attn_out: "attention.dense",
                mlp_gate: "",
                mlp_up: "mlp.dense_h_to_4h",
                mlp_down: "mlp.dense_4h_to_h",
                final_norm: "gpt_neox.final_layer_norm",
                head: "embed_out",
                ..llama
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Qkv {
    /// One matrix, q/k/v interleaved per key/value group (Falcon, GPT-NeoX).
    Fused(&'static str),
    /// One matrix, the rows of q, then k, then v (Phi-3).
    Concat(&'static str),
    Split(&'static str, &'static str, &'static str),
}

/// The hub's module names of a family (a tensor's name adds `.weight` or `.bias`).
#[derive(Debug, Clone, Copy)]
pub struct WeightNames {
    pub embed: &'static str,
    pub layers: &'static str,
    pub norm1: &'static str,
    pub norm2: &'static str,
    /// The norms after attention and after the MLP (Gemma, OLMo 2).
    pub post_attn_norm: &'static str,
    pub post_mlp_norm: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub qkv: Qkv,
    pub attn_out: &'static str,
    /// SwiGLU's gate projection; unused by GELU MLPs.
    pub mlp_gate: &'static str,
    pub mlp_up: &'static str,
    pub mlp_down: &'static str,
    /// Gate and up in one matrix, the gate's rows first (Phi-3).
    pub gate_up_fused: bool,
    pub final_norm: &'static str,
    pub head: &'static str,
}
