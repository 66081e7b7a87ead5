//! Strict `config.json`: per family, the keys ftexp accounts for. A key is accounted for when it does
//! not touch what the model computes (bookkeeping, token ids, transformers' generation defaults, which
//! `ftexp generate` takes from its own options), when [`super::spec`] reads it (implemented), or when
//! it sits at a value whose computation is the one ftexp does (`attention_dropout = 0`,
//! `mlp_bias = false`; `null` always, which transformers reads as unset). Every other key is
//! unaccounted for: [`super::spec::ModelSpec::from_json_allowing`] refuses it by name unless
//! `model.allow_unknown_config_keys` lets it through.
use serde_json::Value;

/// How a key is accounted for.
#[derive(Clone, Copy)]
enum Known {
    /// Any value: read by ftexp, or not about the computation.
    Any,
    /// A family's key that does not touch the computation and ftexp does not read (the plan lists it).
    Skipped,
    /// Changes the computation; ftexp's equals it at the values this accepts (given the whole file).
    Neutral(fn(&Value, &Value) -> bool),
}
use Known::*;

fn zero(v: &Value, _: &Value) -> bool {
    v.as_f64() == Some(0.0)
}

fn off(v: &Value, _: &Value) -> bool {
    *v == Value::Bool(false)
}

fn one(v: &Value, _: &Value) -> bool {
    v.as_f64() == Some(1.0)
}

fn silu(v: &Value, _: &Value) -> bool {
    matches!(v.as_str(), Some("silu" | "swish"))
}

fn gelu(v: &Value, _: &Value) -> bool {
    v.as_str() == Some("gelu")
}

