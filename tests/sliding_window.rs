//! Sliding-window attention (Mistral; Qwen2 with `use_sliding_window`) against transformers on tiny
//! checkpoints whose window (8) is far shorter than the text (scripts/make_fixtures.py): the loss on a
//! long text, the greedy ids through the KV cache past the window, and how config.json is read.
use ftexp::eval::perplexity;
use ftexp::generate::{generate, Sampling};
use ftexp::model::load;
use ftexp::model::spec::{ModelSpec, SlidingWindow};
use ftexp::tokenizer::Tokenizer;
use serde_json::{json, Value};
use tch::{Device, Kind};

use crate::common::fixtures;

fn reference(name: &str) -> Value {
    crate::common::json_file(&fixtures().join("models").join(name).join("reference.json"))
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn sliding_window_models_match_transformers_past_the_window() {
    let layers = [("mistral", vec![true, true]), ("qwen2-sliding", vec![false, true, true])];
    let mut report = Vec::new();
    for (name, sliding) in layers {
        let dir = fixtures().join("models").join(name);
        let r = reference(name);
        let window = r["sliding_window"].as_i64().unwrap();
        let mut model = load(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.spec.sliding_window, Some(SlidingWindow { size: window, layers: sliding }), "{name}");

        let nll_ids = u32s(&r["nll_ids"]);
        assert!(nll_ids.len() as i64 > 4 * window, "{name}: the text must be much longer than the window");
        let nll = perplexity(&model, &nll_ids).mean_nll;
        let nll_diff = (nll - r["mean_nll"].as_f64().unwrap()).abs();
        assert!(nll_diff <= 1e-4, "{name}: mean NLL {nll} vs transformers' {} (|Δ| {nll_diff})", r["mean_nll"]);

        let tokenizer = Tokenizer::from_dir(&dir).unwrap();
        let prompt = u32s(&r["prompt_ids"]);
        let greedy = u32s(&r["greedy_ids"]);
        assert!((prompt.len() + greedy.len()) as i64 > window, "{name}: the greedy run must pass the window");
        let sampling = Sampling { max_new_tokens: 20, ..Sampling::default() };
        let cached = generate(&model, &prompt, &sampling, &tokenizer.eos_ids, true, |_| {});
        assert_eq!(cached, greedy, "{name}: greedy ids with the KV cache");
        let uncached = generate(&model, &prompt, &sampling, &tokenizer.eos_ids, false, |_| {});
        assert_eq!(uncached, greedy, "{name}: greedy ids without the cache");

        // The window matters here: without it the loss is transformers' full-attention one instead.
        let full_want = r["mean_nll_full_attention"].as_f64().unwrap();
        model.spec.sliding_window = None;
        let full = perplexity(&model, &nll_ids).mean_nll;
        assert!((full - full_want).abs() <= 1e-4, "{name}: full attention {full} vs transformers' {full_want}");
        assert!((full - nll).abs() > 1e-2, "{name}: the window does not change the loss");
        report.push(format!(
            "{name:14} window {window}: mean NLL {nll:.6} |Δ| {nll_diff:.2e} (full attention {full:.6}); greedy {} ids = transformers'",
            greedy.len()
        ));
    }
    println!("{}", report.join("\n"));
}

fn spec(json: Value) -> Result<ModelSpec, String> {
    ModelSpec::from_json(&json)
}

/// A small config.json of `model_type` with `extra` keys.
fn config(model_type: &str, extra: Value) -> Value {
    let mut base = json!({"model_type": model_type, "vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 4,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 64});
    base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    base
}

#[test]
fn the_window_is_read_as_transformers_reads_it() {
    let window = |s: ModelSpec| s.sliding_window.map(|w| (w.size, w.layers));
    // Mistral: every layer; absent means transformers' default 4096, null none.
    assert_eq!(window(spec(config("mistral", json!({"sliding_window": 8}))).unwrap()), Some((8, vec![true; 4])));
    assert_eq!(window(spec(config("mistral", json!({}))).unwrap()), Some((4096, vec![true; 4])));
    assert_eq!(window(spec(config("mistral", json!({"sliding_window": null}))).unwrap()), None);
    // Qwen2: only with use_sliding_window, on the layers from max_window_layers on (default 28) …
    let qwen = |extra| window(spec(config("qwen2", extra)).unwrap());
    assert_eq!(qwen(json!({"sliding_window": 8, "max_window_layers": 1})), None);
    let on = json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1});
    assert_eq!(qwen(on), Some((8, vec![false, true, true, true])));
    assert_eq!(qwen(json!({"use_sliding_window": true, "sliding_window": 8})), None, "no layer from 28 on");
    // … or those layer_types marks
    let types = json!({"use_sliding_window": true, "sliding_window": 5, "max_window_layers": 0,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]});
    assert_eq!(qwen(types), Some((5, vec![true, false, true, false])));
    let err = spec(config("qwen2", json!({"layer_types": ["full_attention"]}))).unwrap_err();
    assert!(err.contains("`layer_types` must name"), "{err}");
    // Gemma 2: every other layer from the first; Gemma 3: all but every `sliding_window_pattern`th (6);
    // Phi-3: every layer, and no window unless the file gives one
    let gemma2 = spec(config("gemma2", json!({"sliding_window": 8, "head_dim": 4}))).unwrap();
    assert_eq!(window(gemma2), Some((8, vec![true, false, true, false])));
    let gemma3 = json!({"sliding_window": 8, "head_dim": 4, "sliding_window_pattern": 2});
    assert_eq!(window(spec(config("gemma3_text", gemma3)).unwrap()), Some((8, vec![true, false, true, false])));
    let six = window(spec(config("gemma3_text", json!({"head_dim": 4}))).unwrap());
    assert_eq!(six, Some((4096, vec![true; 4])), "no sixth layer among four");
    assert_eq!(window(spec(config("phi3", json!({}))).unwrap()), None);
    assert_eq!(window(spec(config("phi3", json!({"sliding_window": 5}))).unwrap()), Some((5, vec![true; 4])));
    let err = spec(config("mistral", json!({"sliding_window": 0}))).unwrap_err();
    assert!(err.contains("`sliding_window` is 0"), "{err}");
}
