//! Experiment directories: versions never reused, even when several processes allocate at once.
use std::collections::BTreeSet;
use std::process::Command;

use ftexp::config::resolve_with_env;
use ftexp::experiment::{allocate, versions, RunStatus};

use crate::common::{tree, REQUIRED};

/// The child process of `concurrent_processes_get_distinct_versions`, which runs it by name (it is
/// ignored in a normal test run): allocates versions and writes a marker into each.
#[test]
#[ignore = "run only as a child process of concurrent_processes_get_distinct_versions"]
fn allocation_child() {
    let root = std::env::var("ALLOCATION_CHILD_ROOT").expect("the parent test sets ALLOCATION_CHILD_ROOT");
    let me = std::process::id().to_string();
    for _ in 0..5 {
        let exp = allocate(std::path::Path::new(&root), "race").unwrap();
        assert!(!exp.dir.join("owner").exists());
        std::fs::write(exp.dir.join("owner"), &me).unwrap();
    }
}

#[test]
fn concurrent_processes_get_distinct_versions() {
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "experiment::allocation_child", "--ignored", "--test-threads=1"])
                .env("ALLOCATION_CHILD_ROOT", root.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let parent = root.path().join("race");
    assert_eq!(versions(&parent), (1..=30).collect::<Vec<u32>>());
    let owners: Vec<String> =
        (1..=30).map(|v| std::fs::read_to_string(parent.join(format!("v{v}/owner"))).unwrap()).collect();
    let distinct: BTreeSet<_> = owners.iter().collect();
    assert_eq!(distinct.len(), 6, "each process got versions of its own");
    for owner in &distinct {
        assert_eq!(owners.iter().filter(|o| o == owner).count(), 5, "no version was written twice");
    }
}

#[test]
fn names_that_escape_the_experiments_dir_are_rejected() {
    let root = tempfile::tempdir().unwrap();
    for bad in ["../x", "a/b", "", ".hidden", "/abs", "a b"] {
        let err = allocate(root.path(), bad).expect_err(bad);
        assert!(err.0[0].starts_with("experiment name is"), "{}", err.0[0]);
    }
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "nothing was created");
}

#[test]
fn start_writes_a_rerunnable_config_and_run_json() {
    let dir = tree(&[("exp.toml", &format!("extends = []\n{REQUIRED}[train]\nepochs = 4\n"))]);
    let resolved = resolve_with_env(&dir.path().join("exp.toml"), &["seed=9".into()], std::iter::empty()).unwrap();
    let root = dir.path().join("experiments");
    let first = allocate(&root, &resolved.config.name).unwrap();
    let second = allocate(&root, &resolved.config.name).unwrap();
    assert_eq!((first.version, second.version), (1, 2));
    assert!(second.dir.ends_with("experiments/exp/v2"));
    let info = second.start(&resolved.config, "cpu").unwrap();
    assert_eq!(info.status, RunStatus::Running);
    assert_eq!(info.libtorch_version, env!("BUILT_LIBTORCH_VERSION"));
    assert!(info.start_time.ends_with('Z') && info.start_time.len() == 20, "{}", info.start_time);

    // config.toml re-resolves to the same config, with no extends needed
    let again = resolve_with_env(&second.dir.join("config.toml"), &[], std::iter::empty()).unwrap();
    assert_eq!(again.config, resolved.config);
    assert!(!std::fs::read_to_string(second.dir.join("config.toml")).unwrap().contains("extends"));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(second.dir.join("run.json")).unwrap()).unwrap();
    for key in
        ["ftexp_version", "libtorch_version", "git_commit", "git_dirty", "host", "device", "command_line", "start_time"]
    {
        assert!(json.get(key).is_some(), "run.json lacks {key}");
    }
    second.finish(RunStatus::Completed).unwrap();
    let done = second.read_run_info().unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert!(done.end_time.is_some());
    let leftovers: Vec<_> = std::fs::read_dir(&second.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}
