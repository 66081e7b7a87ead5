//! Experiment outputs: `experiments/<name>/v<N>/` with the resolved `config.toml`, `run.json`,
//! `metrics.csv`, `loss.png`, `checkpoints/` and `tensorboard/`.
pub mod checkpoint;
pub mod metrics;
pub mod plot;
pub mod provenance;
pub mod tensorboard;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{check_name, Config, Precision};
use crate::error::Problems;

pub const EXPERIMENTS_DIR: &str = "experiments";

#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub version: u32,
    pub dir: PathBuf,
}

/// Creates the next free `root/<name>/v<N>/`. Creating a directory is atomic, so concurrent callers
/// each get their own version and never overwrite one another.
pub fn allocate(root: &Path, name: &str) -> Result<Experiment, Problems> {
    check_name(name).map_err(|msg| Problems::one(format!("experiment name {msg}")))?;
    if let Some(target) = std::fs::read_link(root).ok().filter(|_| !root.exists()) {
        return Err(Problems::one(format!(
            "{} is a link to {}, which does not exist; create that directory or remove the link",
            root.display(),
            target.display()
        )));
    }
    let parent = root.join(name);
    std::fs::create_dir_all(&parent).map_err(|e| Problems::io(format!("{}: cannot create: {e}", parent.display())))?;
    let mut version = versions(&parent).last().copied().unwrap_or(0) + 1;
    loop {
        let dir = parent.join(format!("v{version}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(Experiment { name: name.to_string(), version, dir }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => version += 1,
            Err(e) => return Err(Problems::io(format!("{}: cannot create: {e}", dir.display()))),
        }
    }
}

/// The version numbers under `experiments/<name>/`, ascending.
pub fn versions(parent: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('v')?.parse().ok())
        .collect();
    found.sort_unstable();
    found
}

/// The newest run directory of experiment `name` under `root`.
pub fn newest(root: &Path, name: &str) -> Result<PathBuf, Problems> {
    let parent = root.join(name);
    match versions(&parent).last() {
        Some(v) => Ok(parent.join(format!("v{v}"))),
        None => Err(Problems::one(format!("no run of \"{name}\" under {}", parent.display()))),
    }
}

/// The newest version of experiment `name` under `root` whose run completed.
pub fn newest_completed(root: &Path, name: &str) -> Option<u32> {
    let parent = root.join(name);
    let completed = |v: &u32| {
        let run = Experiment::open(&parent.join(format!("v{v}"))).and_then(|e| e.read_run_info());
        run.is_ok_and(|i| i.status == RunStatus::Completed)
    };
    versions(&parent).into_iter().rev().find(completed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    /// Stopped by Ctrl-C or SIGTERM after saving a checkpoint; `ftexp resume` continues it.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// A run's `run.json`: how it was started, where it stands, and what later stages recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub experiment: String,
    pub version: u32,
    pub status: RunStatus,
    pub ftexp_version: String,
    pub libtorch_version: String,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub host: String,
    pub device: String,
    pub command_line: Vec<String>,
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_time: Option<String>,
    /// The sweep point this run is (`ftexp run --tag`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tag: Option<String>,
    /// The run directory `ftexp rerun` reproduced.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rerun_of: Option<String>,
    /// The checkpoint the last `ftexp resume` continued from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resumed_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub precision: Option<Precision>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<DataRecord>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub base: Option<BaseRecord>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parameters: Option<ParamCount>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub results: Option<Results>,
    /// The processes of a run on several devices.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub world: Option<World>,
    /// How `train.micro_batch_size = "auto"` resolved.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub micro_batch: Option<MicroBatchRecord>,
    /// The run plan the run followed (`ftexp plan --json`'s `plan`), as the run completed it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plan: Option<serde_json::Value>,
    /// Why a failed run failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// `ftexp eval` results by split (`test`, or `test_base` for the base model).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub evaluations: BTreeMap<String, Evaluation>,
}

/// The micro-batch `train.micro_batch_size = "auto"` chose: the largest the memory plan fits in the
/// budget, halved after each trial step that ran out of memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MicroBatchRecord {
    pub chosen: u64,
    /// The plan's expected peak for it, in bytes.
    pub planned_peak_bytes: u64,
    /// 90% of the device's memory, in bytes, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub budget_bytes: Option<u64>,
    /// Micro-batches whose trial step ran out of memory.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub out_of_memory: Vec<u64>,
}

