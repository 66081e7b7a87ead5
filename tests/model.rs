//! Parity with transformers on tiny random checkpoints of every family (made by
//! scripts/make_fixtures.py), generation with and without the KV cache, and loading errors.
use std::path::{Path, PathBuf};

use ftexp::eval::perplexity;
use ftexp::generate::{generate, Sampling};
use ftexp::model::load;
use ftexp::model::spec::ModelSpec;
use ftexp::tokenizer::Tokenizer;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::common::{fixtures, ftexp, stderr, stdout};

const FAMILIES: &[&str] = &[
    "falcon-7b-style",
    "falcon-40b-style",
    "llama",
    "llama3",
    "qwen2",
    "gpt-neox",
    "gpt-neox-sequential",
    "mistral",
    "qwen2-sliding",
    "qwen3",
    "gemma2",
    "gemma3",
    "phi3",
    "olmo2",
    "llama-yarn",
    "llama-dynamic",
];

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0)
}

/// Checks one fixture; returns (max |Δlogit|, max |logit|, |Δ mean NLL|) for the report.
fn check_family(name: &str) -> (f64, f64, f64) {
    let dir = model_dir(name);
    let r = reference(&dir);
    let model = load(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();

    let prompt_ids = u32s(&r["prompt_ids"]);
    assert_eq!(tokenizer.encode(r["prompt"].as_str().unwrap(), true).unwrap(), prompt_ids, "{name}: tokenization");

    let want: Vec<Vec<f64>> = serde_json::from_value(r["logits"].clone()).unwrap();
    let want = Tensor::from_slice2(&want).to_kind(Kind::Float);
    let got = tch::no_grad(|| model.forward(&ids_tensor(&prompt_ids), None)).squeeze_dim(0);
    assert_eq!(got.size(), want.size(), "{name}: logits shape");
    let max_diff = (&got - &want).abs().max().double_value(&[]);
    let max_logit = want.abs().max().double_value(&[]);
    let tolerance = (1e-4 * max_logit).max(1e-4);
    assert!(max_diff <= tolerance, "{name}: max |Δlogit| {max_diff} > {tolerance} (max |logit| {max_logit})");

    // The reference's NLL comes from one forward pass over the whole text, whose length sets the
    // frequencies of a length-dependent rotary scaling (dynamic); `perplexity` leaves out the last token.
    let nll_ids = u32s(&r["nll_ids"]);
    let logits = tch::no_grad(|| model.forward(&ids_tensor(&nll_ids), None)).squeeze_dim(0);
    let n = nll_ids.len() as i64 - 1;
    let targets = ids_tensor(&nll_ids).squeeze_dim(0).narrow(0, 1, n);
    let full = logits.narrow(0, 0, n).cross_entropy_for_logits(&targets).double_value(&[]);
    let nll_tolerance = 1e-5 * r["mean_nll"].as_f64().unwrap().abs().max(10.0);
    let nll_diff = (full - r["mean_nll"].as_f64().unwrap()).abs();
    assert!(nll_diff <= nll_tolerance, "{name}: |Δ mean NLL| {nll_diff} > {nll_tolerance}");
    if !model.spec.rope.depends_on_length() {
        let nll = perplexity(&model, &nll_ids);
        assert!(
            (nll.mean_nll - full).abs() <= 1e-6 * full.abs(),
            "{name}: perplexity's NLL {} vs {full}",
            nll.mean_nll
        );
    }

    let greedy = u32s(&r["greedy_ids"]);
    let sampling = Sampling { max_new_tokens: 20, ..Sampling::default() };
    let cached = generate(&model, &prompt_ids, &sampling, &tokenizer.eos_ids, true, |_| {});
    assert_eq!(cached, greedy, "{name}: greedy ids with the KV cache");
    let uncached = generate(&model, &prompt_ids, &sampling, &tokenizer.eos_ids, false, |_| {});
    assert_eq!(uncached, cached, "{name}: generation without the cache");
    (max_diff, max_logit, nll_diff)
}

#[test]
fn parity_with_transformers_for_every_family() {
    let mut report = Vec::new();
    for name in FAMILIES {
        let (d, m, n) = check_family(name);
        report.push(format!("{name:22} max|Δlogit| {d:.2e} (max|logit| {m:.1})  |Δ mean NLL| {n:.2e}"));
    }
    println!("{}", report.join("\n"));
}

#[test]
fn sampling_is_seeded_and_respects_top_k() {
    let dir = model_dir("llama");
    let model = load(&dir, Kind::Float, Device::Cpu).unwrap();
    let prompt = [5, 6, 7];
    let s = |seed| Sampling { max_new_tokens: 12, temperature: 1.0, top_k: Some(5), top_p: Some(0.9), seed };
    let a = generate(&model, &prompt, &s(1), &[], true, |_| {});
    assert_eq!(a, generate(&model, &prompt, &s(1), &[], true, |_| {}), "same seed, same text");
    let others: Vec<Vec<u32>> = (2..6).map(|seed| generate(&model, &prompt, &s(seed), &[], true, |_| {})).collect();
    assert!(others.iter().any(|o| *o != a), "other seeds give other text");
    // top_k = 1 is greedy whatever the temperature
    let top1 = Sampling { max_new_tokens: 12, temperature: 5.0, top_k: Some(1), top_p: None, seed: 3 };
    let greedy = Sampling { max_new_tokens: 12, ..Sampling::default() };
    assert_eq!(
        generate(&model, &prompt, &top1, &[], true, |_| {}),
        generate(&model, &prompt, &greedy, &[], true, |_| {})
    );
}

#[test]
fn generate_and_eval_commands() {
    let dir = model_dir("gpt-neox");
    let r = reference(&dir);
    let d = dir.display().to_string();
    let out = ftexp(
        Path::new("."),
        &[
            "generate",
            "--checkpoint",
            &d,
            "--prompt",
            r["prompt"].as_str().unwrap(),
            "--max-new-tokens",
            "20",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(u32s(&json["ids"]), u32s(&r["greedy_ids"]));
    let streamed = ftexp(
        Path::new("."),
        &["generate", "--checkpoint", &d, "--prompt", r["prompt"].as_str().unwrap(), "--max-new-tokens", "20"],
        &[],
    );
    assert_eq!(stdout(&streamed).trim_end_matches('\n'), json["text"].as_str().unwrap());

    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(text.path(), r["nll_text"].as_str().unwrap()).unwrap();
    let out = ftexp(
        Path::new("."),
        &["eval", "--checkpoint", &d, "--text", &text.path().display().to_string(), "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["tokens"].as_u64().unwrap() as usize, r["nll_ids"].as_array().unwrap().len());
    // Floats agree to rounding across CPUs (vector units differ), not to the bit: a perplexity in the
    // millions is compared relative to its size, in log space.
    let (nll, want) = (json["mean_nll"].as_f64().unwrap(), r["mean_nll"].as_f64().unwrap());
    assert!((nll - want).abs() <= 1e-5 * want.abs().max(1.0), "mean NLL {nll} vs {want}");
    let ppl = json["perplexity"].as_f64().unwrap();
    assert!((ppl.ln() - want).abs() <= 1e-5 * want.abs().max(1.0), "perplexity {ppl} vs e^{want}");
}

/// A copy of a fixture whose weights were rewritten by `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let src = model_dir(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if !file.ends_with(".safetensors") && file != "model.safetensors.index.json" {
            std::fs::copy(entry.path(), dir.path().join(&file)).unwrap();
        }
    }
    let mut tensors = Vec::new();
    for file in ftexp::model::weights::weight_files(&src).unwrap() {
        tensors.extend(Tensor::read_safetensors(&file).unwrap());
    }
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    match load(dir, Kind::Float, Device::Cpu) {
        Ok(_) => panic!("expected a load error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_named() {
    let missing = edited_copy("qwen2", |t| t.retain(|(n, _)| n != "model.layers.1.self_attn.k_proj.bias"));
    let err = load_error(missing.path());
    assert!(err.contains("tensor model.layers.1.self_attn.k_proj.bias is missing"), "{err}");

    let extra = edited_copy("qwen2", |t| {
        t.push(("model.layers.9.mlp.extra.weight".into(), Tensor::zeros([2, 2], (Kind::Float, Device::Cpu))))
    });
    let err = load_error(extra.path());
    assert!(err.contains("unexpected tensor model.layers.9.mlp.extra.weight"), "{err}");

    let shaped = edited_copy("qwen2", |t| {
        for (n, w) in t.iter_mut() {
            if n == "model.norm.weight" {
                *w = Tensor::ones([3], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load_error(shaped.path());
    assert!(err.contains("tensor model.norm.weight has shape [3]"), "{err}");
}

#[test]
fn pickle_only_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(model_dir("llama").join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not unpickled").unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("pickle") && err.contains("safetensors"), "{err}");
}

#[test]
fn unsupported_architectures_list_what_is_supported() {
    let err = ModelSpec::from_json(&serde_json::json!({"model_type": "gpt2", "vocab_size": 10})).unwrap_err();
    assert!(err.contains("\"gpt2\" is not supported") && err.contains("falcon") && err.contains("qwen2"), "{err}");
    let falcon = serde_json::json!({"model_type": "falcon", "alibi": true, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 10});
    let err = ModelSpec::from_json(&falcon).unwrap_err();
    assert!(err.contains("alibi"), "{err}");
    // Gemma 3 with its vision tower: the text-only checkpoints are the ones read
    let err = ModelSpec::from_json(&serde_json::json!({"model_type": "gemma3", "text_config": {}})).unwrap_err();
    assert!(err.contains("gemma3_text") && err.contains("google/gemma-3-1b-pt"), "{err}");
    let gemma = serde_json::json!({"model_type": "gemma2", "hidden_activation": "relu", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 10, "intermediate_size": 8});
    let err = ModelSpec::from_json(&gemma).unwrap_err();
    assert!(err.contains("hidden_activation \"relu\" is not supported"), "{err}");
}

/// transformers ≥ 5 nests rotary settings in `rope_parameters`; hub checkpoints made before keep them at
/// the top level. Both forms must give the same architecture.
#[test]
fn classic_and_rope_parameters_config_forms_agree() {
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(model_dir(name).join("config.json")).unwrap()).unwrap()
    };
    let to_classic = |mut json: Value, f: &dyn Fn(&mut serde_json::Map<String, Value>, Value)| {
        let rope = json.as_object_mut().unwrap().remove("rope_parameters").unwrap();
        f(json.as_object_mut().unwrap(), rope);
        json
    };
    let llama3 = read("llama3");
    let classic = to_classic(llama3.clone(), &|m, rope| {
        m.insert("rope_theta".into(), rope["rope_theta"].clone());
        let mut scaling = rope.clone();
        scaling.as_object_mut().unwrap().remove("rope_theta");
        m.insert("rope_scaling".into(), scaling);
    });
    let (a, b) = (ModelSpec::from_json(&llama3).unwrap(), ModelSpec::from_json(&classic).unwrap());
    assert_eq!(a, b);
    assert!(matches!(a.rope.scaling, ftexp::model::rope::RopeScaling::Llama3 { .. }) && a.rope.theta == 500000.0);

    let neox = read("gpt-neox-sequential");
    let classic = to_classic(neox.clone(), &|m, rope| {
        m.insert("rotary_emb_base".into(), rope["rope_theta"].clone());
        m.insert("rotary_pct".into(), rope["partial_rotary_factor"].clone());
    });
    let (a, b) = (ModelSpec::from_json(&neox).unwrap(), ModelSpec::from_json(&classic).unwrap());
    assert_eq!(a, b);
    assert_eq!((a.rope.dims, a.parallel_residual), (8, false));

    let qwen = read("qwen2");
    let classic = to_classic(qwen.clone(), &|m, rope| {
        m.insert("rope_theta".into(), rope["rope_theta"].clone());
    });
    assert_eq!(ModelSpec::from_json(&qwen).unwrap(), ModelSpec::from_json(&classic).unwrap());

    // Phi-3 as the hub keeps it: longrope under its old name "su", theta and the rotary share at the top
    let phi3 = read("phi3");
    let classic = to_classic(phi3.clone(), &|m, rope| {
        m.insert("rope_theta".into(), rope["rope_theta"].clone());
        m.insert("partial_rotary_factor".into(), rope["partial_rotary_factor"].clone());
        let scaling =
            serde_json::json!({"type": "su", "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]});
        m.insert("rope_scaling".into(), scaling);
    });
    let (a, b) = (ModelSpec::from_json(&phi3).unwrap(), ModelSpec::from_json(&classic).unwrap());
    assert_eq!(a, b);
    assert!(matches!(a.rope.scaling, ftexp::model::rope::RopeScaling::LongRope { .. }) && a.rope.dims == 8);

    // Gemma 3: the global theta and its scaling, and the sliding layers' `rope_local_base_freq`
    let gemma3 = read("gemma3");
    let classic = to_classic(gemma3.clone(), &|m, rope| {
        m.insert("rope_theta".into(), rope["full_attention"]["rope_theta"].clone());
        m.insert("rope_local_base_freq".into(), rope["sliding_attention"]["rope_theta"].clone());
        m.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "linear", "factor": rope["full_attention"]["factor"]}),
        );
    });
    let (a, b) = (ModelSpec::from_json(&gemma3).unwrap(), ModelSpec::from_json(&classic).unwrap());
    assert_eq!(a, b);
    assert_eq!((a.rope.theta, a.rope_local.as_ref().map(|r| r.theta)), (1e6, Some(1e4)));
}

/// Numbers without a sensible range are refused before any tensor is made: config.json sizes, rotary
/// settings and theta, and the command line's sampling and size options.
#[test]
fn out_of_range_numbers_are_refused() {
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir("gpt-neox").join("config.json")).unwrap()).unwrap();
    let cases: [(&str, Value, &str); 5] = [
        ("vocab_size", 0.into(), "`vocab_size` is 0; it must be at least 1"),
        ("num_hidden_layers", (-1).into(), "`num_hidden_layers` is -1"),
        ("hidden_size", (1i64 << 40).into(), "too large to build"),
        ("rope_parameters", serde_json::json!({"partial_rotary_factor": 0.1875}), "rotary embeddings on 3 of the 16"),
        (
            "rope_parameters",
            serde_json::json!({"partial_rotary_factor": 0.25, "rope_theta": 0.0}),
            "rope_theta must be a finite positive number, got 0",
        ),
    ];
    for (key, value, want) in cases {
        let mut json = base.clone();
        json[key] = value;
        let err = ModelSpec::from_json(&json).unwrap_err();
        assert!(err.contains(want), "{key}: {err}");
    }
    // through the binary: one line naming the file, exit 2
    let dir = tempfile::tempdir().unwrap();
    let mut json = base.clone();
    json["vocab_size"] = 0.into();
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(model_dir("gpt-neox").join(f), dir.path().join(f)).unwrap();
    }
    let d = dir.path().display().to_string();
    let out = ftexp(Path::new("."), &["generate", "--checkpoint", &d, "--prompt", "x"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("config.json: `vocab_size` is 0"), "{}", stderr(&out));
    let ok = model_dir("gpt-neox").display().to_string();
    for (flag, value, want) in [
        ("--temperature", "NaN", "is not a number from 0 up"),
        ("--temperature", "-1", "is not a number from 0 up"),
        ("--top-p", "1.5", "is not above 0 and at most 1"),
        ("--top-k", "0", "--top-k"),
        ("--max-new-tokens", "0", "--max-new-tokens"),
    ] {
        let arg = format!("{flag}={value}");
        let out = ftexp(Path::new("."), &["generate", "--checkpoint", &ok, "--prompt", "x", &arg], &[]);
        assert_eq!(out.status.code(), Some(2), "{arg}: {}", stderr(&out));
        assert!(stderr(&out).contains(want) && !stderr(&out).contains("panicked"), "{arg}: {}", stderr(&out));
    }
    let out = ftexp(Path::new("."), &["tokenizer", "--corpus", "x.txt", "--vocab-size", "0", "--out", "t"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--vocab-size"), "{}", stderr(&out));
}
