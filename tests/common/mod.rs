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
