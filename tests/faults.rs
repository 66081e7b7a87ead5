//! Bad input and faults (issue 12): each answered with one line naming the culprit and what to change,
//! exit code 2, no panic text, and nothing left half-written.
use std::path::Path;

use serde_json::Value;
use tch::{Kind, Tensor};

use crate::common::{fixtures, ftexp, stderr};

fn project(extra: &str) -> tempfile::TempDir {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\n[train]\nlearning_rate = 0.01\nmax_steps = 4\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 1\neval_interval = 2\neval_iters = 1\nsave_interval = 2\n{extra}",
        fixtures().join("models/llama").display(),
    );
    crate::common::doubling_project(&config)
}

fn run_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

/// Asserts `out` failed with exit 2 and one `error:` line containing each of `wants`, no panic text.
fn one_line_error(out: &std::process::Output, wants: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    for want in wants {
        assert!(err.contains(want), "{want:?} missing in {err}");
    }
}

#[test]
fn libtorch_errors_are_one_line_problems_with_their_context() {
    let err = ftexp::error::guard("reshaping", || Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).view([3]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("reshaping: libtorch: shape '[3]' is invalid for input of size 2"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // what a panic in a guard leaves behind: nothing; the next guard works the same
    assert!(ftexp::error::guard("ok", || 1 + 1).is_ok());
}

#[test]
fn token_ids_beyond_the_model_are_refused_before_training() {
    // a tokenizer with more tokens than the model has embeddings
    let p = project("");
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("models/llama/tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    for i in 0..10 {
        vocab.insert(format!("extra{i}"), (448 + i).into());
    }
    std::fs::create_dir(p.path().join("tok")).unwrap();
    std::fs::write(p.path().join("tok/tokenizer.json"), tokenizer.to_string()).unwrap();
    let generation = fixtures().join("models/llama/generation_config.json");
    std::fs::copy(generation, p.path().join("tok/generation_config.json")).unwrap();
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "model.tokenizer=tok"], &[]);
    one_line_error(&out, &["tok/tokenizer.json has 458 tokens", "config.json's vocab_size is 448"]);
    assert!(!p.path().join("experiments").exists(), "nothing written for a refused run");

    // a damaged cache entry holding an id past the vocabulary
    let prepared = ftexp(p.path(), &["prepare", "exp.toml", "--json"], &[]);
    let prepared: Value = serde_json::from_slice(&prepared.stdout).unwrap();
    let entry = p.path().join(prepared["dir"].as_str().unwrap());
    let ids = entry.join("train.ids");
    let mut bytes = std::fs::read(&ids).unwrap();
    // the first sample's first token, after its length, prompt length and one supervised run (start, end)
    bytes[20..24].copy_from_slice(&100_000u32.to_le_bytes());
    std::fs::write(&ids, bytes).unwrap();
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    one_line_error(&out, &["holds token id 100000", "448 token embeddings", "prepare again"]);
}

