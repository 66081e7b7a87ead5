//! `ftexp export`: a run's model as a hub checkpoint that computes what the run computes.
use std::path::Path;

use ftexp::eval::{load_run, LoadOptions};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::common::{fixtures, ftexp, needs, stderr, Need};

pub(crate) fn project(family: &str, kind: &str) -> tempfile::TempDir {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\n[method]\nkind = \"{kind}\"\nlora_key = true\nlora_projection = true\nlora_mlp = true\nlora_head = true\nadapter_start_layer = 0\n[train]\nlearning_rate = 0.02\nmax_steps = 3\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 1\n",
        fixtures().join("models").join(family).display(),
    );
    crate::common::doubling_project(&config)
}

pub(crate) fn export(p: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", "experiments/t/v1", "--out", out];
    args.extend_from_slice(extra);
    ftexp(p, &args, &[])
}

const IDS: [i64; 8] = [3, 17, 42, 99, 7, 250, 11, 5];

/// The run's own logits for [`IDS`] `(time, vocab)`.
fn run_logits(p: &Path) -> Tensor {
    run_logits_of(p, "experiments/t/v1")
}

fn run_logits_of(p: &Path, run: &str) -> Tensor {
    // the run records its base by absolute path here (the fixture's), so no working directory is needed
    let run = load_run(&p.join(run), LoadOptions::default()).unwrap();
    tch::no_grad(|| run.model.forward(&Tensor::from_slice(&IDS).unsqueeze(0), None).squeeze_dim(0))
}

/// The largest logit difference between the run's model and the exported checkpoint loaded by ftexp.
fn logit_difference(p: &Path, out: &str) -> (f64, f64) {
    logit_difference_of(p, "experiments/t/v1", out)
}

fn logit_difference_of(p: &Path, run: &str, out: &str) -> (f64, f64) {
    let want = run_logits_of(p, run);
    let exported = ftexp::model::load(&p.join(out), Kind::Float, Device::Cpu).unwrap();
    let got = tch::no_grad(|| exported.forward(&Tensor::from_slice(&IDS).unsqueeze(0), None).squeeze_dim(0));
    ((&got - &want).abs().max().double_value(&[]), want.abs().max().double_value(&[]))
}

/// Runs `scripts/check_export.py` with the project's venv (transformers, peft) and returns its JSON.
pub(crate) fn python(args: &[&str], env: &[(&str, &str)]) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(crate::common::python())
        .arg(root.join("scripts/check_export.py"))
        .args(args)
        .envs(env.iter().copied())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "check_export.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The largest difference between `logits` from Python and `want`.
pub(crate) fn python_difference(logits: &Value, want: &Tensor) -> f64 {
    let rows: Vec<Vec<f32>> = serde_json::from_value(logits.clone()).unwrap();
    let flat: Vec<f32> = rows.concat();
    let got = Tensor::from_slice(&flat).view([rows.len() as i64, -1]);
    (&got - want.to_kind(Kind::Float)).abs().max().double_value(&[])
}