/// Gemma's `hidden_act`, which transformers ≥ 5 no longer reads (`hidden_activation` decides).
fn gelu_tanh(v: &Value, _: &Value) -> bool {
    matches!(v.as_str(), Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast"))
}

fn nothing(v: &Value, _: &Value) -> bool {
    v.as_object().is_some_and(|o| o.is_empty()) || v.as_array().is_some_and(|a| a.is_empty())
}

/// Llama's `mlp_bias` as ftexp implements it: with the attention's (one switch for both).
fn as_attention_bias(v: &Value, json: &Value) -> bool {
    *v == *json.get("attention_bias").filter(|b| !b.is_null()).unwrap_or(&Value::Bool(false))
}

/// A sliding window no sequence of the model's length reaches.
fn unreached_window(v: &Value, json: &Value) -> bool {
    let max = json.get("max_position_embeddings").and_then(Value::as_i64).unwrap_or(2048);
    v.as_i64().is_some_and(|w| w >= max)
}

/// Keys of every family: bookkeeping, token ids and transformers' generation defaults (no effect on
/// the computation), the sizes [`super::spec`] reads, and dropout, which ftexp never applies.
const EVERY_FAMILY: &[(&str, Known)] = &[
    ("architectures", Any),
    ("model_type", Any),
    ("torch_dtype", Any),
    ("dtype", Any),
    ("transformers_version", Any),
    ("_name_or_path", Any),
    ("auto_map", Any), // remote code transformers would run; ftexp runs its own implementation
    ("tokenizer_class", Any),
    ("bos_token_id", Any),
    ("eos_token_id", Any),
    ("pad_token_id", Any),
    ("sep_token_id", Any),
    ("decoder_start_token_id", Any),
    ("use_cache", Any),
    ("initializer_range", Any),
    ("gradient_checkpointing", Any),
    ("output_attentions", Any),
    ("output_hidden_states", Any),
    ("return_dict", Any),
    ("torchscript", Any),
    ("use_bfloat16", Any),
    ("id2label", Any),
    ("label2id", Any),
    ("problem_type", Any),
    ("finetuning_task", Any),
    ("task_specific_params", Any),
    ("prefix", Any),
    ("chunk_size_feed_forward", Any), // the same maths in slices
    ("tie_encoder_decoder", Any),
    ("is_encoder_decoder", Neutral(off)),
    ("add_cross_attention", Neutral(off)),
    ("pruned_heads", Neutral(nothing)),
    ("max_length", Any),
    ("min_length", Any),
    ("do_sample", Any),
    ("early_stopping", Any),
    ("num_beams", Any),
    ("num_beam_groups", Any),
    ("diversity_penalty", Any),
    ("temperature", Any),
    ("top_k", Any),
    ("top_p", Any),
    ("typical_p", Any),
    ("repetition_penalty", Any),
    ("length_penalty", Any),
    ("no_repeat_ngram_size", Any),
    ("encoder_no_repeat_ngram_size", Any),
    ("bad_words_ids", Any),
    ("num_return_sequences", Any),
    ("output_scores", Any),
    ("return_dict_in_generate", Any),
    ("forced_bos_token_id", Any),
    ("forced_eos_token_id", Any),
    ("remove_invalid_values", Any),
    ("exponential_decay_length_penalty", Any),
    ("suppress_tokens", Any),
    ("begin_suppress_tokens", Any),
    ("vocab_size", Any),
    ("hidden_size", Any),
    ("num_hidden_layers", Any),
    ("num_attention_heads", Any),
    ("max_position_embeddings", Any),
    ("tie_word_embeddings", Any),
    ("rope_theta", Any),
    // their entries are checked one by one ([`rope_entries`])
    ("rope_parameters", Any),
    ("rope_scaling", Any),
    ("attention_dropout", Neutral(zero)),
];

const LLAMA: &[(&str, Known)] = &[
    ("num_key_value_heads", Any),
    ("intermediate_size", Any),
    ("head_dim", Any),
    ("rms_norm_eps", Any),
    ("attention_bias", Any),
    ("pretraining_tp", Any), // transformers 4 split the same products in slices; 5 ignores it
    ("hidden_act", Neutral(silu)),
    ("mlp_bias", Neutral(as_attention_bias)),
    ("sliding_window", Neutral(unreached_window)),
];

/// Mistral: Llama's keys and its sliding window; transformers gives it no biases whatever the file says.
const MISTRAL: &[(&str, Known)] = &[
    ("num_key_value_heads", Any),
    ("intermediate_size", Any),
    ("head_dim", Any),
    ("rms_norm_eps", Any),
    ("sliding_window", Any),
    ("hidden_act", Neutral(silu)),
    ("attention_bias", Neutral(off)),
    ("mlp_bias", Neutral(off)),
];

const QWEN2: &[(&str, Known)] = &[
    ("num_key_value_heads", Any),
    ("intermediate_size", Any),
    ("head_dim", Any),
    ("rms_norm_eps", Any),
    ("use_sliding_window", Any),
    ("sliding_window", Any),
    ("max_window_layers", Any),
    ("layer_types", Any),
    ("hidden_act", Neutral(silu)),
];

/// Qwen2's keys; Qwen3's `attention_bias` puts a bias on q, k, v and o.
const QWEN3: &[(&str, Known)] = &[
    ("num_key_value_heads", Any),
    ("intermediate_size", Any),
    ("head_dim", Any),
    ("rms_norm_eps", Any),
    ("attention_bias", Any),
    ("use_sliding_window", Any),
    ("sliding_window", Any),
    ("max_window_layers", Any),
    ("layer_types", Any),
    ("hidden_act", Neutral(silu)),
];

const GEMMA: &[(&str, Known)] = &[
    ("num_key_value_heads", Any),
    ("intermediate_size", Any),
    ("head_dim", Any),
    ("rms_norm_eps", Any),
    ("attention_bias", Any),
    ("hidden_activation", Any),
    ("query_pre_attn_scalar", Any),
    ("sliding_window", Any),
    ("sliding_window_pattern", Any),
    ("_sliding_window_pattern", Any),
    ("layer_types", Any),
    ("final_logit_softcapping", Any),
    ("attn_logit_softcapping", Any),
    ("rope_local_base_freq", Any),
    ("cache_implementation", Skipped), // transformers' KV cache class in generate
    ("sliding_window_size", Skipped),  // early Gemma 2 files; transformers reads `sliding_window`
    ("hidden_act", Neutral(gelu_tanh)),
    ("use_bidirectional_attention", Neutral(off)),
];

const PHI3: &[(&str, Known)] = &[
    ("num_key_value_heads", Any),
    ("head_dim", Any),
    ("intermediate_size", Any),
    ("rms_norm_eps", Any),
    ("sliding_window", Any),
    ("original_max_position_embeddings", Any),
    ("partial_rotary_factor", Any),
    ("hidden_act", Neutral(silu)),
    ("attention_bias", Neutral(off)),
    ("resid_pdrop", Neutral(zero)),
    ("embd_pdrop", Neutral(zero)),
];

const OLMO2: &[(&str, Known)] = &[
    ("num_key_value_heads", Any),
    ("head_dim", Any),
    ("intermediate_size", Any),
    ("rms_norm_eps", Any),
    ("attention_bias", Any),
    ("hidden_act", Neutral(silu)),
];

const FALCON: &[(&str, Known)] = &[
    ("n_embed", Any),
    ("n_head", Any),
    ("n_layer", Any),
    ("num_kv_heads", Any),
    ("n_head_kv", Any),
    ("new_decoder_architecture", Any),
    ("multi_query", Any),
    ("parallel_attn", Any),
    ("num_ln_in_parallel_attn", Any),
    ("bias", Any),
    ("alibi", Any),
    ("ffn_hidden_size", Any),
    ("layer_norm_epsilon", Any),
    ("activation", Neutral(gelu)),
    ("hidden_dropout", Neutral(zero)),
    ("apply_residual_connection_post_layernorm", Neutral(off)),
];

const GPT_NEOX: &[(&str, Known)] = &[
    ("intermediate_size", Any),
    ("hidden_act", Any),
    ("layer_norm_eps", Any),
    ("use_parallel_residual", Any),
    ("attention_bias", Any),
    ("rotary_pct", Any),
    ("rotary_emb_base", Any),
    ("partial_rotary_factor", Any),
    ("classifier_dropout", Any), // the sequence-classification head's, which a causal LM has not
    ("is_decoder", Any),
    ("hidden_dropout", Neutral(zero)),
];

/// The keys of `model_type`'s family besides [`EVERY_FAMILY`]'s.
fn family_keys(model_type: &str) -> &'static [(&'static str, Known)] {
    match model_type {
        "llama" => LLAMA,
        "mistral" => MISTRAL,
        "qwen2" => QWEN2,
        "qwen3" => QWEN3,
        "gemma2" | "gemma3_text" => GEMMA,
        "phi3" => PHI3,
        "olmo2" => OLMO2,
        "falcon" | "RefinedWeb" | "RefinedWebModel" => FALCON,
        "gpt_neox" => GPT_NEOX,
        _ => &[],
    }
}

