//! The best checkpoint and early stopping: the stop at the expected evaluation, `checkpoints/best`
//! holding the lowest val loss, `--step best` and `experiment:<name>@best`, and a resume that keeps the
//! patience count.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::common::{copy_dir, doubling_project, fixtures, ftexp, json_file, stderr, stdout};

/// A LoRA run whose learning rate is far too high, so its val loss soon rises: it stops after
/// `early_stopping = 2` evaluations without improvement, long before `max_steps`.
fn project(extra: &str) -> tempfile::TempDir {
    doubling_project(&format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\nsplit = {{ train = 0.8, val = 0.1, test = 0.1 }}\n[method]\nkind = \"lora\"\nlora_dropout = 0.0\n[train]\nlearning_rate = 0.2\nlr_schedule = \"constant\"\nmax_steps = 40\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 0\nmax_grad_norm = 0.0\neval_interval = 2\neval_iters = 2\nsave_interval = 3\n{extra}",
        fixtures().join("models/llama").display()
    ))
}

/// One early-stopped run (`experiments/t/v1`), trained once for the tests that read it.
fn stopped_run() -> &'static Path {
    static RUN: OnceLock<tempfile::TempDir> = OnceLock::new();
    RUN.get_or_init(|| {
        let p = project("early_stopping = 2\n");
        let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("stopped early at step"), "{}", stdout(&out));
        p
    })
    .path()
}

fn run_dir(p: &Path, v: u32) -> PathBuf {
    p.join(format!("experiments/t/v{v}"))
}

/// (step, val loss) of each row of metrics.csv that has one, and the last step logged.
fn val_column(dir: &Path) -> (Vec<(u64, f64)>, u64) {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let vals = rows.iter().filter(|r| !r[at("val_loss")].is_empty());
    let vals = vals.map(|r| (r[at("step")].parse().unwrap(), r[at("val_loss")].parse().unwrap())).collect();
    (vals, rows.last().unwrap()[at("step")].parse().unwrap())
}

/// The step early stopping with `patience` (and min_delta 0) stops at, from the val losses alone.
fn expected_stop(vals: &[(u64, f64)], patience: u64) -> Option<u64> {
    let (mut best, mut without) = (f64::INFINITY, 0);
    for &(step, val) in vals {
        without = if val < best { 0 } else { without + 1 };
        best = best.min(val);
        if without == patience {
            return Some(step);
        }
    }
    None
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs())
}

#[test]
fn early_stopping_stops_at_the_expected_evaluation() {
    let dir = run_dir(stopped_run(), 1);
    let (vals, last_step) = val_column(&dir);
    let stop = expected_stop(&vals, 2).expect("the val loss rose for two evaluations in a row");
    assert!(stop < 40, "stopped before max_steps");
    let run = json_file(&dir.join("run.json"));
    assert_eq!(run["status"], "completed");
    assert_eq!(run["results"]["stopped_early"], true);
    assert_eq!(run["results"]["steps"], stop);
    assert_eq!(last_step, stop, "metrics.csv has no rows after the stop");
    assert!(dir.join("checkpoints/final/state.json").is_file(), "the run finished normally");
}

