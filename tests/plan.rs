//! `ftexp plan`: the derived numbers, the architecture from config.json alone, and the text form.
use std::path::Path;

use ftexp::model::spec::{Family, ModelSpec};
use serde_json::Value;

use crate::common::{fixtures, ftexp, stdout, tree};

fn spec(name: &str) -> ModelSpec {
    ModelSpec::from_file(&fixtures().join("hub-configs").join(name)).unwrap()
}

#[test]
fn parameter_counts_from_config_json_match_the_published_models() {
    let falcon = spec("falcon-7b-instruct.json");
    assert_eq!((falcon.family, falcon.n_query_groups, falcon.shared_attention_norm), (Family::Falcon, 1, true));
    assert_eq!(falcon.num_params(), 6_921_720_704);
    let llama = spec("llama-2-7b-hf.json");
    assert_eq!(llama.num_params(), 6_738_415_616);
    let falcon40 = spec("falcon-40b.json");
    assert_eq!((falcon40.n_query_groups, falcon40.shared_attention_norm), (8, false));
    assert_eq!(falcon40.num_params(), 41_303_293_952);
    let pythia = spec("pythia-14m.json");
    assert_eq!((pythia.family, pythia.rope.dims), (Family::GptNeox, 8));
    assert_eq!(pythia.num_params(), 14_067_712);
}

fn alpaca_rows(n: usize) -> String {
    let rows: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"instruction": format!("Add {i} and 1."), "input": "", "output": format!("{}", i + 1)}))
        .collect();
    serde_json::to_string(&rows).unwrap()
}

fn falcon_project(with_model: bool) -> tempfile::TempDir {
    let config_json = std::fs::read_to_string(fixtures().join("hub-configs/falcon-7b-instruct.json")).unwrap();
    let mut files = vec![("data/demo/alpaca.json", alpaca_rows(1000))];
    if with_model {
        files.push(("checkpoints/tiiuae/falcon-7b-instruct/config.json", config_json));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    tree(&refs)
}

fn repo_config(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name).display().to_string()
}

