//! Fine-tuning: every method on tiny fixtures, the loop's outputs, resume and failure handling.
use std::path::{Path, PathBuf};

use ftexp::config::resolve_with_env;
use ftexp::methods::{build, count};
use ftexp::model::layout;
use ftexp::model::spec::ModelSpec;
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::common::{fixtures, ftexp, stderr, stdout, tree};

fn method(kind: &str, extra: &[&str]) -> ftexp::config::schema::MethodConfig {
    let dir = tree(&[("x.toml", "[model]\ncheckpoint = \"x\"\n[data]\npath = \"d.json\"\n")]);
    let mut sets = vec![format!("method.kind={kind}")];
    sets.extend(extra.iter().map(|s| s.to_string()));
    resolve_with_env(&dir.path().join("x.toml"), &sets, std::iter::empty()).unwrap().config.method
}

#[test]
fn trainable_counts_match_litgpt_for_llama_2_7b() {
    let spec = ModelSpec::from_file(&fixtures().join("hub-configs/llama-2-7b-hf.json")).unwrap();
    assert_eq!(count(&spec, &method("adapter", &[])).trainable, 1_229_760);
    assert_eq!(count(&spec, &method("adapter_v2", &[])).trainable, 4_279_744);
    assert_eq!(count(&spec, &method("lora", &["method.lora_r=8"])).trainable, 4_194_304);
    assert_eq!(count(&spec, &method("full", &[])).trainable, 6_738_415_616);
}

/// litgpt 0.5.9's counts for the same published configs (scripts/litgpt_counts.py), but where litgpt
/// builds Gemma's head apart from its embedding: transformers (and ftexp) tie them, so `full` is
/// transformers' parameter count there.
#[test]
fn trainable_counts_match_litgpt_for_the_newer_families() {
    let table: [(&str, [i64; 4]); 5] = [
        ("qwen3-8b.json", [1_393_728, 4_798_272, 3_833_856, 8_190_735_360]),
        ("gemma-2-9b.json", [1_434_240, 5_949_568, 4_472_832, 9_241_705_984]),
        ("gemma-3-1b-pt.json", [276_576, 1_780_448, 745_472, 999_885_952]),
        ("phi-3-mini-4k-instruct.json", [922_560, 3_217_984, 3_145_728, 3_821_079_552]),
        ("olmo-2-1124-7b.json", [1_229_760, 4_154_304, 4_194_304, 7_298_617_344]),
    ];
    for (file, [adapter, adapter_v2, lora, full]) in table {
        let spec = ModelSpec::from_file(&fixtures().join("hub-configs").join(file)).unwrap();
        let got = ["adapter", "adapter_v2", "lora", "full"].map(|kind| count(&spec, &method(kind, &[])).trainable);
        assert_eq!(got, [adapter, adapter_v2, lora, full], "{file}: adapter, adapter_v2, lora, full");
    }
}

/// A project whose config trains a fixture on repeated small data.
fn project(family: &str, kind: &str, extra: &str) -> tempfile::TempDir {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\nsplit = {{ train = 0.8, val = 0.1, test = 0.1 }}\n[method]\nkind = \"{kind}\"\nlora_dropout = 0.1\nadapter_start_layer = 0\n[train]\nlearning_rate = {lr}\nmax_steps = 12\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 2\neval_interval = 4\neval_iters = 2\nsave_interval = 5\nlog_interval = 1\nweight_decay = 0.01\n{extra}",
        fixtures().join("models").join(family).display(),
        lr = if kind == "adapter" { 0.2 } else { 0.01 }
    );
    crate::common::doubling_project(&config)
}

fn run_dir(p: &Path, v: u32) -> PathBuf {
    p.join(format!("experiments/t/v{v}"))
}