/// The prepared data a run trained on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataRecord {
    pub path: String,
    pub cache_key: String,
    pub split_sizes: BTreeMap<String, usize>,
}

/// The base model a run started from: the directory `model.checkpoint` resolved to (a hub repo's
/// download, or one version of an experiment), and a record of each of its files. Later uses of the run
/// load exactly this directory and check its files first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseRecord {
    pub checkpoint: String,
    pub dir: PathBuf,
    pub files: BTreeMap<String, provenance::FileRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCount {
    pub total: i64,
    pub trainable: i64,
}

/// The processes that trained a run together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct World {
    pub size: usize,
    /// Each rank's `host/device`, by rank.
    pub ranks: Vec<String>,
}

/// What a completed run measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub steps: u64,
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub val_perplexity: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_perplexity: Option<f64>,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: Option<f64>,
    pub train_seconds: f64,
    /// `train.early_stopping` ended the run at step `steps`, before its last step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
    /// The step of the lowest val loss of an evaluation, and that loss (`checkpoints/best` with
    /// `train.save_best`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_loss: Option<f64>,
}

/// One `ftexp eval` of a run's split.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Evaluation {
    /// The checkpoint evaluated, or `base model`.
    pub model: String,
    pub samples: usize,
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    /// The rate; older runs recorded the whole `{correct, rate, …}` record, whose rate is read.
    #[serde(deserialize_with = "rate")]
    pub exact_match: Option<f64>,
    pub time: String,
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| v.as_f64().or_else(|| v.get("rate")?.as_f64())))
}

impl Experiment {
    /// Writes the resolved config (re-runnable as it is) and a `run.json` with status `running`.
    pub fn start(&self, config: &Config, device: &str) -> Result<RunInfo, Problems> {
        self.write(
            "config.toml",
            &format!(
                "# Resolved by ftexp {}: every key, re-runnable as it is.\n{}",
                env!("CARGO_PKG_VERSION"),
                crate::config::to_toml(config)
            ),
        )?;
        let (git_commit, git_dirty) = git_state();
        let info = RunInfo {
            experiment: self.name.clone(),
            version: self.version,
            status: RunStatus::Running,
            ftexp_version: env!("CARGO_PKG_VERSION").into(),
            libtorch_version: env!("BUILT_LIBTORCH_VERSION").into(),
            git_commit,
            git_dirty,
            host: host_name(),
            device: device.into(),
            command_line: std::env::args().collect(),
            start_time: utc_now(),
            end_time: None,
            tag: None,
            rerun_of: None,
            resumed_from: None,
            precision: None,
            data: None,
            base: None,
            parameters: None,
            results: None,
            world: None,
            micro_batch: None,
            plan: None,
            error: None,
            evaluations: BTreeMap::new(),
        };
        self.write_run_info(&info)?;
        Ok(info)
    }

    pub fn write_run_info(&self, info: &RunInfo) -> Result<(), Problems> {
        self.write("run.json", &(serde_json::to_string_pretty(info).expect("run info serializes") + "\n"))
    }

