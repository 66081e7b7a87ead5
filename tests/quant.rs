//! A quantized frozen base (`model.quantize`): NF4's codes and absmax as bitsandbytes computes them,
//! the dequantized weights within each scheme's rounding, and QLoRA runs that train and export.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use ftexp::eval::ask::{self, Ask};
use ftexp::eval::{load_run, LoadOptions};
use ftexp::generate::{generate, ids_tensor, Sampling};
use ftexp::model::quant::{Quantized, Scales, Scheme, NF4_LEVELS};
use ftexp::model::Gpt;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::common::{doubling_project, fixtures, ftexp, needs, python, stderr, stdout, Need};

/// A weight with an odd number of values, a block of zeros and a few outliers.
fn weight() -> Tensor {
    tch::manual_seed(11);
    let w = Tensor::randn([37, 70], (Kind::Float, Device::Cpu));
    let _ = w.narrow(0, 0, 1).fill_(0.0);
    let _ = w.get(5).get(3).fill_(9.0);
    w
}

/// NF4 of `w` computed here from the table alone: per block of 64 its absmax and, for each value,
/// the first level nearest to it.
fn reference_nf4(w: &Tensor) -> (Vec<u8>, Vec<f32>) {
    let values = Vec::<f32>::try_from(w.flatten(0, -1)).unwrap();
    let (mut codes, mut absmax) = (Vec::new(), Vec::new());
    for block in values.chunks(64) {
        let a = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(a);
        for v in block {
            let x = if a > 0.0 { v / a } else { 0.0 };
            let dist = |i: usize| (x - NF4_LEVELS[i]).abs();
            codes.push((0..16).min_by(|&i, &j| dist(i).total_cmp(&dist(j))).unwrap() as u8);
        }
    }
    if codes.len() % 2 == 1 {
        codes.push(0);
    }
    (codes.chunks(2).map(|p| (p[0] << 4) | p[1]).collect(), absmax)
}

fn absmax_of(q: &Quantized) -> Vec<f32> {
    match &q.scales {
        Scales::Plain(a) => Vec::try_from(a).unwrap(),
        Scales::Double { .. } => panic!("plain absmax expected"),
    }
}

#[test]
fn nf4_codes_and_absmax_are_those_of_its_table_and_of_bitsandbytes() {
    let w = weight();
    let q = Quantized::new(&w, Scheme::Nf4);
    let codes = Vec::<u8>::try_from(&q.codes).unwrap();
    let (want_codes, want_absmax) = reference_nf4(&w);
    assert_eq!(codes, want_codes);
    assert_eq!(absmax_of(&q), want_absmax);
    let bnb = Command::new(python()).args(["-c", "import bitsandbytes"]).output();
    if !bnb.is_ok_and(|o| o.status.success()) {
        println!("skipped: the bitsandbytes comparison: the venv's python cannot import bitsandbytes (`make setup` installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("w.safetensors"), dir.path().join("q.safetensors"));
    Tensor::write_safetensors(&[("w", &w)], &input).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bnb_quantize.py");
    let out = Command::new(python()).arg(script).arg(&input).arg(&output).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let theirs: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&output).unwrap().into_iter().collect();
    assert_eq!(codes, Vec::<u8>::try_from(&theirs["codes"]).unwrap(), "bitsandbytes' packed codes");
    assert_eq!(absmax_of(&q), Vec::<f32>::try_from(&theirs["absmax"]).unwrap(), "bitsandbytes' absmax");
}

#[test]
fn every_scheme_dequantizes_within_its_rounding() {
    let w = weight();
    let blocks = |t: &Tensor| {
        let flat = t.flatten(0, -1);
        let n = flat.size()[0];
        flat.constant_pad_nd([0, (64 - n % 64) % 64]).view([-1, 64])
    };
    let absmax = blocks(&w).abs().amax([1], true);
    // NF4's widest gap between neighbouring levels is −0.6962 − (−1); int8's step is 1/127.
    for (scheme, half_gap, bytes) in
        [(Scheme::Nf4, 0.153, 1459), (Scheme::Nf4Dq, 0.16, 1344), (Scheme::Int8, 0.5 / 127.0, 2754)]
    {
        let q = Quantized::new(&w, scheme);
        let back = q.dequantize(Kind::Float);
        assert_eq!(back.size(), w.size());
        let err = blocks(&(&back - &w)).abs() / absmax.clamp_min(1e-12);
        let worst = err.max().double_value(&[]);
        assert!(worst <= half_gap, "{scheme:?}: error {worst} of the block's absmax");
        assert_eq!(q.stored_bytes(), bytes, "{scheme:?}: codes and scales of 2590 values");
        let zeros = back.get(0).abs().max().double_value(&[]);
        assert!(zeros < 1e-2, "{scheme:?}: an all-zero row dequantizes to about zero ({zeros})");
    }
}

fn qlora_project() -> tempfile::TempDir {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\nquantize = \"nf4\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\nlora_dropout = 0.1\n[train]\nlearning_rate = 0.01\nmax_steps = 12\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 2\neval_interval = 6\neval_iters = 2\nsave_interval = 100\n",
        fixtures().join("models/llama").display()
    );
    doubling_project(&config)
}