#[test]
fn a_lora_run_exports_merged_for_every_family() {
    if !needs(Need::Python) {
        return;
    }
    for family in ["llama", "falcon-7b-style", "gpt-neox", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "olmo2"] {
        let p = project(family, "lora");
        let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
        assert!(out.status.success(), "{family}: {}", stderr(&out));
        let done = export(p.path(), "hf", &[]);
        assert!(done.status.success(), "{family}: {}", stderr(&done));
        let (diff, scale) = logit_difference(p.path(), "hf");
        let ids = serde_json::to_string(&IDS).unwrap();
        let hf_dir = p.path().join("hf").display().to_string();
        let transformers = python_difference(&python(&["hf", &hf_dir, &ids], &[])["logits"], &run_logits(p.path()));
        println!("{family}: max |Δlogit| ftexp {diff:.2e}, transformers {transformers:.2e} (max |logit| {scale:.2})");
        assert!(diff <= 1e-4 * scale.max(1.0), "{family}: exported logits differ by {diff}");
        assert!(
            transformers <= 1e-4 * (scale / 20.0).max(1.0),
            "{family}: transformers' logits differ by {transformers}"
        );

        // the same run as a PEFT adapter on the base: the same logits, and merged, the same weights
        let done = export(p.path(), "peft", &["--format", "peft"]);
        assert!(done.status.success(), "{family}: {}", stderr(&done));
        let base = fixtures().join("models").join(family).display().to_string();
        let peft_dir = p.path().join("peft").display().to_string();
        let checked = python(&["peft", &base, &peft_dir, &ids], &[("HF_DIR", &hf_dir)]);
        let peft = python_difference(&checked["logits"], &run_logits(p.path()));
        // PEFT merges a LoRA of a tied head into the one matrix the head shares with the embedding, so its
        // merged embedding changes too (the run's, and our export's, do not): compare the rest there.
        let tied = serde_json::from_str::<Value>(
            &std::fs::read_to_string(fixtures().join("models").join(family).join("config.json")).unwrap(),
        )
        .unwrap()["tie_word_embeddings"]
            == true;
        let mut merged = checked["merged"].as_object().unwrap().clone();
        merged.retain(|k, _| !(tied && (k.contains("embed") || k.contains("word_embeddings"))));
        let (worst, name) = merged
            .iter()
            .map(|(k, v)| (v.as_f64().unwrap(), k.clone()))
            .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
        println!("{family}: peft max |Δlogit| {peft:.2e}, merged weights max |Δ| {worst:.2e} ({name})");
        assert!(peft <= 1e-4 * (scale / 20.0).max(1.0), "{family}: peft's logits differ by {peft}");
        assert!(worst <= 1e-5, "{family}: merge_and_unload differs from the hf export by {worst} in {name}");
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(p.path().join("hf/config.json")).unwrap()).unwrap();
        assert_eq!(config["tie_word_embeddings"], false, "{family}: the head's LoRA unties it");
        assert_eq!(config["dtype"], "float32", "{family}: the base's own dtype");
        for f in ["tokenizer.json", "model.safetensors"] {
            assert!(p.path().join("hf").join(f).is_file(), "{family}: {f}");
        }
    }
}

