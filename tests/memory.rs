//! The memory plan: its parts against hand-computed byte counts, against memory measured on the CPU,
//! `micro_batch_size = "auto"` under a small `model.device_memory`, and a run that runs out of memory.
use std::path::Path;

use serde_json::Value;

use crate::common::{doubling_project, fixtures, ftexp, json_file, stderr, stdout, tree};

fn config(extra: &str) -> String {
    format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\n{extra}",
        fixtures().join("models/llama").display()
    )
}

fn plan_json(dir: &Path, sets: &[&str]) -> Value {
    let mut args = vec!["plan", "exp.toml", "--json"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = ftexp(dir, &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str::<Value>(&stdout(&out)).unwrap()["plan"].clone()
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a whole number: {v}"))
}

#[test]
fn plan_parts_equal_hand_computed_bytes() {
    let p = doubling_project(&config(
        "[method]\nkind = \"lora\"\nlora_r = 4\nlora_query = true\nlora_key = false\nlora_value = true\nlora_projection = false\nlora_mlp = false\nlora_head = false\n[train]\nbatch_size = 4\nmicro_batch_size = 2\n",
    ));
    // The llama fixture: vocabulary 448, width 64, 3 layers, 4 heads of 16, 2 key/value heads, MLP 160.
    let (v, h, layers, kv, ff) = (448u64, 64u64, 3u64, 32u64, 160u64);
    let per_layer = 2 * h + h * h + 2 * kv * h + h * h + 3 * ff * h;
    let base = v * h + layers * per_layer + h + v * h;
    let lora = layers * ((4 * h + h * 4) + (4 * h + kv * 4));
    for (kind, trainable) in [("lora", lora), ("full", base)] {
        let plan = plan_json(p.path(), &[&format!("method.kind={kind}")]);
        let m = &plan["memory"];
        let total = if kind == "full" { base } else { base + lora };
        assert_eq!(int(&m["weights"]), 4 * total, "{kind}: fp32 weights");
        assert_eq!(int(&m["gradients"]), 4 * trainable, "{kind}: fp32 gradients");
        assert_eq!(int(&m["optimizer"]), 8 * trainable, "{kind}: two fp32 moments");
        let per_layer: Vec<u64> = m["activations_per_layer"].as_array().unwrap().iter().map(int).collect();
        assert_eq!(per_layer.len(), layers as usize);
        // The first layer of lora keeps less: its input needs no gradient.
        assert!(per_layer[1..].iter().all(|a| *a == per_layer[1]), "{per_layer:?}");
        assert!(0 < per_layer[0] && per_layer[0] <= per_layer[1], "{per_layer:?}");
        let parts = ["weights", "gradients", "optimizer", "activations", "lm_head", "working", "overhead"];
        assert_eq!(parts.iter().map(|k| int(&m[*k])).sum::<u64>(), int(&m["total"]));
        // Every position of a micro-batch scored: three fp32 copies of 2 × 64 positions × 448 scores.
        assert_eq!(int(&m["lm_head"]), 3 * 4 * 2 * 64 * v, "{kind}");
        assert_eq!(plan["fits"], Value::Bool(true), "{kind}");
    }
}

/// A Llama, and a Gemma 2 (norms after attention and the MLP, soft-capped attention, which keeps its
/// scores), of width 256 and 4 layers on random weights (the fixture tokenizer), bench on synthetic
/// full-length samples; measured against the plan of the same micro-batches.
#[test]
fn measured_memory_on_the_cpu_is_within_the_plan() {
    for (family, method) in ["llama", "gemma2"].into_iter().flat_map(|f| ["full", "lora", "adapter_v2"].map(|m| (f, m)))
    {
        let body = format!(
            "name = \"m\"\n[model]\ncheckpoint = \"{0}\"\ntokenizer = \"{0}\"\ninit = \"random\"\ndevice = \"cpu\"\n[model.architecture]\nmodel_type = \"{family}\"\nhidden_size = 256\nnum_hidden_layers = 4\nnum_attention_heads = 8\nnum_key_value_heads = 4\nintermediate_size = 688\nhead_dim = 32\n[data]\npath = \"data.json\"\nmax_seq_length = 256\n[method]\nkind = \"full\"\n[train]\nbatch_size = 8\nmicro_batch_size = 4\n",
            fixtures().join("models/llama").display()
        );
        let p = tree(&[("exp.toml", &body), ("data.json", "[]")]);
        let set = format!("method.kind={method}");
        let args = ["bench", "exp.toml", "--synthetic", "--steps", "2", "--json", "--set", &set];
        // glibc keeps freed blocks below its (growing) mmap threshold resident; a fixed threshold returns
        // them, so resident memory follows the tensors alive.
        let out = ftexp(p.path(), &args, &[("MALLOC_MMAP_THRESHOLD_", "65536")]);
        assert!(out.status.success(), "{}", stderr(&out));
        let d: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let m = &d["memory_plan"];
        let mib = |v: &Value| int(v) as f64 / 1048576.0;
        let planned = mib(&m["total"]) - mib(&m["weights"]);
        let rss = d["training_rss_mib"].as_f64().unwrap();
        assert!(
            (0.75..1.25).contains(&(planned / rss)),
            "{family} {method}: plan {planned:.1} MiB, resident {rss:.1} MiB"
        );
        let tensors = d["cpu_tensor_peak_mib"].as_f64().expect("ftexp's CPU allocator counts tensors");
        let planned_tensors = planned - mib(&m["overhead"]);
        assert!(
            (0.9..1.1).contains(&(planned_tensors / tensors)),
            "{family} {method}: plan {planned_tensors:.1} MiB of tensors, counted {tensors:.1} MiB"
        );
    }
}

fn metrics_columns(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    // step, epoch, iter, tokens, lr, train_loss, val_loss: all but the timings.
    text.lines().map(|l| l.split(',').take(7).map(String::from).collect()).collect()
}

#[test]
fn auto_picks_a_smaller_micro_batch_when_memory_is_small_and_trains_the_same() {
    let p = doubling_project(&config(
        "[method]\nkind = \"lora\"\n[train]\nbatch_size = 8\nmicro_batch_size = \"auto\"\nmax_steps = 4\neval_interval = 2\n",
    ));
    let total =
        |micro: &str| int(&plan_json(p.path(), &[&format!("train.micro_batch_size={micro}")])["memory"]["total"]);
    let (four, eight) = (total("4"), total("8"));
    assert!(four < eight);
    // 90% of this holds the plan of 4 but not of 8.
    let memory = format!("model.device_memory={}B", ((four + eight) / 2) as f64 / 0.9);
    let plan = plan_json(p.path(), &[&memory]);
    assert_eq!(int(&plan["micro_batch_size"]), 4, "{plan}");
    assert_eq!(int(&plan["gradient_accumulation_iters"]), 2);
    let auto = ftexp(p.path(), &["run", "exp.toml", "--set", &memory], &[]);
    assert!(auto.status.success(), "{}", stderr(&auto));
    assert!(stdout(&auto).contains("micro_batch_size = \"auto\": 4"), "{}", stdout(&auto));
    let fixed = ftexp(p.path(), &["run", "exp.toml", "--set", "train.micro_batch_size=4"], &[]);
    assert!(fixed.status.success(), "{}", stderr(&fixed));
    let (v1, v2) = (p.path().join("experiments/t/v1"), p.path().join("experiments/t/v2"));
    let record = &json_file(&v1.join("run.json"))["micro_batch"];
    assert_eq!(int(&record["chosen"]), 4, "{record}");
    assert!(int(&record["planned_peak_bytes"]) <= int(&record["budget_bytes"]), "{record}");
    assert_eq!(metrics_columns(&v1), metrics_columns(&v2));
    // The saved config keeps "auto"; the choice lives in run.json.
    assert!(std::fs::read_to_string(v1.join("config.toml")).unwrap().contains("micro_batch_size = \"auto\""));
}

#[test]
fn running_out_of_memory_fails_the_run_with_the_plan_and_keeps_the_last_checkpoint() {
    // 40 short records and one long one: the step that meets it needs far more than the short ones.
    let mut rows: Vec<Value> = (0..40)
        .map(|i| serde_json::json!({"instruction": format!("Double {}.", i % 8), "input": "", "output": format!("{} cups", 2 * (i % 8))}))
        .collect();
    rows.insert(
        17,
        serde_json::json!({"instruction": "Repeat.", "input": "", "output": "cups and spoons ".repeat(60)}),
    );
    let body = config(
        "long_samples = \"truncate\"\n[method]\nkind = \"lora\"\n[train]\nbatch_size = 1\nmicro_batch_size = 1\nmax_steps = 40\nsave_interval = 1\neval_interval = 100\n",
    )
    .replace("max_seq_length = 64", "max_seq_length = 256");
    let p = tree(&[("exp.toml", &body), ("rows.json", &serde_json::to_string(&rows).unwrap())]);
    // Room for the model, its training state and a short micro-batch, not a 256-token one.
    let tensors = |len: &str| {
        let m = &plan_json(p.path(), &[&format!("data.max_seq_length={len}")])["memory"];
        int(&m["total"]) - int(&m["overhead"])
    };
    let limit = (tensors("48") + tensors("256")) / 2;
    let memory = format!("model.device_memory={limit}B");
    // The plan, for 256-token rows, does not fit: the run is refused, unless told to try.
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", &memory], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("or set train.run_over_plan = true"), "{}", stderr(&out));
    assert!(!p.path().join("experiments/t/v1/metrics.csv").exists());
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", &memory, "--set", "train.run_over_plan=true"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("out of memory") && err.contains("lower train.micro_batch_size"), "{err}");
    assert!(err.contains("the memory plan expects a peak of"), "{err}");
    let step: u64 = err.split("step ").nth(1).and_then(|s| s.split(':').next()).unwrap().parse().unwrap();
    assert!(step > 1, "the long record came first; pick another seed: {err}");
    let run = p.path().join("experiments/t/v1");
    let kept = run.join(format!("checkpoints/step-{:06}", step - 1));
    assert!(kept.join("state.json").is_file(), "{err}");
    assert!(err.contains(&format!("checkpoints/step-{:06}, is kept", step - 1)), "{err}");
    let info = json_file(&run.join("run.json"));
    assert_eq!(info["status"], "failed");
    assert!(info["error"].as_str().unwrap().contains("out of memory"));
}