#[test]
fn a_qlora_run_trains_on_the_quantized_base_and_exports_onto_its_dequantized_weights() {
    let p = qlora_project();
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info = crate::common::json_file(&p.path().join("experiments/t/v1/run.json"));
    let strategies = &info["plan"]["strategies"];
    assert_eq!(
        (strategies["quantization"].as_str(), strategies["activation_checkpointing"].as_bool()),
        (Some("nf4"), Some(true))
    );
    let text = std::fs::read_to_string(p.path().join("experiments/t/v1/metrics.csv")).unwrap();
    let losses: Vec<f64> = text.lines().skip(1).filter_map(|l| l.split(',').nth(5)?.parse().ok()).collect();
    assert!(losses.last().unwrap() < &losses[0], "the loss falls: {losses:?}");
    // The merged export is the dequantized base plus the LoRA delta, in the base's dtype.
    let out = ftexp(p.path(), &["export", "experiments/t/v1", "--out", "merged"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let merged = ftexp::model::load(&p.path().join("merged"), Kind::Float, Device::Cpu).unwrap();
    let base = ftexp::model::load(&fixtures().join("models/llama"), Kind::Float, Device::Cpu).unwrap();
    let (m, b) = (merged.blocks[0].q.weight.to_dense(), base.blocks[0].q.weight.to_dense());
    let nf4 = Quantized::new(&b, Scheme::Nf4).dequantize(Kind::Float);
    let from_dequantized = (&m - &nf4).abs().max().double_value(&[]);
    let from_dense = (&m - &b).abs().max().double_value(&[]);
    assert!(from_dequantized < from_dense, "merged onto the dequantized base: {from_dequantized} vs {from_dense}");
    // The plan shows the quantized weights; full refuses them.
    let out = ftexp(p.path(), &["plan", "exp.toml"], &[]);
    assert!(stdout(&out).contains("layers' weights in nf4"), "{}", stdout(&out));
    let out = ftexp(p.path(), &["plan", "exp.toml", "--set", "method.kind=full"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("quantized weights cannot train"), "{}", stderr(&out));
    let out = ftexp(p.path(), &["plan", "exp.toml", "--set", "model.quantize=nf3"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"nf4-dq\""), "{}", stderr(&out));
}

const IDS: [i64; 8] = [3, 17, 42, 99, 7, 250, 11, 5];

/// `model`'s logits for [`IDS`] `(time, vocab)`.
fn logits_of(model: &Gpt) -> Tensor {
    tch::no_grad(|| model.forward(&Tensor::from_slice(&IDS).unsqueeze(0), None).squeeze_dim(0))
}

/// The mean next-token NLL of [`IDS`] under its `logits`.
fn nll(logits: &Tensor) -> f64 {
    let n = IDS.len() as i64 - 1;
    logits.narrow(0, 0, n).cross_entropy_for_logits(&Tensor::from_slice(&IDS[1..])).double_value(&[])
}

/// The dtypes of the tensors in a checkpoint directory's safetensors files, read from their headers.
fn stored_dtypes(dir: &Path) -> BTreeSet<String> {
    let mut dtypes = BTreeSet::new();
    for path in std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let tensors = header.as_object().unwrap().iter().filter(|(name, _)| *name != "__metadata__");
        dtypes.extend(tensors.map(|(_, t)| t["dtype"].as_str().unwrap().to_string()));
    }
    dtypes
}

/// `ftexp eval … --json`'s loss.
fn eval_loss(p: &Path, args: &[&str]) -> f64 {
    let out = ftexp(p, args, &[]);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["loss"].as_f64().unwrap()
}

#[test]
fn a_qlora_runs_peft_export_computes_on_the_dense_base_what_its_adapter_does_there() {
    if !needs(Need::Python) {
        return;
    }
    let p = qlora_project();
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (to, extra) in [("peft", &["--format", "peft"][..]), ("merged", &[][..])] {
        let out = crate::export::export(p.path(), to, extra);
        assert!(out.status.success(), "{to}: {}", stderr(&out));
    }
    let run = p.path().join("experiments/t/v1");
    let quantized = load_run(&run, LoadOptions::default()).unwrap().model;
    let dense = load_run(&run, LoadOptions { unquantized: true, ..LoadOptions::default() }).unwrap().model;
    assert!(quantized.blocks[0].q.weight.is_quantized() && !dense.blocks[0].q.weight.is_quantized());
    let merged = ftexp::model::load(&p.path().join("merged"), Kind::Float, Device::Cpu).unwrap();
    let (q, d, m) = (logits_of(&quantized), logits_of(&dense), logits_of(&merged));
    let base = fixtures().join("models/llama");
    let (base_dir, peft_dir) = (base.display().to_string(), p.path().join("peft").display().to_string());
    let ids = serde_json::to_string(&IDS).unwrap();
    let peft = crate::export::python_difference(
        &crate::export::python(&["peft", &base_dir, &peft_dir, &ids], &[])["logits"],
        &d,
    );
    let scale = d.abs().max().double_value(&[]);
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    // the test split's mean loss: the run, its adapter on the dense base, and the merged export as a base
    let (run_loss, dense_loss) = (
        eval_loss(p.path(), &["eval", "experiments/t/v1", "--json"]),
        eval_loss(p.path(), &["eval", "experiments/t/v1", "--unquantized", "--json"]),
    );
    let on_merged = ["run", "exp.toml", "--set", "model.checkpoint=merged", "--set", "model.quantize=none"];
    let out = ftexp(p.path(), &[&on_merged[..], &["--set", "name=\"m\"", "--set", "train.max_steps=1"]].concat(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let merged_loss = eval_loss(p.path(), &["eval", "experiments/m/v1", "--base", "--json"]);
    println!("test-split mean NLL: run on its nf4 base {run_loss:.6}, merged export {merged_loss:.6}, adapter on the dense base {dense_loss:.6}");
    println!("mean NLL of {IDS:?}: run {:.6}, merged {:.6}, dense {:.6}", nll(&q), nll(&m), nll(&d));
    println!(
        "max |Δlogit| (max |logit| {scale:.2}): merged vs run {:.2e}, dense vs run {:.2e}, peft on the dense base vs ftexp's dense {peft:.2e}",
        diff(&m, &q),
        diff(&d, &q)
    );
    assert!(peft <= 1e-4 * (scale / 20.0).max(1.0), "peft on the dense base differs from ftexp's by {peft}");
    // the merged export is the run's model (the dequantized base plus the delta), not the dense one's
    assert!(diff(&m, &q) <= 1e-4 * scale.max(1.0), "merged vs the run: {}", diff(&m, &q));
    assert!(diff(&m, &q) < diff(&d, &q), "the dense base differs from the dequantized one");
    assert!((merged_loss - run_loss).abs() <= 1e-4 * run_loss.abs().max(1.0), "{merged_loss} vs {run_loss}");
    assert_eq!(
        stored_dtypes(&p.path().join("merged")),
        stored_dtypes(&base),
        "the merged export keeps the base's dtype"
    );
    let evaluations = &crate::common::json_file(&run.join("run.json"))["evaluations"];
    assert_eq!(evaluations["test_unquantized"]["loss"].as_f64(), Some(dense_loss), "{evaluations}");
    assert_eq!(evaluations["test"]["loss"].as_f64(), Some(run_loss), "{evaluations}");
}

#[test]
fn a_qlora_run_trained_with_checkpointing_generates_the_same_with_and_without_the_kv_cache() {
    let p = qlora_project();
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "train.activation_checkpointing=true"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = p.path().join("experiments/t/v1");
    let info = crate::common::json_file(&run.join("run.json"));
    assert_eq!(info["plan"]["strategies"]["activation_checkpointing"].as_bool(), Some(true));
    let args =
        ["generate", "--checkpoint", "experiments/t/v1", "--prompt", "Double 3.", "--max-new-tokens", "6", "--json"];
    let out = ftexp(p.path(), &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<u32> =
        serde_json::from_value(serde_json::from_slice::<Value>(&out.stdout).unwrap()["ids"].clone()).unwrap();
    assert!(!ids.is_empty());
    // without the KV cache every step reruns the whole sequence through the quantized base
    let ask = Ask { instruction: "Double 3.", input: "", raw: false, chat: false };
    let placement =
        ftexp::device::Placement::resolve(ftexp::config::DeviceSetting::Cpu, ftexp::config::Precision::Auto);
    let (model, tokenizer, prompt) = ask::prepare(&run, &ask, LoadOptions::default(), placement).unwrap();
    assert!(model.blocks[0].q.weight.is_quantized());
    let sampling = Sampling { max_new_tokens: 6, temperature: 0.0, top_k: None, top_p: None, seed: 1337 };
    assert_eq!(generate(&model, &prompt, &sampling, &tokenizer.eos_ids, false, |_| {}), ids, "greedy, uncached");
    let full = tch::no_grad(|| model.forward(&ids_tensor(&prompt, Device::Cpu), None));
    assert_eq!(full.select(1, -1).argmax(-1, false).int64_value(&[0]), ids[0] as i64, "the full forward's argmax");
    // evaluation with greedy answers works on it too
    let out = ftexp(p.path(), &["eval", "experiments/t/v1", "--generate", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["loss"].as_f64().is_some_and(f64::is_finite) && r["exact_match"].is_object(), "{r}");
}
