//! `track.tensorboard`: the event files of a run, read by TensorBoard's own EventAccumulator
//! (`scripts/read_tensorboard.py`), hold metrics.csv's curves and the resolved config; a resumed run's
//! steps continue in the same directory, each step seen once; a run whose events cannot be written
//! completes with one warning.
use std::path::{Path, PathBuf};

use ftexp::experiment::tensorboard::{crc32c, masked_crc32c, record};
use serde_json::Value;

use crate::common::{doubling_project, fixtures, ftexp, json_file, needs, stderr, stdout, Need};

/// A LoRA run of the llama fixture: `steps` steps, val loss every 4, a checkpoint every 5, TensorBoard on.
fn project(steps: u64) -> tempfile::TempDir {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\nsplit = {{ train = 0.8, val = 0.1, test = 0.1 }}\n[method]\nkind = \"lora\"\n[train]\nlearning_rate = 0.01\nmax_steps = {steps}\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 2\neval_interval = 4\neval_iters = 1\nsave_interval = 5\n[track]\ntensorboard = true\n",
        fixtures().join("models/llama").display(),
    );
    doubling_project(&config)
}

fn run_dir(p: &Path) -> PathBuf {
    p.join("experiments/t/v1")
}

/// What TensorBoard reads from the run's `tensorboard/` directory (see scripts/read_tensorboard.py).
fn events(run: &Path) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(crate::common::python())
        .arg(root.join("scripts/read_tensorboard.py"))
        .arg(run.join("tensorboard"))
        .output()
        .unwrap();
    assert!(out.status.success(), "read_tensorboard.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(step, value)` of a scalar tag, in the order TensorBoard holds them.
fn scalar(events: &Value, tag: &str) -> Vec<(u64, f64)> {
    let points = events["scalars"][tag].as_array().unwrap_or_else(|| panic!("no scalar {tag}: {events}"));
    points.iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect()
}

/// metrics.csv's rows as `(step, lr, train_loss, val_loss)`.
fn metrics(run: &Path) -> Vec<(u64, f64, f64, Option<f64>)> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows = text.lines().skip(1).map(|l| l.split(',').map(String::from).collect::<Vec<_>>());
    rows.map(|r| (r[0].parse().unwrap(), r[4].parse().unwrap(), r[5].parse().unwrap(), r[6].parse().ok())).collect()
}

/// TensorBoard holds 32-bit floats and metrics.csv six decimals: they agree to both roundings.
fn agree(tb: f64, csv: f64) -> bool {
    (tb - csv).abs() <= 5e-7 + csv.abs() * 1e-6
}

/// Every step's train loss and learning rate are metrics.csv's, each step once, in order; the other
/// per-step scalars are there for every step, and the val loss at the evaluations before the last row
/// (whose metrics.csv value is the final one, over the whole val split).
fn assert_curves_match_metrics(events: &Value, run: &Path) {
    let rows = metrics(run);
    let steps: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let loss = scalar(events, "train/loss");
    assert_eq!(loss.iter().map(|p| p.0).collect::<Vec<_>>(), steps, "train/loss: every step once");
    for ((step, tb), row) in loss.iter().zip(&rows) {
        assert!(agree(*tb, row.2), "step {step}: train/loss {tb} but metrics.csv {}", row.2);
    }
    for ((step, tb), row) in scalar(events, "train/learning_rate").iter().zip(&rows) {
        assert!(agree(*tb, row.1), "step {step}: train/learning_rate {tb} but metrics.csv {}", row.1);
    }
    for tag in ["train/learning_rate", "train/tokens_per_s", "train/grad_norm"] {
        let points = scalar(events, tag);
        assert_eq!(points.iter().map(|p| p.0).collect::<Vec<_>>(), steps, "{tag}: every step once");
        assert!(points.iter().all(|p| p.1.is_finite() && (tag == "train/learning_rate" || p.1 > 0.0)), "{tag}");
    }
    let evals: Vec<u64> = steps.iter().copied().filter(|s| s % 4 == 0).collect();
    let val = scalar(events, "val/loss");
    assert_eq!(val.iter().map(|p| p.0).collect::<Vec<_>>(), evals, "val/loss at the evaluations");
    let last = *steps.last().unwrap();
    for (step, tb) in val.iter().filter(|p| p.0 != last) {
        let csv = rows.iter().find(|r| r.0 == *step).and_then(|r| r.3).unwrap();
        assert!(agree(*tb, csv), "step {step}: val/loss {tb} but metrics.csv {csv}");
    }
    let results = &json_file(&run.join("run.json"))["results"];
    for (tag, key) in [("val/final_loss", "final_val_loss"), ("test/loss", "test_loss")] {
        let points = scalar(events, tag);
        let want = results[key].as_f64().unwrap();
        assert!(points.len() == 1 && points[0].0 == last && agree(points[0].1, want), "{tag}: {points:?}, want {want}");
    }
}

#[test]
fn records_are_framed_with_masked_crc32c() {
    // The check value of CRC-32C (Castagnoli), and TFRecord's framing of an empty record.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    let framed = record(b"");
    assert_eq!(framed.len(), 16);
    assert_eq!(framed[..8], [0u8; 8]);
    assert_eq!(framed[8..12], masked_crc32c(&[0u8; 8]).to_le_bytes());
    assert_eq!(framed[12..], masked_crc32c(b"").to_le_bytes());
    assert_eq!(masked_crc32c(b""), 0xa282_ead8, "the mask of a zero CRC is the constant alone");
}

