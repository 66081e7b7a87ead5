//! Training on several devices: CPU processes over c10d's Gloo, started by `ftexp run` or by a
//! launcher that sets torchrun's variables, against the same run in one process.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{doubling_project, fixtures, ftexp, needs, stderr, wait_until, Need, BIN};

/// A project training the llama fixture with `kind`, 6 samples per step in micro-batches of 1, so two
/// processes accumulate three micro-batches each and three processes two, with LoRA dropout 0.1 (its
/// masks are drawn per sample, so every process count draws the same ones). The learning rate (1e-3, the loss still falls from 13.3 to 2.6 in 12 full steps) keeps training out
/// of the chaotic regime where rounding differences grow: two processes add a step's gradients in
/// another order than one, and at 1e-2 that difference of 1e-7 grew past 1e-5 within 8 steps.
fn project(kind: &str, steps: u64) -> tempfile::TempDir {
    project_lr(kind, steps, 0.001)
}

/// [`project`] with another learning rate.
fn project_lr(kind: &str, steps: u64, lr: f64) -> tempfile::TempDir {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\nsplit = {{ train = 0.8, val = 0.1, test = 0.1 }}\n[method]\nkind = \"{kind}\"\nlora_dropout = 0.1\n[train]\nlearning_rate = {lr}\nmax_steps = {steps}\nbatch_size = 6\nmicro_batch_size = 1\nwarmup_iters = 2\neval_interval = 4\neval_iters = 3\nsave_interval = 5\nlog_interval = 1\nweight_decay = 0.01\n",
        fixtures().join("models/llama").display(),
    );
    doubling_project(&config)
}

/// One thread per process in every run compared: matrix products split over another number of threads
/// round differently, and over a few steps of training that difference can grow past 1e-5.
const ONE_THREAD: [(&str, &str); 1] = [("OMP_NUM_THREADS", "1")];

fn run_dir(p: &Path, v: u32) -> PathBuf {
    p.join(format!("experiments/t/v{v}"))
}

fn run_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

fn rows(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines().map(|l| l.split(',').map(String::from).collect()).collect()
}