/// `key = value` of each key of `json` (a `config.json` of `model_type`) that ftexp does not account
/// for, in the file's order.
pub fn unaccounted(json: &Value, model_type: &str) -> Vec<String> {
    sorted(json, model_type).0
}

/// `key = value` of each key of `json` that ftexp skips as harmless: a family's key it does not read
/// and that does not touch the computation, or one at a value whose computation is ftexp's.
pub fn skipped(json: &Value, model_type: &str) -> Vec<String> {
    sorted(json, model_type).1
}

/// The keys of `json` ftexp does not account for, and those it skips as harmless.
fn sorted(json: &Value, model_type: &str) -> (Vec<String>, Vec<String>) {
    let (mut unknown, mut harmless) = (Vec::new(), Vec::new());
    let Some(object) = json.as_object() else { return (unknown, harmless) };
    for (key, value) in object {
        let known =
            EVERY_FAMILY.iter().chain(family_keys(model_type)).find(|(k, _)| *k == key.as_str()).map(|(_, how)| *how);
        match known {
            _ if value.is_null() => {}
            Some(Any) => {}
            Some(Skipped) => harmless.push(shown(key, value)),
            Some(Neutral(accepts)) if accepts(value, json) => {
                if !EVERY_FAMILY.iter().any(|(k, _)| *k == key.as_str()) {
                    harmless.push(shown(key, value));
                }
            }
            _ => unknown.push(shown(key, value)),
        }
    }
    for table in ["rope_parameters", "rope_scaling"] {
        if let Some(Value::Object(entries)) = object.get(table) {
            let nested = model_type == "gemma3_text" && entries.values().any(Value::is_object);
            if nested {
                for (kind, inner) in entries {
                    if let Value::Object(inner) = inner {
                        unknown.extend(rope_entries(&format!("{table}.{kind}"), inner, model_type));
                    } else if !inner.is_null() {
                        unknown.push(shown(&format!("{table}.{kind}"), inner));
                    }
                }
            } else {
                unknown.extend(rope_entries(table, entries, model_type));
            }
        }
    }
    (unknown, harmless)
}

/// The entries of a rotary table ftexp does not implement: any but its kind, theta and that kind's
/// own settings ([`super::rope`] refuses a kind it does not implement), and a partial rotary factor
/// other than 1 where the family rotates whole heads.
fn rope_entries(table: &str, entries: &serde_json::Map<String, Value>, model_type: &str) -> Vec<String> {
    let kind = entries.get("rope_type").or_else(|| entries.get("type")).and_then(Value::as_str).unwrap_or("default");
    let own: &[&str] = match kind {
        "linear" | "dynamic" => &["factor", "original_max_position_embeddings"],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "attention_factor",
            "truncate",
        ],
        "longrope" | "su" => {
            &["short_factor", "long_factor", "factor", "attention_factor", "original_max_position_embeddings"]
        }
        "llama3" => &["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
        _ => &[],
    };
    let mut found = Vec::new();
    for (key, value) in entries {
        let fine = match key.as_str() {
            "rope_type" | "type" | "rope_theta" => true,
            "partial_rotary_factor" => matches!(model_type, "gpt_neox" | "phi3") || one(value, value),
            k => own.contains(&k),
        };
        if !fine && !value.is_null() {
            found.push(shown(&format!("{table}.{key}"), value));
        }
    }
    found
}

/// `key = value`, the value cut short when long.
fn shown(key: &str, value: &Value) -> String {
    let mut text = value.to_string();
    if text.chars().count() > 40 {
        text = text.chars().take(37).collect::<String>() + "...";
    }
    format!("{key} = {text}")
}