#[test]
fn optimizer_moments_of_another_shape_are_refused_on_resume() {
    let p = project("");
    let out =
        ftexp(p.path(), &["run", "exp.toml", "--set", "train.max_steps=2", "--set", "train.save_interval=1"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = p.path().join("experiments/t/v1");
    let ckpt = run.join("checkpoints/step-000001");
    let file = ckpt.join("optimizer.safetensors");
    let mut moments = Tensor::read_safetensors(&file).unwrap();
    let m = moments.iter_mut().find(|(n, _)| n.starts_with("m.")).unwrap();
    m.1 = Tensor::zeros([3, 3], (Kind::Float, tch::Device::Cpu));
    Tensor::write_safetensors(&moments, &file).unwrap();
    std::fs::remove_dir_all(run.join("checkpoints/final")).unwrap();
    let mut info = run_json(&run);
    info["status"] = "interrupted".into();
    std::fs::write(run.join("run.json"), info.to_string()).unwrap();
    let out = ftexp(p.path(), &["resume", "experiments/t"], &[]);
    one_line_error(&out, &["step-000001", "[3, 3]"]);
}

#[test]
fn a_run_that_fails_records_why() {
    let p = project("max_grad_norm = 0.0\n");
    let sets = [
        "method.kind=full",
        "train.learning_rate=1e6",
        "train.warmup_iters=0",
        "train.max_steps=12",
        "train.weight_decay=0.01",
    ];
    let args: Vec<&str> = ["run", "exp.toml"].into_iter().chain(sets.iter().flat_map(|s| ["--set", *s])).collect();
    let out = ftexp(p.path(), &args, &[]);
    one_line_error(&out, &["the training loss became"]);
    let info = run_json(&p.path().join("experiments/t/v1"));
    assert_eq!(info["status"], "failed");
    assert!(info["error"].as_str().unwrap().contains("the training loss became"), "{info}");
    assert!(info["end_time"].is_string());
}

/// A pid that no process has now: a child that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn runs_are_locked_and_resume_is_idempotent() {
    let p = project("");
    let out =
        ftexp(p.path(), &["run", "exp.toml", "--set", "train.max_steps=4", "--set", "train.save_interval=1"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = p.path().join("experiments/t/v1");
    // a completed run: --resume says so and changes nothing
    let before = std::fs::read(run.join("run.json")).unwrap();
    let out = ftexp(p.path(), &["resume", "experiments/t"], &[]);
    one_line_error(&out, &["the run is completed; there is nothing to resume"]);
    assert_eq!(std::fs::read(run.join("run.json")).unwrap(), before, "run.json unchanged");

    // make it an interrupted run whose newest checkpoint is damaged, with debris of a killed save
    std::fs::remove_dir_all(run.join("checkpoints/final")).unwrap();
    let mut info = run_json(&run);
    info["status"] = "interrupted".into();
    std::fs::write(run.join("run.json"), info.to_string()).unwrap();
    let newest = run.join("checkpoints/step-000003/optimizer.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let debris = run.join(format!("checkpoints/.tmp-step-000004-{}", dead_pid()));
    std::fs::create_dir(&debris).unwrap();

    // while another process holds the run, a resume is refused
    let held = ftexp::experiment::Experiment::open(&run).unwrap().lock().unwrap();
    let out = ftexp(p.path(), &["resume", "experiments/t"], &[]);
    one_line_error(&out, &["another ftexp process is training this run"]);
    drop(held);

    let out = ftexp(p.path(), &["resume", "experiments/t"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(crate::common::stdout(&out).contains("step-000002 (step 2)"), "fell back to the previous checkpoint");
    assert!(stderr(&out).contains("skipped a damaged checkpoint") && stderr(&out).contains("step-000003"));
    assert!(!debris.exists(), "a dead process's temporary directory is removed");
    assert_eq!(run_json(&run)["status"], "completed");
}

#[test]
fn paths_from_files_and_grids_stay_where_they_belong() {
    // a local shard index that points outside its checkpoint directory
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("models/llama")).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let first = index["weight_map"].as_object().unwrap().keys().next().unwrap().clone();
    index["weight_map"][&first] = "../../elsewhere/x.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let d = dir.path().display().to_string();
    let out = ftexp(Path::new("."), &["generate", "--checkpoint", &d, "--prompt", "x"], &[]);
    one_line_error(&out, &["names the shard `../../elsewhere/x.safetensors`", "not a file name"]);

    // a grid value with `$` reaches `ftexp run` as written, not expanded by make
    let p = project("");
    let grid = "data.prompt_style=Q$HOME:{instruction}";
    let mk = ftexp(p.path(), &["sweep", "exp.toml", "--grid", grid, "--makefile"], &[]);
    assert!(mk.status.success(), "{}", stderr(&mk));
    std::fs::write(p.path().join("sweep.mk"), &mk.stdout).unwrap();
    let dry = std::process::Command::new("make").args(["-n", "-f", "sweep.mk"]).current_dir(p.path()).output().unwrap();
    let commands = String::from_utf8_lossy(&dry.stdout);
    assert!(commands.contains("--set 'data.prompt_style=Q$HOME:{instruction}'"), "{commands}");

    // `rerun` from inside an experiment directory writes beside the run, not below the working directory
    let data = p.path().join("rows.json").display().to_string();
    let out =
        ftexp(p.path(), &["run", "exp.toml", "--set", "train.max_steps=1", "--set", &format!("data.path={data}")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ftexp(&p.path().join("experiments/t"), &["rerun", "v1"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.path().join("experiments/t/v2/run.json").is_file());
    assert!(!p.path().join("experiments/t/experiments").exists());
}

#[test]
fn report_draws_tampered_losses_without_hanging() {
    let p = project("");
    assert!(ftexp(p.path(), &["run", "exp.toml", "--set", "train.max_steps=2"], &[]).status.success());
    let run = p.path().join("experiments/t/v1");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines: Vec<String> = metrics.lines().map(String::from).collect();
    for (i, value) in [(1, "1e308"), (2, "-1e308")] {
        let mut cells: Vec<String> = lines[i].split(',').map(String::from).collect();
        cells[6] = value.into();
        lines[i] = cells.join(",");
    }
    std::fs::write(run.join("metrics.csv"), lines.join("\n") + "\n").unwrap();
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["report", "experiments/t", "--png", "r.png"])
        .current_dir(p.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::wait_until("ftexp report", || child.try_wait().unwrap().is_some());
    assert!(child.wait().unwrap().success());
    assert!(p.path().join("r.png").is_file());
}

#[test]
fn a_run_is_used_on_exactly_its_base_and_its_data() {
    let p = project("");
    let full = ["run", "exp.toml", "--set", "name=\"pre\"", "--set", "method.kind=full", "--set", "train.max_steps=1"];
    assert!(ftexp(p.path(), &full, &[]).status.success());
    let chained = ["run", "exp.toml", "--set", "model.checkpoint=experiment:pre", "--set", "train.max_steps=2"];
    let out = ftexp(p.path(), &chained, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "experiments/t/v1", "--json"];
        args.extend_from_slice(extra);
        ftexp(p.path(), &args, &[])
    };
    let loss = |out: &std::process::Output| -> f64 {
        assert!(out.status.success(), "{}", stderr(out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["loss"].as_f64().unwrap()
    };
    let before = loss(&eval(&[]));

    // the base experiment gains a newer version: the chained run still uses the one it trained on
    let out = ftexp(p.path(), &["rerun", "experiments/pre/v1", "--seed", "9"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.path().join("experiments/pre/v2/checkpoints/final/model").is_dir());
    assert_eq!(loss(&eval(&[])), before, "evaluated on pre/v1, as trained");

    // a changed base file is refused, naming it, unless the user says otherwise
    let config = p.path().join("experiments/pre/v1/checkpoints/final/model/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    // (a key that changes nothing the model computes: an unknown one would be refused as such first)
    std::fs::write(&config, text.replacen('{', "{\"_name_or_path\": \"edited\", ", 1)).unwrap();
    one_line_error(&eval(&[]), &["pre/v1/checkpoints/final/model/config.json: changed", "--allow-changed-base"]);
    assert_eq!(loss(&eval(&["--allow-changed-base"])), before);
    std::fs::write(&config, text).unwrap();

    // the data file re-saved in another order: the run's own prepared splits are used while cached …
    let mut records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("rows.json")).unwrap()).unwrap();
    records.reverse();
    std::fs::write(p.path().join("rows.json"), serde_json::to_string(&records).unwrap()).unwrap();
    assert_eq!(loss(&eval(&["--allow-changed-base"])), before, "the run's cached test split");
    // … and once they are gone, the changed file is an error, not a silently different test split
    std::fs::remove_dir_all(p.path().join("data/.cache")).unwrap();
    one_line_error(&eval(&["--allow-changed-base"]), &["rows.json: changed since the run prepared its splits"]);
    let out = ftexp(p.path(), &["rerun", "experiments/t/v1", "--allow-changed-base"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("rows.json changed since experiments/t/v1 prepared its data"), "{}", stderr(&out));
}

#[test]
fn messages_name_the_real_cause() {
    let p = project("");
    let prepare = |p: &Path| ftexp(p, &["prepare", "exp.toml"], &[]);
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(p.path().join("rows.json")).unwrap()).unwrap();
    // one pretty-printed object holding the records
    let wrapped = serde_json::to_string_pretty(&serde_json::json!({"data": rows[..2]})).unwrap();
    std::fs::write(p.path().join("rows.json"), wrapped).unwrap();
    one_line_error(&prepare(p.path()), &["holds one JSON object (its `data` holds a list of 2 records"]);
    // a byte-order mark is not an error
    let array = serde_json::to_string(&rows).unwrap();
    std::fs::write(p.path().join("rows.json"), format!("\u{feff}{array}")).unwrap();
    assert!(prepare(p.path()).status.success(), "{}", stderr(&prepare(p.path())));
    // a byte that is not UTF-8, on line 3
    let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    let mut bytes = format!("{}\n{}\n", lines[0], lines[1]).into_bytes();
    bytes.extend_from_slice(b"{\"instruction\": \"x\xff\", \"output\": \"y\"}\n");
    std::fs::write(p.path().join("rows.json"), bytes).unwrap();
    one_line_error(&prepare(p.path()), &["rows.json:3: not UTF-8 text"]);
    std::fs::write(p.path().join("rows.json"), &array).unwrap();
    // every sample longer than max_seq_length
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "data.max_seq_length=4"], &[]);
    one_line_error(&out, &["no training samples left", "dropped as longer than data.max_seq_length = 4 tokens"]);
    // sizes far beyond any run
    let out = ftexp(p.path(), &["plan", "exp.toml", "--set", "train.batch_size=4611686018427387904"], &[]);
    assert!(stderr(&out).contains("`train.batch_size` is 4611686018427387904; it must be at most 1048576"));
    // a dangling `experiments` link
    std::os::unix::fs::symlink(p.path().join("nowhere"), p.path().join("experiments")).unwrap();
    one_line_error(&ftexp(p.path(), &["run", "exp.toml"], &[]), &["experiments is a link to", "does not exist"]);
}

#[test]
fn damaged_weights_and_models_too_large_are_named() {
    // a base whose frozen weight holds NaN: the base is blamed, not the learning rate
    let p = project("");
    let base = p.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for entry in std::fs::read_dir(fixtures().join("models/llama")).unwrap().flatten() {
        std::fs::copy(entry.path(), base.join(entry.file_name())).unwrap();
    }
    let shard = base.join("model-00001-of-00005.safetensors");
    let mut tensors = Tensor::read_safetensors(&shard).unwrap();
    tensors[0].1 = tensors[0].1.full_like(f64::NAN);
    Tensor::write_safetensors(&tensors, &shard).unwrap();
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "model.checkpoint=base"], &[]);
    one_line_error(&out, &["holds NaN or infinite values", "the base checkpoint base is damaged"]);

    // a model whose weights alone exceed this machine's memory is refused before anything is allocated
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("models/llama/config.json")).unwrap()).unwrap();
    config["hidden_size"] = 131072.into();
    config["intermediate_size"] = 524288.into();
    config["num_attention_heads"] = 1024.into();
    config["num_key_value_heads"] = 1024.into();
    config["num_hidden_layers"] = 100.into();
    std::fs::create_dir(p.path().join("huge")).unwrap();
    std::fs::write(p.path().join("huge/config.json"), config.to_string()).unwrap();
    let sets = ["--set", "model.checkpoint=huge", "--set", "model.init=random", "--set", "method.kind=full"];
    // The plan still renders, with the refusal a run would meet; `--check` turns it into the error.
    let plan: Vec<&str> = ["plan", "exp.toml"].into_iter().chain(sets).collect();
    let out = ftexp(p.path(), &plan, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = crate::common::stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("refused:") && l.contains("parameters need")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("fits: NO")), "{text}");
    let check: Vec<&str> = plan.iter().copied().chain(["--check"]).collect();
    let err = stderr(&ftexp(p.path(), &check, &[]));
    assert!(err.contains("does not fit"), "{err}");
    let bench: Vec<&str> = ["bench", "exp.toml", "--synthetic", "--steps", "1"].into_iter().chain(sets).collect();
    one_line_error(&ftexp(p.path(), &bench, &[]), &["parameters need", "GiB", "more than the"]);
}

#[test]
fn a_run_directory_that_cannot_be_written_exits_with_the_io_code() {
    let p = project("");
    // A file where the experiments directory should be: nothing can be created under it.
    std::fs::write(p.path().join("experiments"), "not a directory").unwrap();
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: ") && err.contains("experiments") && err.contains("cannot create"), "{err}");
}