    pub fn read_run_info(&self) -> Result<RunInfo, Problems> {
        let path = self.dir.join("run.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Problems::one(format!("{}: invalid run.json: {e}", path.display())))
    }

    /// Marks the run `completed`, `failed` or `interrupted`, with its end time.
    pub fn finish(&self, status: RunStatus) -> Result<(), Problems> {
        self.update(|info| {
            info.status = status;
            info.end_time = Some(utc_now());
        })
    }

    /// Marks the run `failed`, with its end time and the cause.
    pub fn fail(&self, cause: &str) -> Result<(), Problems> {
        self.update(|info| {
            info.status = RunStatus::Failed;
            info.end_time = Some(utc_now());
            info.error = Some(cause.to_string());
        })
    }

    /// Rewrites run.json after `change`.
    pub fn update(&self, change: impl FnOnce(&mut RunInfo)) -> Result<(), Problems> {
        let mut info = self.read_run_info()?;
        change(&mut info);
        self.write_run_info(&info)
    }

    /// Opens an existing run directory `experiments/<name>/v<N>`.
    pub fn open(dir: &Path) -> Result<Experiment, Problems> {
        let version = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('v'))
            .and_then(|n| n.parse().ok())
            .filter(|_| dir.join("config.toml").is_file())
            .ok_or_else(|| {
                Problems::one(format!(
                    "{}: not a run directory (experiments/<name>/v<N> with a config.toml)",
                    dir.display()
                ))
            })?;
        let name =
            dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Experiment { name, version, dir: dir.to_path_buf() })
    }

    /// Takes the run's advisory lock (`.lock` in its directory), held until the returned value is
    /// dropped: two processes never train into one run directory at once.
    pub fn lock(&self) -> Result<RunLock, Problems> {
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Problems::one(format!("{}: cannot open: {e}", path.display())))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Problems::one(format!(
                "{}: another ftexp process is training this run; wait for it to end or stop it",
                self.dir.display()
            )));
        }
        Ok(RunLock { _file: file })
    }

    /// Writes `name` in the run directory through a temporary file, so readers never see half a file.
    pub fn write(&self, name: &str, contents: &str) -> Result<(), Problems> {
        write_atomic(&self.dir.join(name), contents.as_bytes())
    }
}

/// A run's advisory lock; released when dropped (or when the process ends, however it ends).
pub struct RunLock {
    _file: std::fs::File,
}

/// Removes the temporary files and directories (`.tmp-<name>-<pid>`, `.<name>.tmp-<pid>`) that processes
/// which no longer run left in `dir` when they were killed while writing.
pub fn clean_stale(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix('.')
            .filter(|n| n.starts_with("tmp-") || n.contains(".tmp-"))
            .and_then(|n| n.rsplit('-').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        if pid.is_some_and(|pid| pid > 0 && !process_alive(pid)) {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// Whether process `pid` still runs (or exists, as a zombie, or belongs to another user).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Whether `dir` is a run directory: one with a `run.json`, or `v<N>` with a `config.toml`.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join("run.json").is_file() || Experiment::open(dir).is_ok()
}

/// The run directory `path` is, is inside, or would be taken for (a new `v<N>` beside run directories),
/// links resolved; `path` itself need not exist.
pub fn run_dir_around(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let existing = absolute.ancestors().find(|d| d.exists())?;
    let mut resolved = std::fs::canonicalize(existing).ok()?;
    for part in absolute.strip_prefix(existing).ok()?.components() {
        match part {
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            std::path::Component::Normal(p) => resolved.push(p),
            _ => {}
        }
    }
    if let Some(run) = resolved.ancestors().find(|d| is_run_dir(d)) {
        return Some(run.to_path_buf());
    }
    let name = resolved.file_name()?.to_str()?;
    let parent = resolved.parent()?;
    let versioned = name.strip_prefix('v').is_some_and(|v| v.parse::<u32>().is_ok());
    let beside = versions(parent).into_iter().map(|v| parent.join(format!("v{v}"))).find(|d| is_run_dir(d));
    beside.filter(|_| versioned)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Problems> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Problems::io(format!("{}: cannot write: {e}", path.display()))
    })
}

fn git_state() -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]);
    let dirty =
        commit.as_ref().and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"])).map(|s| !s.is_empty());
    (commit, dirty)
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// The current time as `2026-11-27T20:05:00Z`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