#[test]
fn plan_json_for_the_seed_falcon_config() {
    let dir = falcon_project(true);
    let out = ftexp(
        dir.path(),
        &["plan", &repo_config("falcon7b-adapter.toml"), "--json", "--set", "train.eval_interval=2"],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let plan = &json["plan"];
    assert_eq!(plan["data"], serde_json::json!({"records": 1000, "train": 800, "val": 100, "test": 100}));
    assert_eq!(plan["gradient_accumulation_iters"], 32);
    assert_eq!(plan["epoch_size"], 800);
    assert_eq!(plan["steps_per_epoch"], 6, "800 samples ÷ batch 128, rounded down");
    assert_eq!(plan["total_steps"], 30, "5 epochs");
    assert_eq!(plan["warmup_steps"], 30, "warmup_iters 100 capped at the total");
    assert_eq!(plan["eval_steps"], serde_json::json!([2, 4, 6, 8, 10]));
    assert_eq!(plan["save_steps"], serde_json::json!([]));
    assert_eq!(plan["max_tokens_per_step"], 128 * 512);
    assert_eq!(plan["precision"], "bf16-true");
    let arch = &plan["architecture"];
    assert_eq!(arch["family"], "falcon");
    assert_eq!(
        (arch["layers"].as_i64(), arch["heads"].as_i64(), arch["query_groups"].as_i64()),
        (Some(32), Some(71), Some(1))
    );
    assert_eq!((arch["hidden_size"].as_i64(), arch["vocab_size"].as_i64()), (Some(4544), Some(65024)));
    assert_eq!(arch["parameters"], 6_921_720_704_i64);
    assert_eq!(json["config"]["method"]["kind"], "adapter_v2");
    assert_eq!(json["sources"]["train.eval_interval"], "--set train.eval_interval=2");
    assert!(json["sources"]["method.kind"].as_str().unwrap().ends_with("configs/base/adapter_v2.toml:3"));
}

#[test]
fn plan_text_shows_sources_and_says_what_to_do_without_the_model() {
    let dir = falcon_project(false);
    let out = ftexp(
        dir.path(),
        &["plan", &repo_config("falcon7b-adapter.toml"), "--set", "train.max_steps=12"],
        &[("FTEXP_SEED", "5")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("seed = 5"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("seed = 5") && l.ends_with("# env FTEXP_SEED")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("max_steps = 12") && l.ends_with("# --set train.max_steps=12")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("min_lr = 0.0") && l.ends_with("# default")), "{text}");
    assert!(text.contains("optimizer steps in total:   12 (train.max_steps)"), "{text}");
    assert!(text.contains("tiiuae/falcon-7b-instruct is not downloaded yet"), "{text}");
}

#[test]
fn a_run_records_the_plan_ftexp_plan_prints() {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\n[train]\nlearning_rate = 0.01\nepochs = 2\nbatch_size = 4\nmicro_batch_size = \"auto\"\nwarmup_iters = 2\neval_interval = 4\neval_iters = 2\nsave_interval = 5\n",
        fixtures().join("models/llama").display()
    );
    let p = crate::common::doubling_project(&config);
    let before = ftexp(p.path(), &["plan", "exp.toml", "--json"], &[]);
    let before: Value = serde_json::from_str(&stdout(&before)).unwrap();
    assert_eq!(before["plan"]["data_prepared"], false, "no cache yet: the file's records are counted");
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("experiments/t/v1/run.json")).unwrap()).unwrap();
    let after = ftexp(p.path(), &["plan", "exp.toml", "--json"], &[]);
    let after: Value = serde_json::from_str(&stdout(&after)).unwrap();
    assert_eq!(info["plan"], after["plan"], "run.json holds the plan `ftexp plan --json` prints");
    let plan = &info["plan"];
    assert_eq!(plan["data_prepared"], true);
    let train = plan["data"]["train"].as_u64().unwrap();
    assert_eq!(plan["total_steps"].as_u64().unwrap(), 2 * (train / 4), "2 epochs of the prepared train split");
    assert_eq!(info["results"]["steps"], plan["total_steps"]);
    assert_eq!(plan["micro_batch_size"], info["micro_batch"]["chosen"]);
    assert_eq!(plan["schedule"]["total"], plan["total_steps"]);
    assert_eq!(plan["strategies"]["sharding"], "none");
}

/// A Llama-2-7B config (config.json only) trained in fp32 on the CPU, with `data` as its data set.
fn llama7b_fp32_project() -> tempfile::TempDir {
    let config_json = std::fs::read_to_string(fixtures().join("hub-configs/llama-2-7b-hf.json")).unwrap();
    let config = "name = \"big\"\n[model]\ncheckpoint = \"base\"\ndevice = \"cpu\"\nprecision = \"32-true\"\n[data]\npath = \"rows.json\"\n[method]\nkind = \"lora\"\n";
    tree(&[("exp.toml", config), ("base/config.json", &config_json), ("rows.json", &alpaca_rows(40))])
}