/// metrics.csv of two runs agree: step, epoch, iter, tokens and lr exactly, the losses to `tolerance`
/// relative to their size.
fn assert_same_metrics(a: &Path, b: &Path, tolerance: f64) {
    let (a, b) = (rows(a), rows(b));
    assert_eq!(a[0], b[0], "same columns");
    assert_eq!(a.len(), b.len(), "same rows");
    let col = |name: &str| a[0].iter().position(|c| c == name).unwrap();
    let (train, val) = (col("train_loss"), col("val_loss"));
    for (ra, rb) in a.iter().zip(&b).skip(1) {
        for name in ["step", "epoch", "iter", "tokens", "lr"] {
            assert_eq!(ra[col(name)], rb[col(name)], "{name} in {ra:?} vs {rb:?}");
        }
        for c in [train, val] {
            assert_eq!(ra[c].is_empty(), rb[c].is_empty(), "{ra:?} vs {rb:?}");
            if !ra[c].is_empty() {
                let (x, y): (f64, f64) = (ra[c].parse().unwrap(), rb[c].parse().unwrap());
                assert!((x - y).abs() <= tolerance * x.abs().max(1.0), "{} {x} vs {y}", a[0][c]);
            }
        }
    }
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn one_two_and_three_processes_compute_the_same_run_for_every_method() {
    if !needs(Need::Gloo) {
        return;
    }
    for kind in ["full", "lora", "adapter", "adapter_v2"] {
        let p = project(kind, 12);
        for devices in [1, 2, 3] {
            let set = format!("train.devices={devices}");
            // CI has 2 cores: three processes there are more than its cores.
            let args = ["run", "exp.toml", "--set", &set, "--set", "train.allow_oversubscribe=true"];
            let out = ftexp(p.path(), &args, &ONE_THREAD);
            assert!(out.status.success(), "{kind} on {devices}: {}", stderr(&out));
        }
        let one = run_dir(p.path(), 1);
        let r1 = run_json(&one);
        let l1 = r1["results"]["test_loss"].as_f64().unwrap();
        for (v, devices) in [(2, 2), (3, 3)] {
            let dir = run_dir(p.path(), v);
            assert_same_metrics(&one, &dir, 1e-5);
            let r = run_json(&dir);
            let l = r["results"]["test_loss"].as_f64().unwrap();
            assert!((l1 - l).abs() <= 1e-5 * l1.abs().max(1.0), "{kind} on {devices}: test loss {l1} vs {l}");
            assert_eq!(r["world"]["size"], devices);
            let ranks: Vec<&str> =
                r["world"]["ranks"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
            assert!(ranks.len() == devices && ranks.iter().all(|r| r.ends_with("/cpu")), "{ranks:?}");
            // Other ranks write nothing: the directory holds what a one-process run writes.
            assert_eq!(files(&one), files(&dir));
        }
        let versions = std::fs::read_dir(p.path().join("experiments/t")).unwrap().count();
        assert_eq!(versions, 3, "{:?}", files(&p.path().join("experiments")));
    }
}

#[test]
fn an_external_launcher_gives_the_same_run_as_devices_2() {
    if !needs(Need::Gloo) {
        return;
    }
    let p = project("full", 8);
    let two = ftexp(p.path(), &["run", "exp.toml", "--set", "train.devices=2"], &ONE_THREAD);
    assert!(two.status.success(), "{}", stderr(&two));
    // What torchrun --nproc_per_node 2 does: two processes with its variables set.
    let port = free_port().to_string();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(BIN)
                .current_dir(p.path())
                .args(["run", "exp.toml", "--set", "train.devices=2"])
                .envs([
                    ("MASTER_ADDR", "127.0.0.1"),
                    ("MASTER_PORT", port.as_str()),
                    ("RANK", &rank.to_string()),
                    ("WORLD_SIZE", "2"),
                    ("LOCAL_RANK", &rank.to_string()),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ONE_THREAD[0],
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_same_metrics(&run_dir(p.path(), 1), &run_dir(p.path(), 2), 1e-5);
    assert_eq!(run_json(&run_dir(p.path(), 2))["world"]["size"], 2);
    assert!(!run_dir(p.path(), 3).exists(), "rank 1 made no run of its own");
}

/// The pids of `parent`'s children whose environment has `RANK=rank`.
fn child_with_rank(parent: u32, rank: usize) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).unwrap_or("");
        if ppid != parent.to_string() {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == format!("RANK={rank}").as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Starts `ftexp run` of the project in `dir` on 2 processes and returns once the run's checkpoint of
/// step `step` is written.
fn launch_until_checkpoint(dir: &Path, step: u64) -> std::process::Child {
    let mut launcher = Command::new(BIN)
        .current_dir(dir)
        .args(["run", "exp.toml", "--set", "train.devices=2"])
        .envs(ONE_THREAD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = run_dir(dir, 1).join(format!("checkpoints/step-{step:06}/state.json"));
    wait_until(&format!("the step-{step} checkpoint"), || ckpt.exists() || launcher.try_wait().unwrap().is_some());
    assert!(ckpt.exists(), "the step-{step} checkpoint was written");
    launcher
}

#[test]
fn a_killed_rank_stops_the_run_and_one_process_resumes_it() {
    if !needs(Need::Gloo) {
        return;
    }
    // A gentle learning rate: over 300 steps a high one turns rounding differences into other losses.
    let p = project_lr("lora", 300, 0.002);
    let mut launcher = launch_until_checkpoint(p.path(), 10);
    let rank1 = child_with_rank(launcher.id(), 1).expect("rank 1 runs");
    let rank0 = child_with_rank(launcher.id(), 0).expect("rank 0 runs");
    // SAFETY: a signal to a process of this test's launcher.
    unsafe { libc::kill(rank1, libc::SIGKILL) };
    wait_until("the launcher to stop after rank 1 was killed", || launcher.try_wait().unwrap().is_some());
    let status = launcher.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(launcher.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("rank 1 of 2") && err.contains("killed"), "{err}");
    for pid in [rank0, rank1] {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} was left behind");
    }
    let dir = run_dir(p.path(), 1);
    assert_eq!(run_json(&dir)["status"], "failed");
    assert!(!dir.join("checkpoints/final").exists());
    // Resumed on one process, the run ends where an uninterrupted one-process run does.
    let resumed = ftexp(p.path(), &["resume", "experiments/t", "--set", "train.devices=1"], &ONE_THREAD);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let whole = ftexp(p.path(), &["run", "exp.toml"], &ONE_THREAD);
    assert!(whole.status.success(), "{}", stderr(&whole));
    // 300 steps, the first ones with gradients added up in another order (measured drift 2e-6).
    assert_same_metrics(&run_dir(p.path(), 2), &dir, 1e-4);
    assert_eq!(run_json(&dir)["status"], "completed");
}

#[test]
fn a_resumed_run_refuses_other_changes_and_a_lone_process_is_told_how_to_start() {
    let p = project("lora", 4);
    let out = ftexp(p.path(), &["run", "exp.toml"], &ONE_THREAD);
    assert!(out.status.success(), "{}", stderr(&out));
    // The run's own value changes nothing: accepted (and the run is found complete).
    let out = ftexp(p.path(), &["resume", "experiments/t", "--set", "train.learning_rate=0.001"], &[]);
    assert!(stderr(&out).contains("the run is completed; there is nothing to resume"), "{}", stderr(&out));
    let out = ftexp(p.path(), &["resume", "experiments/t", "--set", "train.learning_rate=1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "only train.devices, train.sync_timeout_s, train.allow_oversubscribe, train.run_over_plan can change"
        ),
        "{}",
        stderr(&out)
    );
    let out = ftexp(p.path(), &["run", "exp.toml", "--set", "train.devices=4"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("multiple of micro_batch_size × devices"), "{}", stderr(&out));
    let out = ftexp(
        p.path(),
        &["run", "exp.toml"],
        &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("set train.devices = 2"), "{}", stderr(&out));
}

#[test]
fn a_busy_port_and_a_process_that_never_joins_are_named() {
    if !needs(Need::Gloo) {
        return;
    }
    let p = project("lora", 4);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let rank0 = |port: u16| {
        let port = port.to_string();
        let vars = [
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", port.as_str()),
        ];
        let args = ["run", "exp.toml", "--set", "train.devices=2", "--set", "train.sync_timeout_s=2"];
        ftexp(p.path(), &args, &vars)
    };
    let out = rank0(port);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("the port is in use; set MASTER_PORT to a free port"), "{}", stderr(&out));
    drop(busy);
    // a process that never joined is a lost peer (exit 4), not the user's config
    let out = rank0(free_port());
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("not every process joined") && stderr(&out).contains("1/2"), "{}", stderr(&out));
}

#[test]
fn sigterm_on_the_launcher_saves_a_checkpoint_and_stops_every_process() {
    if !needs(Need::Gloo) {
        return;
    }
    let p = project("lora", 300);
    let launcher = launch_until_checkpoint(p.path(), 5);
    let dir = run_dir(p.path(), 1);
    let ranks = [child_with_rank(launcher.id(), 0).unwrap(), child_with_rank(launcher.id(), 1).unwrap()];
    // SAFETY: a signal to the process this test started.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) };
    let out = launcher.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("interrupted: checkpoint saved"), "{}", stderr(&out));
    for pid in ranks {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} was left behind");
    }
    let info = run_json(&dir);
    assert_eq!(info["status"], "interrupted");
    let last = std::fs::read_dir(dir.join("checkpoints")).unwrap().flatten().map(|e| e.file_name()).max().unwrap();
    let steps = rows(&dir).len() as u64 - 1;
    assert!(steps < 300, "stopped early, after {steps} steps");
    assert_eq!(last.to_string_lossy(), format!("step-{steps:06}"), "a checkpoint of the last step logged");
    let resumed = ftexp(p.path(), &["resume", "experiments/t"], &ONE_THREAD);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let steps: Vec<u64> = rows(&dir).iter().skip(1).map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(steps, (1..=300).collect::<Vec<u64>>(), "every step logged once");
}

#[test]
fn a_port_that_accepts_but_never_answers_ends_the_wait_in_time() {
    if !needs(Need::Gloo) {
        return;
    }
    let p = project("lora", 4);
    // accepts every connection and holds it open, answering nothing, for 60 s
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    silent.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let (start, mut held) = (std::time::Instant::now(), Vec::new());
        while start.elapsed() < std::time::Duration::from_secs(60) {
            if let Ok((conn, _)) = silent.accept() {
                held.push(conn);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let vars = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", port.as_str()),
    ];
    let args = ["run", "exp.toml", "--set", "train.devices=2", "--set", "train.sync_timeout_s=2"];
    let started = std::time::Instant::now();
    let out = ftexp(p.path(), &args, &vars);
    let took = started.elapsed().as_secs_f64();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(took < 30.0, "the worker waited {took:.1} s: {err}");
    let at = format!("127.0.0.1:{port}");
    for says in ["rank 1 of 2", at.as_str(), "does not answer", "MASTER_ADDR and MASTER_PORT", "train.sync_timeout_s"] {
        assert!(err.contains(says), "{says}: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
