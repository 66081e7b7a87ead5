//! `ftexp export --format gguf`: the file as llama.cpp's `gguf` package reads it (tensors, shapes,
//! types, metadata, tokenizer, chat template), q8_0 blocks byte for byte as gguf's reference quantizer
//! makes them, and llama.cpp's greedy ids (llama-cpp-python) against ftexp's own on the run.
use std::path::Path;
use std::process::Command;

use ftexp::eval::{load_run, LoadOptions};
use ftexp::generate::{generate, Sampling};
use serde_json::Value;
use tch::Tensor;

use crate::common::{ftexp, stderr};
use crate::export::{export, project};

const FAMILIES: [&str; 3] = ["llama", "qwen2", "falcon-7b-style"];
const QUANTS: [&str; 3] = ["f16", "bf16", "q8_0"];
/// Greedy tokens compared.
const NEW_TOKENS: usize = 16;

fn python() -> std::path::PathBuf {
    crate::common::python()
}

/// Whether the venv imports `modules`; prints `skipped: <test>: <why>` when it does not.
fn has(modules: &str) -> bool {
    let out = Command::new(python()).args(["-c", &format!("import {modules}")]).output();
    let why = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "the venv cannot import {modules} (make setup-gguf): {}",
            stderr(&o).trim().lines().last().unwrap_or("")
        ),
        Err(e) => format!("{} does not run: {e}", python().display()),
    };
    eprintln!("skipped: {}: {why}", std::thread::current().name().unwrap_or("a test"));
    false
}