#[test]
fn export_writes_the_asked_dtype_and_shards() {
    let p = project("gpt-neox", "lora");
    assert!(ftexp(p.path(), &["run", "exp.toml"], &[]).status.success());
    let out = export(p.path(), "bf16", &["--dtype", "bf16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tensors = Tensor::read_safetensors(p.path().join("bf16/model.safetensors")).unwrap();
    assert!(tensors.iter().all(|(_, t)| t.kind() == Kind::BFloat16));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("bf16/config.json")).unwrap()).unwrap();
    assert_eq!((config["dtype"].as_str(), config["torch_dtype"].as_str()), (Some("bfloat16"), Some("bfloat16")));

    let out = export(p.path(), "sharded", &["--max-shard-size", "40KB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("sharded/model.safetensors.index.json")).unwrap())
            .unwrap();
    let files: std::collections::BTreeSet<&str> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() > 1, "{files:?}");
    assert!(!p.path().join("sharded/model.safetensors").exists());
    let (diff, scale) = logit_difference(p.path(), "sharded");
    assert!(diff <= 1e-4 * scale.max(1.0), "sharded export differs by {diff}");

    // an existing directory is never overwritten
    let again = export(p.path(), "sharded", &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
}

#[test]
fn adapter_runs_export_only_what_a_hub_checkpoint_can_hold() {
    if !needs(Need::Python) {
        return;
    }
    // trained gates: the prompts act, and a hub checkpoint has no place for them
    let p = project("llama", "adapter_v2");
    assert!(ftexp(p.path(), &["run", "exp.toml"], &[]).status.success());
    let out = export(p.path(), "hf", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("acts through a trained gate") && err.contains("method.kind = \"lora\""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!p.path().join("hf").exists());
    let leftovers: Vec<_> = std::fs::read_dir(p.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // closed gates and no bias on the head: scales and biases fold into the linears, with the bias flags
    for family in ["llama", "gpt-neox", "qwen2", "olmo2"] {
        let p = project(family, "adapter_v2");
        assert!(ftexp(p.path(), &["run", "exp.toml"], &[]).status.success());
        let file = p.path().join("experiments/t/v1/checkpoints/final/trained.safetensors");
        let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .map(
                |(n, t)| {
                    if n.ends_with("adapter_gate") || n == "head.adapter_bias" {
                        (n, t.zeros_like())
                    } else {
                        (n, t)
                    }
                },
            )
            .collect();
        Tensor::write_safetensors(&tensors, &file).unwrap();
        let out = export(p.path(), "hf", &[]);
        if family == "qwen2" {
            let err = stderr(&out);
            assert!(err.contains("layers.0.o") && err.contains("Qwen2 checkpoint cannot hold"), "{err}");
            continue;
        }
        if family == "olmo2" {
            // attention_bias gives q, k, v and o a bias; OLMo 2's MLP has none
            let err = stderr(&out);
            assert!(err.contains("layers.0.mlp.gate") && err.contains("Olmo2 checkpoint cannot hold"), "{err}");
            continue;
        }
        assert!(out.status.success(), "{family}: {}", stderr(&out));
        let (diff, scale) = logit_difference(p.path(), "hf");
        let ids = serde_json::to_string(&IDS).unwrap();
        let hf_dir = p.path().join("hf").display().to_string();
        let transformers = python_difference(&python(&["hf", &hf_dir, &ids], &[])["logits"], &run_logits(p.path()));
        println!("{family} adapter_v2: max |Δlogit| ftexp {diff:.2e}, transformers {transformers:.2e}");
        assert!(diff <= 1e-4 * scale.max(1.0) && transformers <= 1e-4 * (scale / 20.0).max(1.0), "{family}");
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(p.path().join("hf/config.json")).unwrap()).unwrap();
        assert_eq!(config["attention_bias"], true, "{family}");
    }
}

#[test]
fn a_run_exports_when_it_completes_and_a_lora_run_can_be_a_base() {
    let p = project("llama", "lora");
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "export.format=hf", "--set", "export.dtype=fp32"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (diff, scale) = logit_difference(p.path(), "experiments/t/v1/checkpoints/final/model");
    assert!(diff <= 1e-4 * scale.max(1.0), "the export at the end of the run differs by {diff}");
    // … so the LoRA run is the base of another
    let chained = ["run", "exp.toml", "--set", "model.checkpoint=experiment:t", "--set", "name=\"next\""];
    let out = ftexp(p.path(), &chained, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "export.format=peft"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.path().join("experiments/t/v2/checkpoints/final/peft/adapter_config.json").is_file());
    // a LoRA run that exported no hub checkpoint is merged and exported on first use as a base
    assert!(!p.path().join("experiments/t/v2/checkpoints/final/model").exists());
    let chained = ["run", "exp.toml", "--set", "model.checkpoint=experiment:t/v2", "--set", "name=\"later\""];
    let out = ftexp(p.path(), &chained, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("LoRA merged"), "{}", stderr(&out));
    let (diff, scale) = logit_difference_of(p.path(), "experiments/t/v2", "experiments/t/v2/checkpoints/final/model");
    assert!(diff <= 1e-4 * scale.max(1.0), "the first-use export differs by {diff}");
    // formats a method cannot have are config errors, reported before anything runs
    let out = ftexp(p.path(), &["plan", "exp.toml", "--set", "export.format=peft", "--set", "method.kind=full"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`export.format` is \"peft\" but method.kind is \"full\""), "{}", stderr(&out));
}

#[test]
fn an_export_is_a_base_that_evaluates_like_its_run() {
    let p = project("qwen2", "lora");
    assert!(ftexp(p.path(), &["run", "exp.toml"], &[]).status.success());
    assert!(export(p.path(), "hf", &[]).status.success());
    // a new run on the export, same data and seed: its base model is the first run's fine-tuned one
    let on_export =
        ["run", "exp.toml", "--set", "model.checkpoint=hf", "--set", "name=\"again\"", "--set", "train.max_steps=1"];
    let out = ftexp(p.path(), &on_export, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let loss = |args: &[&str]| -> f64 {
        let out = ftexp(p.path(), args, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["loss"].as_f64().unwrap()
    };
    let run = loss(&["eval", "experiments/t/v1", "--json"]);
    let base = loss(&["eval", "experiments/again/v1", "--base", "--json"]);
    assert!((run - base).abs() <= 1e-5 * run.abs().max(1.0), "{run} vs {base}");
}