#[test]
fn tensorboard_reads_every_step_and_the_config() {
    if !needs(Need::TensorBoard) {
        return;
    }
    let p = project(12);
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let run = run_dir(p.path());
    let events = events(&run);
    assert_curves_match_metrics(&events, &run);
    let files = events["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    // events.out.tfevents.<secs>.<host>.<pid>.0, as TensorBoard's own writers name their files
    let name = files[0].as_str().unwrap();
    assert!(name.starts_with("events.out.tfevents.") && name.ends_with(".0"), "{name}");
    let secs = name.split('.').nth(3).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(secs.len() == 10 && now.abs_diff(secs.parse().unwrap()) < 600, "{name}: the seconds it was made");
    // The resolved config once, at step 0, as config.toml holds it; the text plugin claims it.
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let saved = saved.split_once('\n').unwrap().1;
    assert_eq!(events["text"]["config"], serde_json::json!([[0, format!("```toml\n{saved}```\n")]]));
    assert!(saved.contains("[track]\ntensorboard = true"), "{saved}");
    assert_eq!(events["plugins"]["text"], serde_json::json!(["config"]));
    assert!(events["plugins"]["scalars"].as_array().unwrap().contains(&"train/loss".into()), "{events}");
}

/// Marks the run in `run` as interrupted after the checkpoint of step `keep`: the later checkpoints
/// and the results are gone, as if it had been killed there (it logged the steps after it).
fn cut_back(run: &Path, keep: u64) {
    for entry in std::fs::read_dir(run.join("checkpoints")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let step = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok());
        if step.is_none_or(|s| s > keep) {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    let mut info = json_file(&run.join("run.json"));
    info["status"] = "interrupted".into();
    info.as_object_mut().unwrap().remove("results");
    std::fs::write(run.join("run.json"), info.to_string()).unwrap();
}

#[test]
fn a_resumed_run_continues_the_curves_with_every_step_once() {
    if !needs(Need::TensorBoard) {
        return;
    }
    let p = project(30);
    let run = run_dir(p.path());
    // Ctrl-C (SIGTERM) once the step-5 checkpoint exists: the run saves the step it is in and stops.
    let mut child = std::process::Command::new(crate::common::BIN)
        .current_dir(p.path())
        .args(["run", "exp.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = run.join("checkpoints/step-000005/state.json");
    crate::common::wait_until("the step-5 checkpoint", || ckpt.exists() || child.try_wait().unwrap().is_some());
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(!child.wait().unwrap().success(), "the run stopped before its last step");
    assert_eq!(json_file(&run.join("run.json"))["status"], "interrupted");
    let stopped = metrics(&run).last().unwrap().0;
    assert!((5..30).contains(&stopped), "stopped at step {stopped}");
    let out = ftexp(p.path(), &["resume", "experiments/t"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("(step {stopped})")), "{}", stdout(&out));
    let resumed = events(&run);
    assert_eq!(resumed["files"].as_array().unwrap().len(), 2, "one events file per process: {resumed}");
    assert_curves_match_metrics(&resumed, &run);
    assert_eq!(scalar(&resumed, "train/loss").len(), 30);
    // As if killed after step 20's checkpoint: its second file logged steps 21 to 30, which the third
    // file's restart at step 21 replaces.
    cut_back(&run, 20);
    let out = ftexp(p.path(), &["resume", "experiments/t"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("(step 20)"), "{}", stdout(&out));
    let again = events(&run);
    assert_eq!(again["files"].as_array().unwrap().len(), 3, "{again}");
    assert_curves_match_metrics(&again, &run);
    assert_eq!(again["text"]["config"].as_array().unwrap().len(), 1, "the config once: {again}");
    // The same run continued: the steps before the restart are the first file's, untouched.
    assert_eq!(scalar(&again, "train/loss")[..stopped as usize], scalar(&resumed, "train/loss")[..stopped as usize]);
}

#[test]
fn a_run_whose_events_cannot_be_written_completes_with_one_warning() {
    let p = project(6);
    let run = run_dir(p.path());
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "track.tensorboard=false"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!run.join("tensorboard").exists(), "track.tensorboard = false writes no events");
    // A file where the run's tensorboard/ directory should be.
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = p.path().join("experiments/t/v2");
    cut_back(&run, 5);
    std::fs::remove_dir_all(run.join("tensorboard")).unwrap();
    std::fs::write(run.join("tensorboard"), "not a directory").unwrap();
    let out = ftexp(p.path(), &["resume", run.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    let warnings: Vec<&str> = said.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{said}");
    assert!(
        warnings[0].contains("cannot write the TensorBoard events") && warnings[0].contains("tensorboard"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("the run goes on"), "{warnings:?}");
    assert_eq!(json_file(&run.join("run.json"))["status"], "completed");
    assert_eq!(metrics(&run).iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(std::fs::read_to_string(run.join("tensorboard")).unwrap(), "not a directory");
}
