//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_ftexp");

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Writes `files` (relative path, contents) under a fresh temporary directory.
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Runs `ftexp args…` in `cwd` with no `FTEXP_*` variables but `env`.
pub fn ftexp(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FTEXP_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A minimal valid config body: the two required keys.
pub const REQUIRED: &str = "[model]\ncheckpoint = \"org/model\"\n[data]\npath = \"data.json\"\n";

/// A project of `config` (as `exp.toml`) and `rows.json`: 40 Alpaca records doubling numbers
/// ("Double 3." → "6 cups"), small data a fixture learns in a few steps.
pub fn doubling_project(config: &str) -> tempfile::TempDir {
    let rows: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"instruction": format!("Double {}.", i % 8), "input": "", "output": format!("{} cups", 2 * (i % 8))}))
        .collect();
    tree(&[("exp.toml", config), ("rows.json", &serde_json::to_string(&rows).unwrap())])
}

/// A JSON file's contents.
pub fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Copies the directory `from` to `to`, with everything in it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => drop(std::fs::copy(entry.path(), target).unwrap()),
        }
    }
}

/// What a test needs beyond this crate's own build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Need {
    /// The c10d bridge with Gloo (training on several CPU processes): what `ftexp env --json` says.
    Gloo,
    /// The project's Python venv (`.venv`, `make setup`) with torch, transformers and peft, for
    /// `scripts/check_export.py`.
    Python,
    /// The venv's python with TensorBoard (`make setup` installs it), for `scripts/read_tensorboard.py`.
    TensorBoard,
}

/// Whether this machine has `need`. When it does not, prints `skipped: <test>: <why>` (so a skip is
/// never silent) and the test returns: `if !needs(Need::Gloo) { return; }`.
pub fn needs(need: Need) -> bool {
    static GLOO: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static PYTHON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static TENSORBOARD: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let lacking = match need {
        Need::Gloo => GLOO.get_or_init(gloo_missing),
        Need::Python => PYTHON.get_or_init(python_missing),
        Need::TensorBoard => TENSORBOARD.get_or_init(tensorboard_missing),
    };
    let Some(why) = lacking else { return true };
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    eprintln!("skipped: {test}: {why}");
    false
}

/// Why this build has no Gloo, from `ftexp env --json`.
fn gloo_missing() -> Option<String> {
    let out = Command::new(BIN).args(["env", "--json"]).output().expect("ftexp env --json runs");
    assert!(out.status.success(), "ftexp env --json: {}", stderr(&out));
    let env: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ftexp env --json prints JSON");
    let gloo = &env["native"]["Gloo"];
    match gloo["present"].as_bool() {
        Some(true) => None,
        _ => Some(format!("this ftexp was built without Gloo ({})", gloo["missing"].as_str().unwrap_or("?"))),
    }
}

/// The venv's python, and why it cannot run `scripts/check_export.py` when it cannot.
pub fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

fn python_missing() -> Option<String> {
    let python = python();
    if !python.exists() {
        return Some(format!("{} does not exist (`make setup` makes the venv)", python.display()));
    }
    let out = Command::new(&python).args(["-c", "import torch, transformers, peft"]).output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => {
            Some(format!("{} cannot import torch, transformers and peft: {}", python.display(), stderr(&o).trim()))
        }
        Err(e) => Some(format!("{} does not run: {e}", python.display())),
    }
}

fn tensorboard_missing() -> Option<String> {
    let python = python();
    if !python.exists() {
        return Some(format!("{} does not exist (`make setup` makes the venv)", python.display()));
    }
    let out =
        Command::new(&python).args(["-c", "import tensorboard.backend.event_processing.event_accumulator"]).output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{} cannot import tensorboard (`make setup` installs it): {}",
            python.display(),
            stderr(&o).trim().lines().last().unwrap_or_default()
        )),
        Err(e) => Some(format!("{} does not run: {e}", python.display())),
    }
}

/// Waits until `done()` holds, checking every few milliseconds. The bound only keeps a broken run from
/// hanging the tests: no result depends on how long the wait took.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    const HANG: std::time::Duration = std::time::Duration::from_secs(600);
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG, "hung: still waiting for {what} after {} s", HANG.as_secs());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A prepared sample of `input_ids` whose first `prompt` tokens are masked out of the loss.
pub fn sample(input_ids: Vec<u32>, prompt: usize) -> ftexp::data::prepare::Sample {
    let labels = ftexp::data::prepare::labels(&input_ids, prompt);
    ftexp::data::prepare::Sample {
        instruction: String::new(),
        input: String::new(),
        output: String::new(),
        input_ids_no_response: Vec::new(),
        input_ids,
        labels,
    }
}