#[test]
fn best_holds_the_lowest_val_loss_step() {
    let p = stopped_run();
    let dir = run_dir(p, 1);
    let (vals, _) = val_column(&dir);
    let (best_step, best_val) = vals.iter().copied().reduce(|a, b| if b.1 < a.1 { b } else { a }).unwrap();
    let state = json_file(&dir.join("checkpoints/best/state.json"));
    assert_eq!(state["step"], best_step);
    let results = &json_file(&dir.join("run.json"))["results"];
    assert_eq!(results["best_step"], best_step);
    assert!(close(results["best_val_loss"].as_f64().unwrap(), best_val), "{results}");
    // The tensors of `best` are those trained at that step: they give its val loss again.
    let out = ftexp(p, &["eval", "experiments/t/v1", "--step", "best", "--split", "val", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eval: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(close(eval["loss"].as_f64().unwrap(), best_val), "{eval} vs {best_val}");
    let out = ftexp(p, &["report", "experiments/t/v1", "--json"], &[]);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["runs"][0]["best_step"], best_step, "{report}");
}

#[test]
fn a_run_chains_on_another_runs_best_checkpoint() {
    let p = stopped_run();
    let config = "name = \"c\"\n[model]\ncheckpoint = \"experiment:t@best\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"plain\"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\n[train]\nmax_steps = 1\nbatch_size = 2\nmicro_batch_size = 2\neval_interval = 1\neval_iters = 1\n";
    std::fs::write(p.join("chain.toml"), config).unwrap();
    let out = ftexp(p, &["run", "chain.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let base = &json_file(&p.join("experiments/c/v1/run.json"))["base"];
    assert!(base["dir"].as_str().unwrap().ends_with("experiments/t/v1/checkpoints/best/model"), "{base}");
}

/// A run killed after its step-K checkpoint, one evaluation into its patience: a copy of the stopped run
/// in `from` cut back to that checkpoint, as the kill would have left it. Returns K.
fn cut_back(from: &Path, to: &Path) -> u64 {
    copy_dir(from, to);
    let (_, stop) = val_column(from);
    let ckpts = to.join("checkpoints");
    let state = |name: &str| json_file(&ckpts.join(name).join("state.json"));
    let step_of = |name: &str| state(name)["step"].as_u64().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let waiting = |n: &String| state(n)["evals_without_improvement"].as_u64() >= Some(1);
    let kept = names.iter().filter(|n| n.starts_with("step-") && step_of(n) < stop && waiting(n)).max();
    let kept = step_of(kept.expect("a checkpoint between an evaluation without improvement and the stop"));
    // `final` and every later checkpoint (`best` too, when it is later) did not exist yet.
    for name in names.iter().filter(|n| step_of(n) > kept) {
        std::fs::remove_dir_all(ckpts.join(name)).unwrap();
    }
    let mut run = json_file(&to.join("run.json"));
    run["status"] = "interrupted".into();
    run.as_object_mut().unwrap().remove("results");
    std::fs::write(to.join("run.json"), run.to_string()).unwrap();
    kept
}

#[test]
fn resume_keeps_the_patience_count_and_never_restores_best() {
    let p = stopped_run();
    let (whole, cut) = (run_dir(p, 1), p.join("experiments/resumed/v1"));
    let kept = cut_back(&whole, &cut);
    let out = ftexp(p, &["resume", cut.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from = format!("checkpoints/step-{kept:06} (step {kept})");
    assert!(stdout(&out).contains(&from), "resumed from the newest step checkpoint: {}", stdout(&out));
    let (a, b) = (json_file(&whole.join("run.json")), json_file(&cut.join("run.json")));
    for key in ["stopped_early", "steps", "best_step"] {
        assert_eq!(a["results"][key], b["results"][key], "{key}");
    }
    let (va, vb) = (val_column(&whole).0, val_column(&cut).0);
    assert_eq!(va.len(), vb.len());
    assert!(va.iter().zip(&vb).all(|(x, y)| x.0 == y.0 && close(x.1, y.1)), "{va:?} vs {vb:?}");
}

#[test]
fn step_best_without_a_best_checkpoint_says_how_to_keep_one() {
    let p = project("");
    assert!(ftexp(p.path(), &["run", "exp.toml", "--set", "train.max_steps=2"], &[]).status.success());
    assert!(!run_dir(p.path(), 1).join("checkpoints/best").exists(), "no best without save_best or early_stopping");
    for cmd in [&["eval", "experiments/t/v1"][..], &["export", "experiments/t/v1", "--out", "x"]] {
        let out = ftexp(p.path(), &[cmd, &["--step", "best"]].concat(), &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("has no best checkpoint") && err.contains("train.save_best = true"), "{err}");
    }
}

#[test]
fn early_stopping_without_a_val_split_is_refused() {
    let p = project("early_stopping = 3\n");
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "data.split.train=0.9", "--set", "data.split.val=0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("`train.early_stopping` is set but data.split.val is 0"), "{err}");
}

#[test]
fn two_processes_stop_early_together_and_resume_with_the_patience_count() {
    if !crate::common::needs(crate::common::Need::Gloo) {
        return;
    }
    let p = project("early_stopping = 2\ndevices = 2\n");
    let out = ftexp(p.path(), &["run", "exp.toml"], &[("OMP_NUM_THREADS", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = run_dir(p.path(), 1);
    let stop = expected_stop(&val_column(&whole).0, 2).expect("the val loss rose for two evaluations in a row");
    assert_eq!(json_file(&whole.join("run.json"))["results"]["steps"], stop);
    let cut = p.path().join("experiments/resumed/v1");
    cut_back(&whole, &cut);
    let out = ftexp(p.path(), &["resume", cut.to_str().unwrap()], &[("OMP_NUM_THREADS", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results = &json_file(&cut.join("run.json"))["results"];
    assert_eq!((&results["steps"], &results["stopped_early"]), (&Value::from(stop), &Value::from(true)));
}