fn metrics(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn step_zero_equals_the_base_model_for_every_method() {
    let ids = Tensor::from_slice(&[3i64, 17, 42, 99, 7, 250]).unsqueeze(0);
    let families =
        ["llama", "falcon-7b-style", "gpt-neox", "qwen2", "llama3", "qwen3", "gemma2", "gemma3", "phi3", "olmo2"];
    for family in families {
        let base = ftexp::model::load(&fixtures().join("models").join(family), Kind::Float, tch::Device::Cpu).unwrap();
        let want = tch::no_grad(|| base.forward(&ids, None));
        for kind in ["full", "lora", "adapter", "adapter_v2"] {
            let p = project(family, kind, "");
            let mut c = resolve_with_env(
                &p.path().join("exp.toml"),
                &["method.lora_mlp=true".into(), "method.lora_head=true".into(), "method.adapter_start_layer=0".into()],
                std::iter::empty(),
            )
            .unwrap()
            .config;
            c.model.checkpoint = fixtures().join("models").join(family).display().to_string();
            let mut built = build(&c).unwrap();
            built.model.training = false;
            let got = tch::no_grad(|| built.model.forward(&ids, None));
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{family} {kind}: step-0 logits differ by {diff}");
            // the shapes `plan` counts are the tensors the model really has
            let mut seen = Vec::new();
            built.model.visit(&mut |n, t| seen.push((n.to_string(), t.size())));
            let mut expected: Vec<(String, Vec<i64>)> = layout::tensors(&built.model.spec, Some(&c.method))
                .iter()
                .map(|t| (t.name(), t.shape.clone()))
                .collect();
            seen.sort();
            expected.sort();
            assert_eq!(seen, expected, "{family} {kind}");
            let trainable: i64 = built.trainable.iter().map(|t| t.tensor.numel() as i64).sum();
            assert_eq!(trainable, count(&built.model.spec, &c.method).trainable, "{family} {kind}");
        }
    }
}

#[test]
fn every_method_learns_and_writes_its_outputs() {
    let runs = [
        ("llama", "lora"),
        ("gpt-neox", "adapter"),
        ("falcon-7b-style", "adapter_v2"),
        ("qwen2", "full"),
        ("gemma2", "adapter_v2"),
        ("phi3", "lora"),
        ("olmo2", "full"),
    ];
    for (family, kind) in runs {
        let p = project(family, kind, "");
        let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
        assert!(out.status.success(), "{family} {kind}: {}", stderr(&out));
        let dir = run_dir(p.path(), 1);
        let rows = metrics(&dir);
        assert_eq!(rows[0].join(","), "step,epoch,iter,tokens,lr,train_loss,val_loss,tokens_per_s,elapsed_s");
        assert_eq!(rows.len(), 13, "one row per step");
        let steps: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
        assert_eq!(steps, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]);
        let with_val: Vec<&str> = rows[1..].iter().filter(|r| !r[6].is_empty()).map(|r| r[0].as_str()).collect();
        assert_eq!(with_val, ["4", "8", "12"], "{family} {kind}: evals every 4 steps");
        assert_eq!(rows[2][2], "4", "iter counts micro-batches: 2 per step");
        let loss = |r: &Vec<String>| r[5].parse::<f64>().unwrap();
        let first: f64 = rows[1..4].iter().map(loss).sum::<f64>() / 3.0;
        let last: f64 = rows[10..].iter().map(loss).sum::<f64>() / 3.0;
        assert!(last < first * 0.9, "{family} {kind}: loss did not fall ({first} → {last})");
        let ckpts: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(ckpts, ["final", "step-000005", "step-000010"]);
        let png = std::fs::read(dir.join("loss.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 900);
        let run: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["status"], "completed");
        assert!(run["results"]["test_loss"].as_f64().is_some() && run["results"]["final_val_loss"].as_f64().is_some());
        assert_eq!(run["data"]["split_sizes"]["train"], 32);
        let trained = Tensor::read_safetensors(dir.join("checkpoints/final/trained.safetensors")).unwrap();
        let n: i64 = trained.iter().map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(Some(n), run["parameters"]["trainable"].as_i64(), "only trained tensors are saved");
    }
}

#[test]
fn resume_after_sigkill_gives_the_same_metrics() {
    let p = project("llama", "lora", "");
    let full = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(full.status.success(), "{}", stderr(&full));
    // Run again and kill it once the step-5 checkpoint exists.
    let mut child = std::process::Command::new(crate::common::BIN)
        .current_dir(p.path())
        .args(["run", "exp.toml", "--set", "train.max_steps=12"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = run_dir(p.path(), 2).join("checkpoints/step-000005/state.json");
    crate::common::wait_until("the step-5 checkpoint", || ckpt.exists() || child.try_wait().unwrap().is_some());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ckpt.exists(), "the step-5 checkpoint was written");
    assert!(!run_dir(p.path(), 2).join("checkpoints/final").exists(), "the run was killed before it finished");
    let killed: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir(p.path(), 2).join("run.json")).unwrap()).unwrap();
    assert_eq!(killed["status"], "running", "a killed run could not mark itself");
    let resumed = ftexp(p.path(), &["resume", "experiments/t"], &[]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stdout(&resumed).contains("resuming"), "{}", stdout(&resumed));
    let (a, b) = (metrics(&run_dir(p.path(), 1)), metrics(&run_dir(p.path(), 2)));
    assert_eq!(a.len(), b.len());
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra[..7], rb[..7], "all but the timing columns");
    }
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir(p.path(), 2).join("run.json")).unwrap()).unwrap();
    assert_eq!(run["status"], "completed");
}

