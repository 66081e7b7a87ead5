//! `ftexp export` on hostile input: damaged tensors, an `--out` in a run directory or behind a broken
//! link, and the temporaries of killed exports. A refused export writes nothing.
use std::path::Path;

use tch::Tensor;

use crate::common::{ftexp, stderr};
use crate::export::{export, project};

const TRAINED: &str = "experiments/t/v1/checkpoints/final/trained.safetensors";

/// Sets element 0 of the checkpoint's first embedding tensor to `value`, keeping the rest.
fn damage(p: &Path, value: f64) {
    let file = p.join(TRAINED);
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&file).unwrap();
    let target = tensors.iter().position(|(n, _)| n.contains("embed")).expect("an embedding in the checkpoint");
    let mut tensors = tensors;
    let t = tensors[target].1.copy();
    let _ = t.view([-1]).get(0).fill_(value);
    tensors[target].1 = t;
    Tensor::write_safetensors(&tensors, &file).unwrap();
}

/// Names in `dir` that look like export temporaries.
fn temporaries(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
    names.filter(|n| n.contains(".tmp-")).collect()
}

fn refused(out: &std::process::Output, says: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(says.iter().all(|s| err.contains(s)), "{says:?}: {err}");
}

#[test]
fn nan_and_float16_overflow_are_refused_and_nothing_is_written() {
    let p = project("gpt-neox", "full");
    let run = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    damage(p.path(), f64::NAN);
    for (out, dtype) in [("hf", &[][..]), ("hf16", &["--dtype", "fp16"][..])] {
        let done = export(p.path(), out, dtype);
        refused(&done, &["the tensor `", "embed", "1 NaN or infinite values", "nothing was written"]);
        assert!(!p.path().join(out).exists());
    }
    damage(p.path(), 1e6);
    let done = export(p.path(), "hf16", &["--dtype", "fp16"]);
    refused(&done, &["embed", "1.0000e6", "65504", "--dtype bf16"]);
    assert!(!p.path().join("hf16").exists());
    assert!(temporaries(p.path()).is_empty(), "{:?}", temporaries(p.path()));
    // as suggested: bf16 holds it, and so does the base's own fp32
    for (out, dtype) in [("bf16", "bf16"), ("fp32", "fp32")] {
        let done = export(p.path(), out, &["--dtype", dtype]);
        assert!(done.status.success(), "{}", stderr(&done));
        let written = Tensor::read_safetensors(p.path().join(out).join("model.safetensors")).unwrap();
        let largest = written.iter().map(|(_, t)| t.abs().max().double_value(&[])).fold(0.0, f64::max);
        assert!((largest - 1e6).abs() <= 1e6 * 1e-2, "{dtype}: {largest}");
    }
}

#[test]
fn an_out_in_any_run_directory_or_behind_a_broken_link_is_refused_first() {
    let p = project("gpt-neox", "lora");
    let run = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    // another experiment's run, and a link into this run
    let other = p.path().join("experiments/other/v1");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(p.path().join("experiments/t/v1/run.json"), other.join("run.json")).unwrap();
    std::os::unix::fs::symlink(p.path().join("experiments/t/v1/checkpoints"), p.path().join("into-run")).unwrap();
    for out in [
        "experiments/t/v1/mine",
        "experiments/t/v1/checkpoints/final/x",
        "experiments/other/v1/deep/er",
        "experiments/t/v2",
        "into-run/x",
        "elsewhere/../experiments/t/v1/y",
    ] {
        refused(&export(p.path(), out, &[]), &["--out", "run directory", "outside every run directory"]);
        assert!(!p.path().join(out).exists(), "{out}");
    }
    assert!(!p.path().join("elsewhere").exists());
    // links and files that the final rename would trip on, refused before the run is even read
    std::os::unix::fs::symlink(p.path().join("gone"), p.path().join("dangling")).unwrap();
    std::fs::write(p.path().join("plain"), "x").unwrap();
    std::os::unix::fs::symlink(p.path().join("plain"), p.path().join("to-file")).unwrap();
    for (out, says) in [
        ("dangling", "which does not exist"),
        ("dangling/model", "which does not exist"),
        ("plain/model", "is a file, not a directory"),
        ("to-file/model", "is a link to a file"),
    ] {
        let done = ftexp(p.path(), &["export", "experiments/none/v9", "--out", out], &[]);
        refused(&done, &[says]);
    }
    assert!(!p.path().join("gone").exists());
    assert!(temporaries(p.path()).is_empty(), "{:?}", temporaries(p.path()));
    // a link to a directory is a fine place
    std::fs::create_dir(p.path().join("real")).unwrap();
    std::os::unix::fs::symlink(p.path().join("real"), p.path().join("good")).unwrap();
    let done = export(p.path(), "good/model", &[]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(p.path().join("real/model/model.safetensors").is_file());
}

#[test]
fn temporaries_of_killed_exports_are_removed_and_live_ones_kept() {
    let p = project("gpt-neox", "lora");
    let run = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let (dead, live) = (format!(".hf.tmp-{}", gone.id()), format!(".hf.tmp-{}", std::process::id()));
    let not_ours = format!(".other.tmp-{}", gone.id());
    for name in [&dead, &live, &not_ours] {
        std::fs::create_dir(p.path().join(name)).unwrap();
        std::fs::write(p.path().join(name).join("model.safetensors"), "half").unwrap();
    }
    // a temporary whose pid now belongs to a process that started after it was written: pid reused
    std::fs::create_dir(p.path().join("old")).unwrap();
    std::fs::write(p.path().join("old/model.safetensors"), "half").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut newer = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let reused = format!(".hf.tmp-{}", newer.id());
    std::fs::rename(p.path().join("old"), p.path().join(&reused)).unwrap();
    let done = export(p.path(), "hf", &[]);
    let _ = newer.kill();
    let _ = newer.wait();
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(!p.path().join(&dead).exists(), "a dead export's temporary stays");
    assert!(!p.path().join(&reused).exists(), "a temporary of a reused pid stays");
    assert!(p.path().join(&live).join("model.safetensors").is_file(), "a live process's temporary was removed");
    assert!(p.path().join(&not_ours).exists(), "another name's temporary was removed");
    // the adapter's temporaries are named after its directory too
    std::fs::create_dir(p.path().join(format!(".peft.tmp-{}", gone.id()))).unwrap();
    let done = export(p.path(), "peft", &["--format", "peft"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let mut left = temporaries(p.path());
    left.sort();
    let mut want = vec![live, not_ours];
    want.sort();
    assert_eq!(left, want);
}
