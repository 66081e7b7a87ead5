//! Where an export goes, and what it may write: the new directory checked before any work (not there
//! yet, no link in the way of the final rename), the tensors checked before any file is written (finite,
//! and within float16's range when written as float16), the files written into a hidden temporary
//! directory beside it (`.<name>.tmp-<pid>`) and renamed into place, and the temporaries that killed
//! exports left there removed.
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::Problems;

/// The largest finite float16 value.
const FP16_MAX: f64 = 65504.0;

/// Refuses an `out` that exists, that is a dangling link, or whose nearest existing ancestor is not a
/// directory (a file, or a link to nothing or to a file): the final rename would fail there, after all
/// the work.
pub fn check_out(out: &Path) -> Result<(), Problems> {
    let shown = out.display();
    if out.file_name().is_none() {
        return Err(Problems::one(format!("{shown}: not the name of a directory to create; name a new directory")));
    }
    if let Ok(meta) = std::fs::symlink_metadata(out) {
        if meta.file_type().is_symlink() && !out.exists() {
            return Err(dangling(out));
        }
        return Err(Problems::one(format!("{shown}: already exists; export into a new directory")));
    }
    let Some(dir) = out.ancestors().skip(1).find(|d| d.as_os_str().is_empty() || std::fs::symlink_metadata(d).is_ok())
    else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let is_link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Err(_) if is_link => Err(dangling(dir)),
        _ => Err(Problems::one(format!(
            "{shown}: {} is {}, not a directory, so {shown} cannot be created; choose another --out",
            dir.display(),
            if is_link { "a link to a file" } else { "a file" }
        ))),
    }
}

fn dangling(link: &Path) -> Problems {
    let target = std::fs::read_link(link).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
    Problems::one(format!(
        "{} is a link to {target}, which does not exist; create that directory, remove the link or choose another --out",
        link.display()
    ))
}

/// Refuses `tensors` that would be written wrong as `dtype`: NaN or infinite values anywhere, or
/// magnitudes beyond 65504 in float16 (they would turn into infinity). Names the first such tensor.
pub fn check_values(tensors: &[(String, Tensor)], dtype: Kind) -> Result<(), Problems> {
    let (mut non_finite, mut too_large) = (Vec::new(), Vec::new());
    tch::no_grad(|| {
        for (name, t) in tensors {
            let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
            if bad > 0 {
                non_finite.push((name.as_str(), bad));
            } else if dtype == Kind::Half && t.numel() > 0 {
                let largest = t.abs().max().to_kind(Kind::Double).double_value(&[]);
                if largest > FP16_MAX {
                    too_large.push((name.as_str(), largest));
                }
            }
        }
    });
    let others = |n: usize| match n {
        0 => String::new(),
        1 => " (and 1 other tensor)".into(),
        n => format!(" (and {n} other tensors)"),
    };
    if let Some((name, bad)) = non_finite.first() {
        return Err(Problems::one(format!(
            "the tensor `{name}` holds {bad} NaN or infinite values{}, which no checkpoint should hold (training diverged or the file was damaged); nothing was written: export another checkpoint (--step) or train again with a lower train.learning_rate",
            others(non_finite.len() - 1)
        )));
    }
    if let Some((name, largest)) = too_large.first() {
        return Err(Problems::one(format!(
            "the tensor `{name}` holds values up to {largest:.4e} in magnitude{}, beyond float16's largest (65504), which float16 would write as infinity; nothing was written: export as bf16 (--dtype bf16, or export.dtype = \"bf16\")",
            others(too_large.len() - 1)
        )));
    }
    Ok(())
}

/// The temporary directory an export into `out` by process `pid` writes first.
fn temp_name(out: &Path) -> String {
    format!(".{}.tmp-", out.file_name().map_or("model".into(), |n| n.to_string_lossy()))
}

/// Removes the temporaries of exports into `out` whose process no longer runs, and creates this
/// process's own, empty.
pub fn stage(out: &Path) -> Result<PathBuf, Problems> {
    remove_stale(out);
    let tmp = out.with_file_name(format!("{}{}", temp_name(out), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Problems::io(format!("{}: cannot create the export's temporary directory: {e}", tmp.display())))?;
    Ok(tmp)
}

/// Removes `.<name>.tmp-<pid>` directories beside `out` (no links, nothing else) whose process is gone,
/// or whose pid now belongs to a process that started after the directory last changed (the pid was
/// reused, so that process never wrote it); the temporary of the process writing it always stays.
pub fn remove_stale(out: &Path) {
    let prefix = temp_name(out);
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
        let owner = || crate::experiment::process_alive(pid) && !started_after(pid, &meta);
        if meta.is_dir() && pid > 0 && pid as u32 != std::process::id() && !owner() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether process `pid` started more than two seconds after `dir` last changed (Linux's `/proc`; the
/// boot time there has whole seconds). `false` when that cannot be told.
fn started_after(pid: i32, dir: &std::fs::Metadata) -> bool {
    let started = || -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (which may hold spaces) start with the state, field 3.
        let ticks: f64 = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: f64 = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
        // SAFETY: sysconf only reads a system setting.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| btime + ticks / hz as f64)
    };
    let changed = dir.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    match (started(), changed) {
        (Some(started), Some(changed)) => started > changed.as_secs_f64() + 2.0,
        _ => false,
    }
}

/// Renames the complete temporary directory `tmp` to `out`, or removes it when writing it failed.
pub fn finish(tmp: &Path, out: &Path, written: Result<(), String>, what: &str) -> Result<(), Problems> {
    let renamed = written.and_then(|()| std::fs::rename(tmp, out).map_err(|e| e.to_string()));
    renamed.map_err(|msg| {
        let _ = std::fs::remove_dir_all(tmp);
        Problems::io(format!("{}: cannot export the {what}: {msg}", out.display()))
    })
}
