//! Training a run plan into a run directory: the data prepared, the model built, the steps run with
//! evaluation, logging and checkpoints at the planned steps, and the run finished — or, on Ctrl-C,
//! a checkpoint saved that `ftexp resume` continues from.
pub mod bench;
mod best;
mod fit;
pub mod launch;
mod observe;
pub mod optimizer;
pub mod replicas;
mod run_dir;
mod run_loop;
mod track;
pub mod trainer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub use observe::RunObserver;

use crate::config::Resolved;
use crate::data::{Prepared, Split};
use crate::error::{guard, Problems};
use crate::experiment::checkpoint::TrainerState;
use crate::experiment::{self, Experiment, RunStatus};
use crate::plan::{self, Find, RunPlan};
use crate::{bail_user, methods};
use replicas::Replicas;
use trainer::Trainer;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM finish the current step, save a checkpoint and mark the run interrupted.
fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// How to start: a new version, a new version of an earlier run on its base, or continuing a run
/// directory from its newest checkpoint.
pub enum Start {
    New {
        experiments_root: PathBuf,
        /// Recorded in run.json: the sweep point (`--tag`).
        tag: Option<String>,
    },
    /// `ftexp rerun`: the run in `of` again, on exactly the base it was trained on.
    Rerun {
        experiments_root: PathBuf,
        of: PathBuf,
    },
    Resume {
        run_dir: PathBuf,
    },
}

impl Start {
    /// The run.json of the run this start continues or reproduces.
    fn recorded(&self) -> Result<Option<experiment::RunInfo>, Problems> {
        match self {
            Start::New { .. } => Ok(None),
            Start::Rerun { of: dir, .. } | Start::Resume { run_dir: dir } => {
                Experiment::open(dir)?.read_run_info().map(Some)
            }
        }
    }
}

/// The plan of a run of `r` started as `start`: a resumed or rerun run on the base it recorded (its
/// files checked unless `allow_changed_base`).
pub fn plan_for(r: &Resolved, start: &Start, allow_changed_base: bool) -> Result<RunPlan, Problems> {
    let recorded_base = match start.recorded()? {
        Some(info) => methods::recorded_base(&info, r.config.model.init, allow_changed_base)?,
        None => None,
    };
    plan::make_with(r, &Find { recorded_base, ..Find::default() })
}

/// The saved config of the run in `run_dir`, with `overrides` (`train.devices` on resume, say).
pub fn saved_config(run_dir: &Path, overrides: &[String]) -> Result<Resolved, Problems> {
    let saved = run_dir.join("config.toml");
    if !saved.is_file() {
        return Err(Problems::one(format!("{}: not a run directory (no config.toml)", run_dir.display())));
    }
    crate::config::resolve(&saved, overrides)
}

/// Continues the run in `run_dir` from its newest complete checkpoint, with the config (but for
/// `overrides`, the device count say), the base and the prepared data it started with.
pub fn resume(run_dir: &Path, overrides: &[String], allow_changed_base: bool) -> anyhow::Result<PathBuf> {
    let saved = saved_config(run_dir, overrides)?;
    let start = Start::Resume { run_dir: run_dir.to_path_buf() };
    run(&plan_for(&saved, &start, allow_changed_base)?, start)
}

/// Runs `run_dir`'s saved config again into a new version beside it (with another seed if given), on
/// the base it was trained on; the data is prepared again from the file as it is now.
pub fn rerun(run_dir: &Path, seed: Option<u64>, allow_changed_base: bool) -> anyhow::Result<PathBuf> {
    let sets: Vec<String> = seed.map(|s| format!("seed={s}")).into_iter().collect();
    let resolved = saved_config(run_dir, &sets)?;
    // The saved file sits two levels below the experiments directory, wherever this command runs from.
    let canonical =
        run_dir.canonicalize().map_err(|e| Problems::one(format!("{}: cannot read: {e}", run_dir.display())))?;
    let root = canonical.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_default();
    let start = Start::Rerun { experiments_root: root, of: run_dir.to_path_buf() };
    run(&plan_for(&resolved, &start, allow_changed_base)?, start)
}

/// What the processes of a run on several devices need before they start, done once: the base found
/// (downloaded, exported) and the data prepared into the cache.
pub fn prepare_shared(plan: &RunPlan) -> Result<(), Problems> {
    find_base(plan)?;
    crate::data::prepare_for(&plan.config).map(|_| ())
}

/// The plan's base, downloaded (or exported from the run it names) when the plan found none yet.
fn find_base(plan: &RunPlan) -> Result<methods::Located, Problems> {
    match &plan.base {
        Some(located) => Ok(located.clone()),
        None => methods::locate(&plan.config.model, true, None),
    }
}

/// A build without libtorch's fused AdamW trains with the separate operations (slower, more memory):
/// said once at the start of each run, never dropped silently.
fn note_missing_fused_adamw() {
    if let Some(why) = crate::native::Part::FusedAdamW.missing() {
        println!("note: this ftexp was built without libtorch's fused AdamW, so AdamW runs as separate operations (slower, more memory); to build it in: {why}");
    }
}