fn check_gguf(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_gguf.py");
    let out = Command::new(python()).arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "check_gguf.py {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A 3-step LoRA run on `family` exported in each quant; the project and the files' paths.
fn exported(family: &str) -> (tempfile::TempDir, Vec<String>) {
    let p = project(family, "lora");
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{family}: {}", stderr(&out));
    let files = QUANTS
        .iter()
        .map(|q| {
            let file = format!("m-{q}.gguf");
            let done = export(p.path(), &file, &["--format", "gguf", "--quant", q]);
            assert!(done.status.success(), "{family} {q}: {}", stderr(&done));
            p.path().join(file).display().to_string()
        })
        .collect();
    (p, files)
}

/// The tensors a family's file must hold, as (name, dims innermost first), from its config.json alone.
fn expected_tensors(family: &str, c: &Value) -> Vec<(String, Vec<u64>)> {
    let n = |k: &str| c[k].as_u64().unwrap();
    let (h, v, heads) = (n("hidden_size"), n("vocab_size"), n("num_attention_heads"));
    let hd = h / heads;
    let mut out = vec![("token_embd.weight".to_string(), vec![h, v]), ("output.weight".into(), vec![h, v])];
    out.push(("output_norm.weight".into(), vec![h]));
    for i in 0..n("num_hidden_layers") {
        let mut t = |name: &str, dims: Vec<u64>| out.push((format!("blk.{i}.{name}"), dims));
        t("attn_norm.weight", vec![h]);
        t("attn_output.weight", vec![heads * hd, h]);
        if family == "falcon-7b-style" {
            let ff = n("ffn_hidden_size");
            t("attn_norm.bias", vec![h]);
            t("attn_qkv.weight", vec![h, (heads + 2) * hd]); // multi-query: one key and value head
            t("ffn_up.weight", vec![h, ff]);
            t("ffn_down.weight", vec![ff, h]);
            continue;
        }
        let (kv, ff) = (n("num_key_value_heads"), n("intermediate_size"));
        t("ffn_norm.weight", vec![h]);
        for (name, rows) in [("attn_q", heads * hd), ("attn_k", kv * hd), ("attn_v", kv * hd)] {
            t(&format!("{name}.weight"), vec![h, rows]);
            if family == "qwen2" {
                t(&format!("{name}.bias"), vec![rows]);
            }
        }
        t("ffn_gate.weight", vec![h, ff]);
        t("ffn_up.weight", vec![h, ff]);
        t("ffn_down.weight", vec![ff, h]);
    }
    if family == "falcon-7b-style" {
        out.push(("output_norm.bias".into(), vec![h]));
    }
    out.sort();
    out
}

fn check_file(family: &str, quant: &str, got: &Value, config: &Value) {
    let want = expected_tensors(family, config);
    let mut tensors: Vec<(String, Vec<u64>)> = got["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), serde_json::from_value(t["shape"].clone()).unwrap()))
        .collect();
    tensors.sort();
    assert_eq!(tensors, want, "{family} {quant}: tensors");
    for t in got["tensors"].as_array().unwrap() {
        let dims = t["shape"].as_array().unwrap();
        let ty = match (dims.len(), quant) {
            (1, _) => "F32",
            (_, "q8_0") if dims[0].as_u64().unwrap() % 32 == 0 => "Q8_0",
            (_, "q8_0") | (_, "f16") => "F16",
            _ => "BF16",
        };
        assert_eq!(t["type"], ty, "{family} {quant}: {}", t["name"]);
    }
    let m = &got["metadata"];
    let arch = if family == "falcon-7b-style" { "falcon" } else { family };
    assert_eq!(got["version"], 3);
    assert_eq!(m["general.architecture"], arch);
    assert_eq!(m[format!("{arch}.block_count")], config["num_hidden_layers"]);
    assert_eq!(m[format!("{arch}.embedding_length")], config["hidden_size"]);
    assert_eq!(m[format!("{arch}.context_length")], config["max_position_embeddings"]);
    assert_eq!(m[format!("{arch}.attention.head_count")], config["num_attention_heads"]);
    let kv = if family == "falcon-7b-style" { 1 } else { config["num_key_value_heads"].as_u64().unwrap() };
    assert_eq!(m[format!("{arch}.attention.head_count_kv")], kv);
    assert_eq!(m["tokenizer.ggml.model"], "gpt2");
    assert_eq!(m["tokenizer.ggml.pre"], "gpt-2");
    assert_eq!(m["tokenizer.ggml.tokens"].as_array().unwrap().len() as u64, config["vocab_size"].as_u64().unwrap());
    assert_eq!(m["tokenizer.ggml.merges"].as_array().unwrap().len(), 191, "{family}: the fixture's merges");
    assert_eq!(m["tokenizer.ggml.eos_token_id"], 0);
    // the run's prompt style, as a chat template, and its stop token
    let template = got["chat_template"].as_str().unwrap();
    assert!(template.contains(r#""Q: ""#) && template.contains(r#""\nA: ""#), "{family}: {template}");
    assert_eq!(got["stop_tokens"][0]["text"], "<|endoftext|>");
}

/// The three families the export must match llama.cpp on, each in every quant: the file as gguf reads
/// it, then (with llama-cpp-python) llama.cpp's greedy ids against ftexp's.
#[test]
fn gguf_exports_of_llama_qwen2_and_falcon() {
    if !has("gguf, numpy") {
        return;
    }
    let llama_cpp = has("llama_cpp");
    for family in FAMILIES {
        let (p, files) = exported(family);
        let config =
            crate::common::json_file(&crate::common::fixtures().join("models").join(family).join("config.json"));
        for (quant, file) in QUANTS.iter().zip(&files) {
            check_file(family, quant, &check_gguf(&[file]), &config);
        }
        // q8_0 values as gguf's dequantizer reads them: within half a step of the merged f32 weight, plus
        // the step's own f16 rounding (at most 2^-11 of it) times the largest int8 value
        let run = load_run(&p.path().join("experiments/t/v1"), LoadOptions::default()).unwrap();
        let got = check_gguf(&[&files[2], "--dequantize", "token_embd.weight"]);
        let values: Vec<f32> = serde_json::from_value(got["values"].clone()).unwrap();
        let want = Vec::<f32>::try_from(run.model.embed.view(-1)).unwrap();
        for (block, (g, w)) in values.chunks(32).zip(want.chunks(32)).enumerate() {
            let d = w.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= d * (0.5 + 127.0 / 2048.0) + 1e-12, "{family}: block {block} off by {worst} (step {d})");
        }
        if llama_cpp {
            parity(family, &run, &files);
        }
    }
}

#[test]
fn q8_0_blocks_are_the_reference_quantizers() {
    if !has("gguf, numpy") {
        return;
    }
    // values across magnitudes, halfway cases, an all-zero block and a block of one value
    let mut values: Vec<f32> =
        (0..32 * 64).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 10f32.powi(i % 7 - 4)).collect();
    values.extend((0..32).map(|i| i as f32 * 0.5 - 8.0));
    values.extend([0.0; 32]);
    values.extend([3.0; 32]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.json");
    std::fs::write(&path, serde_json::to_string(&values).unwrap()).unwrap();
    let reference = check_gguf(&["--q8-0", path.to_str().unwrap()]);
    let ours: String = ftexp::export::gguf::quant::q8_0(&values).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(ours, reference["q8_0"].as_str().unwrap());
}

/// ftexp's top-2 logit margin after `ids`.
fn margin(model: &ftexp::model::Gpt, ids: &[u32]) -> f64 {
    let input = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0);
    let logits = tch::no_grad(|| model.forward(&input, None)).squeeze_dim(0).get(ids.len() as i64 - 1);
    let (top, _) = logits.topk(2, -1, true, true);
    top.double_value(&[0]) - top.double_value(&[1])
}

/// How many leading ids agree.
fn agreeing(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// llama.cpp's greedy ids on each of `files` against ftexp's on `run`: on f16 equal up to a divergence
/// where the two best logits are within rounding; bf16 and q8_0 reported. Also llama.cpp's tokens of
/// the prompt's text against ftexp's tokenizer.
fn parity(family: &str, run: &ftexp::eval::LoadedRun, files: &[String]) {
    {
        let text = "Q: Double 3.\nA: ";
        let prompt = run.tokenizer.encode(text, true).unwrap();
        let sampling = Sampling { max_new_tokens: NEW_TOKENS, ..Sampling::default() };
        let ours = generate(&run.model, &prompt, &sampling, &[], true, |_| {});
        let ids: Vec<String> = prompt.iter().map(|i| i.to_string()).collect();
        let n = NEW_TOKENS.to_string();
        for (quant, file) in QUANTS.iter().zip(files) {
            let got = check_gguf(&[file, "--generate", &ids.join(","), &n, "--tokenize", text]);
            let theirs: Vec<u32> = serde_json::from_value(got["generated"].clone()).unwrap();
            let tokens: Vec<u32> = serde_json::from_value(got["tokens_of_text"].clone()).unwrap();
            assert_eq!(tokens, run.tokenizer.encode(text, false).unwrap(), "{family}: llama.cpp's tokens of {text:?}");
            let same = agreeing(&ours, &theirs);
            let at = (same < NEW_TOKENS).then(|| {
                let mut context = prompt.clone();
                context.extend(&ours[..same]);
                (margin(&run.model, &context), got["margins"][same].as_f64().unwrap())
            });
            eprintln!("gguf parity: {family} {quant}: {same}/{NEW_TOKENS} greedy ids agree (ftexp {ours:?}, llama.cpp {theirs:?}); top-2 margins at the divergence (ftexp, llama.cpp): {at:?}");
            if *quant == "f16" {
                if let Some((ftexp_margin, _)) = at {
                    assert!(
                        ftexp_margin < 0.05,
                        "{family} f16: diverges at {same} where ftexp's margin is {ftexp_margin}"
                    );
                }
            }
        }
    }
}

/// The other families llama.cpp runs, and the other methods' merges (adapter v2's biases on Llama's
/// permuted q and k): f16 only (the check is that llama.cpp computes the same model).
#[test]
fn llama_cpp_runs_the_other_families() {
    if !has("gguf, numpy, llama_cpp") {
        return;
    }
    let runs = [
        ("qwen3", "lora"),
        ("olmo2", "lora"),
        ("gpt-neox", "lora"),
        ("gpt-neox-sequential", "lora"),
        ("falcon-40b-style", "lora"),
        ("llama", "adapter_v2"),
        ("qwen2", "full"),
    ];
    for (family, kind) in runs {
        let p = project(family, kind);
        let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
        assert!(out.status.success(), "{family}: {}", stderr(&out));
        if kind == "adapter_v2" {
            close_gates(p.path());
        }
        let done = export(p.path(), "m.gguf", &["--format", "gguf"]);
        assert!(done.status.success(), "{family}: {}", stderr(&done));
        let run = load_run(&p.path().join("experiments/t/v1"), LoadOptions::default()).unwrap();
        let prompt = run.tokenizer.encode("Q: Double 3.\nA: ", true).unwrap();
        let sampling = Sampling { max_new_tokens: NEW_TOKENS, ..Sampling::default() };
        let ours = generate(&run.model, &prompt, &sampling, &[], true, |_| {});
        let ids: Vec<String> = prompt.iter().map(|i| i.to_string()).collect();
        let file = p.path().join("m.gguf").display().to_string();
        let got = check_gguf(&[&file, "--generate", &ids.join(","), &NEW_TOKENS.to_string()]);
        let theirs: Vec<u32> = serde_json::from_value(got["generated"].clone()).unwrap();
        let same = agreeing(&ours, &theirs);
        let at = (same < NEW_TOKENS).then(|| {
            let mut context = prompt.clone();
            context.extend(&ours[..same]);
            (margin(&run.model, &context), got["margins"][same].as_f64().unwrap())
        });
        eprintln!("gguf parity: {family} {kind} f16: {same}/{NEW_TOKENS} greedy ids agree (ftexp {ours:?}, llama.cpp {theirs:?}); top-2 margins at the divergence (ftexp, llama.cpp): {at:?}");
        if let Some((ftexp_margin, _)) = at {
            assert!(ftexp_margin < 0.05, "{family} f16: diverges at {same} where ftexp's margin is {ftexp_margin}");
        }
    }
}

/// Mistral's sliding window is no part of llama.cpp's `llama`: the file's context length is the window
/// (8 on the fixture), and within it llama.cpp computes what ftexp computes.
#[test]
fn llama_cpp_runs_mistral_within_its_window() {
    if !has("gguf, numpy, llama_cpp") {
        return;
    }
    let p = project("mistral", "lora");
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = export(p.path(), "m.gguf", &["--format", "gguf"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let run = load_run(&p.path().join("experiments/t/v1"), LoadOptions::default()).unwrap();
    let prompt = [3u32, 17, 42];
    let ours = generate(&run.model, &prompt, &Sampling { max_new_tokens: 5, ..Sampling::default() }, &[], true, |_| {});
    let file = p.path().join("m.gguf").display().to_string();
    let got = check_gguf(&[&file, "--generate", "3,17,42", "5"]);
    assert_eq!(got["metadata"]["llama.context_length"], 8);
    let theirs: Vec<u32> = serde_json::from_value(got["generated"].clone()).unwrap();
    eprintln!("gguf parity: mistral lora f16 (within the window): ftexp {ours:?}, llama.cpp {theirs:?}");
    assert_eq!(theirs, ours);
}

/// Closes an adapter-v2 run's gates (its prompts then change nothing, so it merges as the hub export
/// merges it: scales and biases folded into every linear, Llama's q and k biases among them).
fn close_gates(p: &Path) {
    let file = p.join("experiments/t/v1/checkpoints/final/trained.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .map(|(n, t)| match n.ends_with("adapter_gate") || n == "head.adapter_bias" {
            true => (n, t.zeros_like()),
            false => (n, t),
        })
        .collect();
    Tensor::write_safetensors(&tensors, &file).unwrap();
}

#[test]
fn gguf_export_refusals() {
    let p = project("llama", "lora");
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // an unsupported quant, naming the supported ones
    let done = export(p.path(), "m.gguf", &["--format", "gguf", "--quant", "q4_k_m"]);
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    assert!(stderr(&done).contains("f16, bf16, q8_0"), "{}", stderr(&done));
    // a file inside a run directory
    let done = export(p.path(), "experiments/t/v1/m.gguf", &["--format", "gguf"]);
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    assert!(stderr(&done).contains("run directory"), "{}", stderr(&done));
    // an existing file is left as it is
    std::fs::write(p.path().join("old.gguf"), "keep").unwrap();
    let done = export(p.path(), "old.gguf", &["--format", "gguf"]);
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    assert!(stderr(&done).contains("already exists"), "{}", stderr(&done));
    assert_eq!(std::fs::read_to_string(p.path().join("old.gguf")).unwrap(), "keep");
    // --dtype and --quant belong to their formats
    let done = export(p.path(), "m.gguf", &["--format", "gguf", "--dtype", "bf16"]);
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    let done = export(p.path(), "hf", &["--quant", "q8_0"]);
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    // a write that fails part-way (files limited to 8 KiB) leaves neither the file nor a temporary
    let bin = env!("CARGO_BIN_EXE_ftexp");
    let script = format!("trap '' XFSZ; ulimit -f 8; exec {bin} export experiments/t/v1 --format gguf --out big.gguf");
    let done = Command::new("bash").current_dir(p.path()).args(["-c", &script]).output().unwrap();
    assert_ne!(done.status.code(), Some(0), "{}", stderr(&done));
    assert!(stderr(&done).contains("cannot write the GGUF file"), "{}", stderr(&done));
    let left: Vec<String> =
        std::fs::read_dir(p.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|n| n.contains("big.gguf")), "left behind: {left:?}");
}

#[test]
fn gguf_export_refuses_other_families_by_name() {
    let p = project("gemma2", "lora");
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = export(p.path(), "m.gguf", &["--format", "gguf"]);
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    let err = stderr(&done);
    assert!(
        err.contains("Gemma2") && err.contains("Llama") && err.contains("Qwen2") && err.contains("Falcon"),
        "{err}"
    );
    assert!(!p.path().join("m.gguf").exists());
}