#[test]
fn a_diverging_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let p = project("llama", "full", "max_grad_norm = 0.0\n");
    let out = ftexp(
        p.path(),
        &[
            "run",
            "exp.toml",
            "--set",
            "train.learning_rate=1e6",
            "--set",
            "train.warmup_iters=0",
            "--set",
            "train.save_interval=1",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the training loss became") && err.contains("lower train.learning_rate"), "{err}");
    assert!(err.contains("last good checkpoint is"), "{err}");
    let dir = run_dir(p.path(), 1);
    let run: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["status"], "failed");
    assert!(dir.join("checkpoints/step-000001/trained.safetensors").exists());
}

#[test]
fn an_adapter_start_past_the_last_layer_is_refused() {
    let p = project("gpt-neox", "adapter", "");
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "method.adapter_start_layer=2"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("method.adapter_start_layer = 2 but"), "{}", stderr(&out));
}

#[test]
fn the_seed_falcon_config_runs_on_cpu_with_a_tiny_falcon() {
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/falcon7b-adapter.toml");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo/alpaca.json");
    let sets = [
        format!("model.checkpoint={}", fixtures().join("models/falcon-7b-style").display()),
        "model.device=cpu".into(),
        "model.precision=32-true".into(),
        format!("data.path={}", data.display()),
        "data.max_seq_length=48".into(),
        "data.prompt_style=none".into(),
        "method.adapter_start_layer=1".into(),
        "train.max_steps=3".into(),
        "train.batch_size=8".into(),
        "train.micro_batch_size=4".into(),
    ];
    let mut args = vec!["run".to_string(), config.display().to_string()];
    for s in &sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ftexp(dir.path(), &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = dir.path().join("experiments/falcon7b-adapter/v1");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("kind = \"adapter_v2\"") && saved.contains("batch_size = 8"), "{saved}");
    assert_eq!(metrics(&run).len(), 4);
}

#[test]
fn bf16_mixed_keeps_trainable_weights_in_fp32() {
    // Full fine-tuning too: its embedding trains in fp32 while the blocks compute in bf16.
    for kind in ["lora", "full"] {
        bf16_mixed_run_and_generate(kind);
    }
}