/// Runs the plan; returns its run directory. Errors leave the run marked `failed`.
///
/// In a run on several devices every process calls this (see [`launch`]): each trains a replica on its
/// share of every batch, and only rank 0 writes the run directory (the others return an empty path).
pub fn run(plan: &RunPlan, start: Start) -> anyhow::Result<PathBuf> {
    let c = &plan.config;
    plan.refuse()?;
    let replicas = launch::join(plan)?;
    let first = replicas.as_ref().is_none_or(Replicas::is_first);
    if first {
        note_missing_fused_adamw();
    }
    // The first process of each machine prepares the data and finds the base; the others then read the caches.
    let first_here = replicas.as_ref().is_none_or(|r| r.rank.local_rank == 0);
    if let (false, Some(r)) = (first_here, &replicas) {
        r.barrier()?;
    }
    let recorded = start.recorded()?;
    let (data, built, plan) = inputs(plan, &start, recorded.as_ref(), replicas.as_ref().map(|r| &r.rank))?;
    best::check_val(c, data.split(Split::Val).len())?;
    if let (true, Some(r)) = (first_here, &replicas) {
        r.barrier()?;
    }
    let schedule = plan.schedule.expect("a plan of prepared data knows its steps");
    let state = TrainerState { method: Some(c.method.kind), ..TrainerState::default() };
    let mut trainer = Trainer::new(built, c, data.split(Split::Train), schedule, state);
    trainer.replicas = replicas;
    trainer.checkpointing = plan.strategies.activation_checkpointing;
    let recorded_micro = match &start {
        Start::Resume { .. } => recorded.and_then(|i| i.micro_batch),
        _ => None,
    };
    let opened = if first { Some(run_dir::open(c, start, &mut trainer)?) } else { None };
    let exp = opened.as_ref().map(|(exp, _lock)| exp);
    catch_interrupts();
    // A libtorch error anywhere in the loop (a panic from tch) fails the run like any other error.
    let place = exp.map_or("training".to_string(), |e| e.dir.display().to_string());
    let outcome = guard(&place, || -> anyhow::Result<RunStatus> {
        let micro_batch = fit::resolve_micro_batch(&plan, &mut trainer, recorded_micro.as_ref())?;
        let plan = match &micro_batch {
            Some(m) if m.chosen != plan.micro_batch_size => plan.clone().with_micro_batch(m.chosen),
            _ => plan.clone(),
        };
        launch::start_replicas(&mut trainer, exp)?;
        let mut observers = observe::Observers::default();
        if let Some(exp) = exp {
            run_dir::record_inputs(&plan, exp, &trainer, &data)?;
            exp.update(|i| i.micro_batch = micro_batch)?;
            let (done, total) = (trainer.state.step, trainer.schedule.total);
            observers = observe::for_run(c, exp, (done, total), track::observers(c, exp, done))?;
        }
        run_loop::train_loop(&plan, &mut trainer, (exp.map(|e| e.dir.as_path()), &mut observers), &data)
    })
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    let Some(exp) = exp else {
        return outcome.map(|_| PathBuf::new());
    };
    finish(exp, outcome)
}

/// Marks the run in `exp` as the loop left it.
fn finish(exp: &Experiment, outcome: anyhow::Result<RunStatus>) -> anyhow::Result<PathBuf> {
    match outcome {
        Ok(status) => {
            exp.finish(status)?;
            if status == RunStatus::Interrupted {
                bail_user!("interrupted: checkpoint saved; continue with `ftexp resume {}`", exp.dir.display());
            }
            Ok(exp.dir.clone())
        }
        Err(e) => {
            let _ = exp.fail(&format!("{e:#}"));
            Err(e)
        }
    }
}

/// The prepared data and the built model of a run, and its plan completed with the samples as
/// prepared (and the base, when the plan found it not downloaded yet): for a resumed run its own
/// prepared splits (`recorded` is the run.json of the run it continues or reproduces); on `rank`'s
/// device in a run on several.
fn inputs(
    plan: &RunPlan,
    start: &Start,
    recorded: Option<&experiment::RunInfo>,
    rank: Option<&crate::dist::Rank>,
) -> Result<(Prepared, methods::Built, RunPlan), Problems> {
    let c = &plan.config;
    // The base's tokenizer prepares the data: find the base (downloading or exporting it) first.
    let located = find_base(plan)?;
    let recorded_key = recorded.and_then(|i| i.data.as_ref()).map(|d| d.cache_key.clone());
    let data = match start {
        Start::Resume { .. } => crate::data::prepare_for_run(c, recorded_key.as_deref())?,
        _ => crate::data::prepare_for(c)?,
    };
    if let (Start::Rerun { of, .. }, Some(key)) = (start, recorded_key.filter(|k| *k != data.key)) {
        eprintln!(
            "note: {} changed since {} prepared its data (cache key {key}, now {}): this run trains on the file as it is now",
            c.data.path,
            of.display(),
            data.key
        );
    }
    if data.split(Split::Train).is_empty() {
        let dropped: usize = data.stats.values().map(|s| s.dropped).sum();
        return Err(Problems::one(format!(
            "{}: no training samples left after preparation ({dropped} records dropped as longer than data.max_seq_length = {} tokens); raise max_seq_length, or set data.long_samples = \"truncate\"; see `ftexp prepare`",
            c.data.path, c.data.max_seq_length
        )));
    }
    let placement = launch::on_rank(plan.placement, rank);
    let built = methods::build_located(c, &located, placement)?;
    data.check_ids(built.model.spec.vocab_size)?;
    let plan = plan.clone().with_base(located).with_prepared(plan::prepared_sizes(&data.stats));
    Ok((data, built, plan))
}

/// Peak resident memory of this process in MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Resident memory of this process now, in MiB (Linux).
pub fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts [`peak_rss_mib`] again from the memory resident now (Linux's `clear_refs`), so that a
/// peak reached while loading the model does not hide training's.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