#[test]
fn the_plan_renders_whatever_the_memory_and_check_turns_the_verdict_into_an_exit_code() {
    let p = llama7b_fp32_project();
    for (memory, verdict) in [("8GB", "fits: NO"), ("1000GB", "fits: yes")] {
        let set = format!("model.device_memory={memory}");
        let out = ftexp(p.path(), &["plan", "exp.toml", "--set", &set], &[]);
        assert!(out.status.success(), "{memory}: {}", crate::common::stderr(&out));
        let text = stdout(&out);
        assert!(text.lines().any(|l| l.starts_with(verdict)), "{memory}: {text}");
        assert!(text.lines().any(|l| l.starts_with("total:")), "{text}");
        assert!(text.contains("parameters:                 6,738,415,616"), "{text}");
        let out = ftexp(p.path(), &["plan", "exp.toml", "--json", "--set", &set], &[]);
        assert!(out.status.success(), "{}", crate::common::stderr(&out));
        let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["plan"]["fits"], memory == "1000GB", "{memory}");
        assert!(json["plan"]["memory"]["total"].as_u64().unwrap() > 25 << 30, "fp32 weights alone are 25 GiB");
    }
    let out = ftexp(p.path(), &["plan", "exp.toml", "--check", "--set", "model.device_memory=8GB"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("fits: NO"), "the plan is printed first");
    assert!(crate::common::stderr(&out).contains("does not fit"), "{}", crate::common::stderr(&out));
    // A tiny model that fits passes the check.
    let config = format!(
        "name = \"t\"\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\ndevice_memory = \"1000GB\"\n[data]\npath = \"rows.json\"\n[method]\nkind = \"lora\"\n",
        fixtures().join("models/llama").display()
    );
    let small = tree(&[("exp.toml", &config), ("rows.json", &alpaca_rows(40))]);
    let out = ftexp(small.path(), &["plan", "exp.toml", "--check"], &[]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
}

#[test]
fn cpu_processes_are_planned_together_and_refused_above_the_cores() {
    let config = format!(
        "name = \"t\"\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\n[train]\nbatch_size = 65536\n",
        fixtures().join("models/llama").display()
    );
    let p = tree(&[("exp.toml", &config), ("rows.json", &alpaca_rows(40))]);
    let cores = std::thread::available_parallelism().unwrap().get();
    let many = "train.devices=65536";
    let out = ftexp(p.path(), &["plan", "exp.toml", "--json", "--set", many, "--set", "model.device_memory=64GB"], &[]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let plan = &serde_json::from_str::<Value>(&stdout(&out)).unwrap()["plan"];
    let each = plan["memory"]["total"].as_u64().unwrap();
    assert_eq!(plan["processes_memory"].as_u64().unwrap(), each * 65536, "the processes share the machine");
    assert_eq!(plan["fits"], false, "65,536 copies do not fit 64 GB");
    let refusal = plan["refusals"][0].as_str().unwrap();
    assert!(refusal.contains(&format!("this machine has {cores} core")), "{refusal}");
    assert!(refusal.contains("train.allow_oversubscribe = true"), "{refusal}");
    // A run refuses before it starts any process or writes anything.
    let over = format!("train.devices={}", cores + 1);
    let batch = format!("train.batch_size={}", cores + 1);
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", &over, "--set", &batch], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(crate::common::stderr(&out).contains("lower train.devices to at most"), "{}", crate::common::stderr(&out));
    assert!(!p.path().join("experiments").exists());
    // Allowed, the plan has nothing to refuse.
    let allow = "train.allow_oversubscribe=true";
    let out = ftexp(p.path(), &["plan", "exp.toml", "--json", "--set", &over, "--set", &batch, "--set", allow], &[]);
    let plan = &serde_json::from_str::<Value>(&stdout(&out)).unwrap()["plan"];
    assert_eq!(plan["refusals"], serde_json::json!([]));
    assert_eq!(plan["local_processes"], cores as u64 + 1);
}

#[test]
fn a_plan_that_does_not_fit_lists_what_would_cheapest_first_and_never_what_the_config_has() {
    let dir = falcon_project(true);
    let config = repo_config("falcon7b-adapter.toml");
    let plan_json = |sets: &[&str]| -> Value {
        let mut args = vec!["plan", config.as_str(), "--json"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = ftexp(dir.path(), &args, &[]);
        assert!(out.status.success(), "{}", crate::common::stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["plan"].clone()
    };
    // The seed's Falcon-7B adapter_v2 at micro-batch 4 on a 24 GB card: checkpointing alone fits.
    let plan = plan_json(&["model.device_memory=24GB"]);
    assert_eq!(plan["fits"], false);
    let advice = plan["advice"].as_array().unwrap();
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert_eq!(advice[0]["settings"], serde_json::json!(["train.activation_checkpointing = true"]));
    assert_eq!(advice[0]["fits"], true);
    let checkpointed = plan_json(&["model.device_memory=24GB", "train.activation_checkpointing=true"]);
    assert_eq!(checkpointed["memory"]["total"], advice[0]["total"], "the advice is the plan of its settings");
    assert_eq!(checkpointed["fits"], true);
    // On 15 GB with checkpointing already set, the ladder goes on from there.
    let plan = plan_json(&["model.device_memory=15GB", "train.activation_checkpointing=true"]);
    let settings: Vec<String> = plan["advice"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["settings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()))
        .collect();
    assert!(!settings.iter().any(|s| s.starts_with("train.activation_checkpointing")), "{settings:?}");
    assert_eq!(settings.first().map(String::as_str), Some("train.micro_batch_size = 1"), "{settings:?}");
    assert_eq!(plan["advice"].as_array().unwrap().last().unwrap()["fits"], true);
    // 4-bit NF4 fits the seed's run on 16 GB at its micro-batch, and "auto" turns checkpointing on at 24 GB.
    assert_eq!(plan_json(&["model.device_memory=16GB", "model.quantize=nf4"])["fits"], true);
    let auto = plan_json(&["model.device_memory=24GB", "train.activation_checkpointing=auto"]);
    assert_eq!(auto["strategies"]["activation_checkpointing"], true);
    assert!(auto["strategies"]["activation_checkpointing_reason"].as_str().unwrap().starts_with("on: without it"));
    // `model.quantize = "auto"` takes the first of none, int8, nf4 that fits 90%, and says why.
    for (memory, chosen) in [("40GB", "none"), ("16GB", "int8"), ("8GB", "nf4")] {
        let plan = plan_json(&[&format!("model.device_memory={memory}"), "model.quantize=auto"]);
        assert_eq!(plan["strategies"]["quantization"], chosen, "{memory}");
        assert!(plan["strategies"]["quantization_reason"].as_str().unwrap().starts_with(chosen), "{memory}");
        assert_eq!((plan["fits"].as_bool(), plan["refusals"].as_array().unwrap().len()), (Some(true), 0), "{memory}");
    }
    let nothing = plan_json(&["model.device_memory=2GB", "model.quantize=auto"]);
    assert!(nothing["refusals"][0].as_str().unwrap().contains("the plan's closest option is nf4"), "{nothing}");
    // The text keeps its `total:` and `fits:` lines, then the advice.
    let out = ftexp(dir.path(), &["plan", &config, "--set", "model.device_memory=24GB"], &[]);
    let text = stdout(&out);
    let fits = text.lines().position(|l| l.starts_with("fits: NO")).expect("a fits line");
    assert!(text.lines().any(|l| l.starts_with("total:")), "{text}");
    assert_eq!(text.lines().nth(fits + 1), Some("to fit, change (each line planned with the ones above it):"));
}

/// The plan of a published Gemma 2 config lists the family's keys it skipped as harmless, and its
/// JSON (so run.json) holds them.
#[test]
fn the_plan_lists_the_config_json_keys_skipped_as_harmless() {
    let config_json = std::fs::read_to_string(fixtures().join("hub-configs/gemma-2-9b.json")).unwrap();
    let body = "[model]\ncheckpoint = \"checkpoints/google/gemma-2-9b\"\n[data]\npath = \"rows.json\"\n";
    let rows = alpaca_rows(100);
    let dir =
        tree(&[("exp.toml", body), ("rows.json", &rows), ("checkpoints/google/gemma-2-9b/config.json", &config_json)]);
    let out = ftexp(dir.path(), &["plan", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    let want = "harmless config.json keys:  cache_implementation = \"hybrid\", hidden_act = \"gelu_pytorch_tanh\", sliding_window_size = 4096 (skipped)";
    assert!(text.contains(want), "{text}");
    let out = ftexp(dir.path(), &["plan", "exp.toml", "--json"], &[]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let skipped = plan["plan"]["architecture"]["skipped_config_keys"].as_array().map(Vec::len);
    assert_eq!(skipped, Some(3), "{plan}");
}