fn bf16_mixed_run_and_generate(kind: &str) {
    let p = project("llama", kind, "");
    let out =
        ftexp(p.path(), &["run", "exp.toml", "--set", "model.precision=bf16-mixed", "--set", "train.max_steps=3"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let trained = Tensor::read_safetensors(run_dir(p.path(), 1).join("checkpoints/final/trained.safetensors")).unwrap();
    assert!(trained.iter().all(|(_, t)| t.kind() == Kind::Float));
    let dir = run_dir(p.path(), 1).display().to_string();
    let args = ["generate", "--checkpoint", &dir, "--prompt", "Double 3.", "--max-new-tokens", "4", "--json"];
    let out = ftexp(p.path(), &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let ids = json["ids"].as_array().unwrap();
    assert!((1..=4).contains(&ids.len()), "{json}");
    let vocab = ModelSpec::from_file(&fixtures().join("models/llama/config.json")).unwrap().vocab_size;
    assert!(ids.iter().all(|id| id.as_i64().is_some_and(|id| (0..vocab).contains(&id))), "{json}");
    let again: Value = serde_json::from_str(stdout(&ftexp(p.path(), &args, &[])).trim()).unwrap();
    assert_eq!(again["ids"], json["ids"], "greedy decoding with bf16 weights is deterministic");
}

#[test]
fn a_run_answers_with_its_template_and_evaluates_its_splits() {
    let p = project("llama", "lora", "");
    assert!(ftexp(p.path(), &["run", "exp.toml"], &[]).status.success());
    let dir = run_dir(p.path(), 1).display().to_string();
    let out = ftexp(p.path(), &["eval", &dir, "--split", "test", "--generate", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["samples"], 4);
    assert!(json["loss"].as_f64().unwrap() > 0.0);
    assert_eq!(json["exact_match"]["samples"], 4);
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir(p.path(), 1).join("run.json")).unwrap()).unwrap();
    assert_eq!(
        run["evaluations"]["test"]["exact_match"], json["exact_match"]["rate"],
        "eval results are kept for `report`"
    );
    let base = ftexp(p.path(), &["eval", &dir, "--base", "--json"], &[]);
    let base: Value = serde_json::from_str(&stdout(&base)).unwrap();
    assert!(base["loss"].as_f64().unwrap() > json["loss"].as_f64().unwrap(), "fine-tuning lowered the test loss");
    let step =
        ftexp(p.path(), &["generate", "--checkpoint", &dir, "--step", "5", "--prompt", "Double 3.", "--json"], &[]);
    assert!(step.status.success(), "{}", stderr(&step));
    // the prompt goes into the run's template ("Q: {instruction}\nA: "), unless --raw
    let tokenizer = ftexp::tokenizer::Tokenizer::from_dir(&fixtures().join("models/llama")).unwrap();
    let step: Value = serde_json::from_str(stdout(&step).trim()).unwrap();
    assert_eq!(step["prompt_tokens"], tokenizer.encode("Q: Double 3.\nA: ", true).unwrap().len());
    let raw = ftexp(p.path(), &["generate", "--checkpoint", &dir, "--raw", "--prompt", "Double 3.", "--json"], &[]);
    let raw: Value = serde_json::from_str(stdout(&raw).trim()).unwrap();
    assert_eq!(raw["prompt_tokens"], tokenizer.encode("Double 3.", true).unwrap().len());
    let missing = ftexp(p.path(), &["generate", "--checkpoint", &dir, "--step", "7", "--prompt", "x"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("no checkpoint step-000007; this run has: step-000005, step-000010, final"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn rerun_reproduces_the_metrics_and_another_seed_changes_them() {
    let p = project("llama", "lora", "");
    assert!(ftexp(p.path(), &["run", "exp.toml", "--set", "train.max_steps=6"], &[]).status.success());
    let first = run_dir(p.path(), 1).display().to_string();
    let again = ftexp(p.path(), &["rerun", &first], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    let other = ftexp(p.path(), &["rerun", &first, "--seed", "99"], &[]);
    assert!(other.status.success(), "{}", stderr(&other));
    let (a, b, c) = (metrics(&run_dir(p.path(), 1)), metrics(&run_dir(p.path(), 2)), metrics(&run_dir(p.path(), 3)));
    assert_eq!(a.len(), b.len());
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra[..7], rb[..7], "same seed, same numbers but timing");
    }
    assert_ne!(a[1][5], c[1][5], "another seed, another loss");
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir(p.path(), 2).join("run.json")).unwrap()).unwrap();
    assert!(run["rerun_of"].as_str().unwrap().ends_with("experiments/t/v1"));
    let seed3 = std::fs::read_to_string(run_dir(p.path(), 3).join("config.toml")).unwrap();
    assert!(seed3.contains("seed = 99"));
    let bad = ftexp(p.path(), &["rerun", "experiments/t"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("experiments/t: not a run directory (no config.toml)"), "{}", stderr(&bad));
    assert!(!run_dir(p.path(), 4).exists(), "nothing started");
}

#[test]
fn a_model_pretrained_from_scratch_is_the_base_of_a_fine_tune() {
    let corpus: String =
        (0..400).map(|i| format!("Shelf {} holds {} jars of honey.\n\n", i % 9, (i * 7) % 13)).collect();
    let rows: Vec<Value> = (0..40).map(|i| serde_json::json!({"instruction": format!("Jars on shelf {}?", i % 9), "output": format!("{}", i % 13)})).collect();
    let pre = "name = \"pre\"\n[model]\ninit = \"random\"\ntokenizer = \"tok\"\ndevice = \"cpu\"\n[model.architecture]\nmodel_type = \"llama\"\nhidden_size = 32\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 64\n[data]\nformat = \"text\"\npath = \"corpus.txt\"\nmax_seq_length = 32\nsplit = { train = 0.9, val = 0.1, test = 0.0 }\n[method]\nkind = \"full\"\n[train]\nlearning_rate = 3e-3\nmax_steps = 8\nbatch_size = 4\nmicro_batch_size = 4\nwarmup_iters = 1\neval_interval = 4\neval_iters = 2\n";
    let fine = "name = \"fine\"\n[model]\ncheckpoint = \"experiment:pre\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"plain\"\nmax_seq_length = 32\n[method]\nkind = \"adapter_v2\"\nadapter_start_layer = 1\n[train]\nmax_steps = 4\nbatch_size = 4\nmicro_batch_size = 2\neval_interval = 2\neval_iters = 1\n";
    let p = tree(&[
        ("corpus.txt", &corpus),
        ("pre.toml", pre),
        ("fine.toml", fine),
        ("rows.json", &serde_json::to_string(&rows).unwrap()),
    ]);
    let early = ftexp(p.path(), &["run", "fine.toml"], &[]);
    assert_eq!(early.status.code(), Some(2));
    assert!(stderr(&early).contains("no completed run of \"pre\""), "{}", stderr(&early));
    let tok = ftexp(p.path(), &["tokenizer", "--corpus", "corpus.txt", "--vocab-size", "300", "--out", "tok"], &[]);
    assert!(tok.status.success(), "{}", stderr(&tok));
    let plan = ftexp(p.path(), &["plan", "pre.toml", "--json"], &[]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let out = ftexp(p.path(), &["run", "pre.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let model = p.path().join("experiments/pre/v1/checkpoints/final/model");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(model.join(f).is_file(), "{f} exported");
    }
    // the export is an ordinary checkpoint: it loads and generates
    let gen = ftexp(
        p.path(),
        &[
            "generate",
            "--checkpoint",
            &model.display().to_string(),
            "--prompt",
            "Shelf 3",
            "--max-new-tokens",
            "5",
            "--json",
        ],
        &[],
    );
    assert!(gen.status.success(), "{}", stderr(&gen));
    let out = ftexp(p.path(), &["run", "fine.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("experiments/fine/v1/run.json")).unwrap()).unwrap();
    assert!(run["base"]["dir"].as_str().unwrap().ends_with("experiments/pre/v1/checkpoints/final/model"));
    assert_eq!(run["base"]["checkpoint"], "experiment:pre");
}

#[test]
fn sweep_points_run_in_parallel_with_their_tags() {
    let p = project("llama", "lora", "");
    let points = ftexp(
        p.path(),
        &[
            "sweep",
            "exp.toml",
            "--grid",
            "train.learning_rate=1e-2,3e-3 method.lora_r=2,4",
            "--seeds",
            "1 2",
            "--print-points",
        ],
        &[],
    );
    assert!(points.status.success(), "{}", stderr(&points));
    let lines: Vec<String> = stdout(&points).lines().map(String::from).collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(
        lines[0],
        "--set 'train.learning_rate=1e-2' --set 'method.lora_r=2' --seed 1 --tag 'learning_rate=1e-2,lora_r=2'"
    );
    let bad = ftexp(p.path(), &["sweep", "exp.toml", "--grid", "method.lora_rank=2,4", "--print-points"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("did you mean `method.lora_r`?"), "{}", stderr(&bad));

    let empty = ftexp(p.path(), &["sweep", "exp.toml", "--grid", "method.lora_r=", "--print-points"], &[]);
    assert_eq!(empty.status.code(), Some(2));
    assert!(stderr(&empty).contains("method.lora_r=: no values"), "{}", stderr(&empty));
    let mk = ftexp(
        p.path(),
        &[
            "sweep",
            "exp.toml",
            "--grid",
            "train.learning_rate=1e-2,3e-3 method.lora_r=2,4",
            "--seeds",
            "7",
            "--makefile",
        ],
        &[],
    );
    assert!(mk.status.success(), "{}", stderr(&mk));
    std::fs::write(p.path().join("sweep.mk"), stdout(&mk)).unwrap();
    let make = std::process::Command::new("make")
        .current_dir(p.path())
        .args(["-j", "2", "-f", "sweep.mk"])
        .env("FTEXP_TRAIN__MAX_STEPS", "3")
        .output()
        .unwrap();
    assert!(make.status.success(), "{}", String::from_utf8_lossy(&make.stderr));
    let mut tags: Vec<String> = (1..=4)
        .map(|v| {
            let run: Value =
                serde_json::from_str(&std::fs::read_to_string(run_dir(p.path(), v).join("run.json")).unwrap()).unwrap();
            assert_eq!(run["status"], "completed");
            run["tag"].as_str().unwrap().to_string()
        })
        .collect();
    tags.sort();
    let want = [
        "learning_rate=1e-2,lora_r=2",
        "learning_rate=1e-2,lora_r=4",
        "learning_rate=3e-3,lora_r=2",
        "learning_rate=3e-3,lora_r=4",
    ];
    assert_eq!(tags, want);
    assert!(!run_dir(p.path(), 5).exists(), "four points, four distinct versions");
}

#[test]
fn bench_times_the_steps_a_run_takes_and_writes_no_experiment() {
    let p = project("llama", "lora", "");
    let out = ftexp(p.path(), &["bench", "exp.toml", "--set", "train.max_steps=3", "--steps", "3", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!p.path().join("experiments").exists(), "bench writes no experiment");
    let bench: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (bench["steps"].as_u64(), bench["micro_batches"].as_u64(), bench["samples"].as_u64()),
        (Some(3), Some(6), Some(12))
    );
    assert!(bench["tokens_per_s"].as_f64().unwrap() > 0.0 && bench["peak_rss_mib"].as_f64().unwrap() > 0.0);
    // the head's chunk size is a benchmark knob: one position a chunk, or none, trains the same
    for bytes in ["1", "0"] {
        let args =
            ["bench", "exp.toml", "--set", "train.max_steps=3", "--steps", "3", "--json", "--head-chunk-bytes", bytes];
        let out = ftexp(p.path(), &args, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let other: Value = serde_json::from_str(&stdout(&out)).unwrap();
        for (a, b) in other["losses"].as_array().unwrap().iter().zip(bench["losses"].as_array().unwrap()) {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-5 * b.abs(), "--head-chunk-bytes {bytes}: loss {a} vs {b}");
        }
    }
    // the same steps as `ftexp run`: same samples, same tokens, same losses
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "train.max_steps=3"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = metrics(&run_dir(p.path(), 1));
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let step3 = rows.iter().find(|r| r[0] == "3").unwrap();
    assert_eq!(step3[col("tokens")].parse::<u64>().unwrap(), bench["real_tokens"].as_u64().unwrap());
    for (step, loss) in bench["losses"].as_array().unwrap().iter().enumerate() {
        let row = rows.iter().find(|r| r[0] == (step + 1).to_string()).unwrap();
        let logged: f64 = row[col("train_loss")].parse().unwrap();
        assert!((logged - loss.as_f64().unwrap()).abs() < 1e-5, "step {}: {logged} vs {loss}", step + 1);
    }
}

#[test]
fn bench_on_random_weights_needs_only_the_checkpoint_config_json() {
    let config = std::fs::read_to_string(fixtures().join("hub-configs/pythia-14m.json")).unwrap();
    let exp = "[model]\ncheckpoint = \"ck\"\ninit = \"random\"\ndevice = \"cpu\"\n[data]\npath = \"absent.json\"\nmax_seq_length = 32\n[method]\nkind = \"adapter_v2\"\n[train]\nbatch_size = 2\nmicro_batch_size = 2\n";
    let p = tree(&[("ck/config.json", &config), ("exp.toml", exp)]);
    let out = ftexp(p.path(), &["bench", "exp.toml", "--synthetic", "--steps", "2", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bench: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(bench["real_tokens"].as_u64(), Some(2 * 2 * 32));
    assert!(bench["data"].as_str().unwrap().starts_with("synthetic"));
    // N(0, 0.02) weights score every token about the same: the loss is close to ln(vocabulary)
    let first = bench["losses"][0].as_f64().unwrap();
    assert!((first - (50304f64).ln()).abs() < 0.5, "{first}");
    let spec = ModelSpec::from_json(&serde_json::from_str(&config).unwrap()).unwrap();
    let want = count(&spec, &method("adapter_v2", &[]));
    assert_eq!(bench["parameters"]["trainable"].as_i64(), Some(want.trainable));
    assert_eq!(bench["parameters"]["total"].as_i64(), Some(want.total));
    // training an adapter on random weights is refused, naming the key to change
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("use method.kind = \"full\""), "{}", stderr(&out));
    // without a config.json the error says where to put one
    std::fs::remove_file(p.path().join("ck/config.json")).unwrap();
    let out = ftexp(p.path(), &["bench", "exp.toml", "--synthetic", "--steps", "1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config.json: not found"), "{}", stderr(&out));
}

/// Runs made before MLP layers had named fields (their tensors `mlp.0` …) and before run.json recorded
/// file sizes and times still load, resume and evaluate the same.
#[test]
fn runs_written_before_named_mlp_fields_still_load() {
    let p = project("llama", "lora", "");
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "method.lora_mlp=true", "--set", "train.max_steps=2"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = run_dir(p.path(), 1);
    let eval = || {
        let out = ftexp(p.path(), &["eval", &dir.display().to_string(), "--json"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["loss"].as_f64().unwrap()
    };
    let before = eval();
    let old =
        |n: &str| n.replace(".mlp.gate.", ".mlp.0.").replace(".mlp.up.", ".mlp.1.").replace(".mlp.down.", ".mlp.2.");
    for file in ["trained.safetensors", "optimizer.safetensors"] {
        let path = dir.join("checkpoints/final").join(file);
        let tensors: Vec<(String, Tensor)> =
            Tensor::read_safetensors(&path).unwrap().into_iter().map(|(n, t)| (old(&n), t)).collect();
        assert!(tensors.iter().any(|(n, _)| n.contains(".mlp.2.")), "{file} has MLP tensors");
        Tensor::write_safetensors(&tensors, &path).unwrap();
    }
    let mut run: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    for record in run["base"]["files"].as_object_mut().unwrap().values_mut() {
        *record = record["sha256"].clone();
    }
    std::fs::write(dir.join("run.json"), run.to_string()).unwrap();
    assert_eq!(eval(), before);
}

#[test]
fn fused_adamw_makes_the_update_of_the_formula() {
    // fp32 tensors take libtorch's fused AdamW; fp64 copies of them take the separate operations. Both
    // must make the same three updates, with and without weight decay.
    use ftexp::methods::Trainable;
    use tch::{Kind, Tensor};
    tch::manual_seed(7);
    let values = [
        Tensor::randn([64, 32], (Kind::Float, tch::Device::Cpu)),
        Tensor::randn([32], (Kind::Float, tch::Device::Cpu)),
    ];
    let make = |kind: Kind| -> Vec<Trainable> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Trainable {
                name: format!("t{i}"),
                tensor: v.to_kind(kind).copy().set_requires_grad(true),
                decays: i == 0,
            })
            .collect()
    };
    let (fused, separate) = (make(Kind::Float), make(Kind::Double));
    let mut opts = [ftexp::train::optimizer::AdamW::new(&fused), ftexp::train::optimizer::AdamW::new(&separate)];
    for step in 0..3 {
        let weights: Vec<Tensor> = values.iter().map(|v| v.randn_like()).collect();
        for (params, opt) in [&fused, &separate].into_iter().zip(opts.iter_mut()) {
            let loss = params
                .iter()
                .zip(&weights)
                .map(|(p, w)| (&p.tensor * w.to_kind(p.tensor.kind())).square().sum(Kind::Double))
                .fold(Tensor::zeros([], (Kind::Double, tch::Device::Cpu)), |a, b| a + b);
            loss.backward();
            opt.step(1e-2 * (step + 1) as f64, 0.1);
        }
    }
    for ((f, s), start) in fused.iter().zip(&separate).zip(&values) {
        let (f, s) = (f.tensor.to_kind(Kind::Double), s.tensor.detach());
        let moved = (&f - start.to_kind(Kind::Double)).abs().max().double_value(&[]);
        let diff = (&f - &s).abs().max().double_value(&[]);
        assert!(moved > 1e-2 && diff < 1e-6, "moved {moved}; fused and separate updates differ by {diff}");
    }
}
