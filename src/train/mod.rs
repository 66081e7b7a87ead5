//! Training a config into a run directory: the data prepared, the model built, the steps run with
//! evaluation, logging and checkpoints at the configured steps, and the run finished — or, on Ctrl-C,
//! a checkpoint saved that `--resume` continues from.
pub mod bench;
mod best;
mod finish;
mod fit;
pub mod launch;
pub mod optimizer;
pub mod replicas;
pub mod schedule;
pub mod trainer;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::config::Config;
use crate::data::Prepared;
use crate::error::{guard, Problems};
use crate::experiment::checkpoint::{self, TrainerState};
use crate::experiment::metrics::{Metrics, Row};
use crate::experiment::{self, BaseRecord, DataRecord, Experiment, RunLock, RunStatus};
use crate::{bail_user, methods};
use replicas::Replicas;
use trainer::{StepStats, Trainer};

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

/// The saved config of the run in `run_dir`, with `overrides` (`train.devices` on resume, say).
pub fn saved_config(run_dir: &Path, overrides: &[String]) -> Result<Config, Problems> {
    let saved = run_dir.join("config.toml");
    if !saved.is_file() {
        return Err(Problems::one(format!("{}: not a run directory (no config.toml)", run_dir.display())));
    }
    Ok(crate::config::resolve(&saved, overrides)?.config)
}

/// Continues the run in `run_dir` from its newest complete checkpoint, with the config (but for
/// `overrides`, the device count say), the base and the prepared data it started with.
pub fn resume(run_dir: &Path, overrides: &[String], allow_changed_base: bool) -> anyhow::Result<PathBuf> {
    let saved = saved_config(run_dir, overrides)?;
    run(&saved, Start::Resume { run_dir: run_dir.to_path_buf() }, allow_changed_base)
}

/// The rules a run's config must follow beyond its keys' own checks.
fn check_rules(c: &Config) -> Result<(), Problems> {
    let rules = crate::config::run_rules(c);
    match rules.is_empty() {
        true => Ok(()),
        false => Err(Problems::many(rules.into_iter().map(|(key, msg)| format!("`{key}` {msg}")).collect())),
    }
}

/// What the processes of a run on several devices need before they start, done once: the rules
/// checked, the base found (downloaded, exported) and the data prepared into the cache.
pub fn prepare_shared(c: &Config) -> Result<(), Problems> {
    check_rules(c)?;
    if c.model.init == crate::config::Init::Pretrained && c.model.tokenizer.is_none() {
        methods::locate_base(&c.model)?;
    }
    crate::data::prepare_for(c).map(|_| ())
}

/// Runs `run_dir`'s saved config again into a new version beside it (with another seed if given), on
/// the base it was trained on; the data is prepared again from the file as it is now.
pub fn rerun(run_dir: &Path, seed: Option<u64>, allow_changed_base: bool) -> anyhow::Result<PathBuf> {
    let saved = run_dir.join("config.toml");
    if !saved.is_file() {
        bail_user!("{}: not a run directory (no config.toml)", run_dir.display());
    }
    let sets: Vec<String> = seed.map(|s| format!("seed={s}")).into_iter().collect();
    let config = crate::config::resolve(&saved, &sets)?.config;
    // The saved file sits two levels below the experiments directory, wherever this command runs from.
    let canonical =
        run_dir.canonicalize().map_err(|e| Problems::one(format!("{}: cannot read: {e}", run_dir.display())))?;
    let root = canonical.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_default();
    run(&config, Start::Rerun { experiments_root: root, of: run_dir.to_path_buf() }, allow_changed_base)
}

/// A build without libtorch's fused AdamW trains with the separate operations (slower, more memory):
/// said once at the start of each run, never dropped silently.
fn note_missing_fused_adamw() {
    if let Some(why) = crate::native::Part::FusedAdamW.missing() {
        println!("note: this ftexp was built without libtorch's fused AdamW, so AdamW runs as separate operations (slower, more memory); to build it in: {why}");
    }
}

/// Runs the experiment; returns its directory. Errors leave the run marked `failed`.
///
/// In a run on several devices every process calls this (see [`launch`]): each trains a replica on its
/// share of every batch, and only rank 0 writes the run directory (the others return an empty path).
pub fn run(c: &Config, start: Start, allow_changed_base: bool) -> anyhow::Result<PathBuf> {
    check_rules(c)?;
    let replicas = launch::join(c)?;
    let first = replicas.as_ref().is_none_or(Replicas::is_first);
    if first {
        note_missing_fused_adamw();
    }
    // The first process of each machine prepares the data and finds the base; the others then read the caches.
    let first_here = replicas.as_ref().is_none_or(|r| r.rank.local_rank == 0);
    if let (false, Some(r)) = (first_here, &replicas) {
        r.barrier()?;
    }
    let (data, built) = inputs(c, &start, allow_changed_base, replicas.as_ref().map(|r| &r.rank))?;
    best::check_val(c, data.split("val").len())?;
    if let (true, Some(r)) = (first_here, &replicas) {
        r.barrier()?;
    }
    let total = schedule::step_counts(&c.train, data.split("train").len()).total;
    let state = TrainerState { method: Some(c.method.kind), ..TrainerState::default() };
    let mut trainer = Trainer::new(built, c, data.split("train"), total, state);
    trainer.replicas = replicas;
    let recorded_micro = match &start {
        Start::Resume { .. } => start.recorded()?.and_then(|i| i.micro_batch),
        _ => None,
    };
    let opened = if first { Some(open(c, start, &mut trainer)?) } else { None };
    let exp = opened.as_ref().map(|(exp, _lock)| exp);
    catch_interrupts();
    // A libtorch error anywhere in the loop (a panic from tch) fails the run like any other error.
    let place = exp.map_or("training".to_string(), |e| e.dir.display().to_string());
    let outcome = guard(&place, || -> anyhow::Result<RunStatus> {
        let micro_batch = fit::resolve_micro_batch(c, &mut trainer, recorded_micro.as_ref())?;
        launch::start_replicas(&mut trainer, exp)?;
        if let Some(exp) = exp {
            record_inputs(c, exp, &trainer, &data)?;
            exp.update(|i| i.micro_batch = micro_batch)?;
        }
        train_loop(c, &mut trainer, exp, &data)
    })
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    let Some(exp) = exp else {
        return outcome.map(|_| PathBuf::new());
    };
    match outcome {
        Ok(status) => {
            exp.finish(status)?;
            if status == RunStatus::Interrupted {
                bail_user!(
                    "interrupted: checkpoint saved; continue with `ftexp run CONFIG --resume {}`",
                    exp.dir.display()
                );
            }
            Ok(exp.dir.clone())
        }
        Err(e) => {
            let _ = exp.fail(&format!("{e:#}"));
            Err(e)
        }
    }
}

/// The prepared data and the built model of a run: for a resumed run its own prepared splits and its
/// recorded base, for a rerun its recorded base; on `rank`'s device in a run on several.
fn inputs(
    c: &Config,
    start: &Start,
    allow_changed_base: bool,
    rank: Option<&crate::dist::Rank>,
) -> Result<(Prepared, methods::Built), Problems> {
    let recorded = start.recorded()?;
    if recorded.is_none() && c.model.init == crate::config::Init::Pretrained && c.model.tokenizer.is_none() {
        // The base's tokenizer prepares the data: find the base (downloading or exporting it) first.
        methods::locate_base(&c.model)?;
    }
    let recorded_key = recorded.as_ref().and_then(|i| i.data.as_ref()).map(|d| d.cache_key.clone());
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
    if data.split("train").is_empty() {
        let dropped: usize = data.stats.values().map(|s| s.dropped).sum();
        return Err(Problems::one(format!(
            "{}: no training samples left after preparation ({dropped} records dropped as longer than data.max_seq_length = {} tokens); raise max_seq_length, or set data.long_samples = \"truncate\"; see `ftexp prepare`",
            c.data.path, c.data.max_seq_length
        )));
    }
    let base = match &recorded {
        Some(info) => methods::recorded_base(info, c.model.init, allow_changed_base)?,
        None => None,
    };
    let built = methods::build_on(&launch::on_rank(c, rank), base.as_deref())?;
    data.check_ids(built.model.spec.vocab_size)?;
    Ok((data, built))
}

/// The run directory, locked for this process: a new version, or the resumed run with the trainer
/// restored from its newest complete checkpoint that reads back whole.
fn open(c: &Config, start: Start, trainer: &mut Trainer) -> Result<(Experiment, RunLock), Problems> {
    match start {
        Start::New { experiments_root, tag } => {
            let exp = experiment::allocate(&experiments_root, &c.name)?;
            let lock = exp.lock()?;
            exp.start(c, &trainer.built.placement.device_name())?;
            exp.update(|i| i.tag = tag)?;
            Ok((exp, lock))
        }
        Start::Rerun { experiments_root, of } => {
            let exp = experiment::allocate(&experiments_root, &c.name)?;
            let lock = exp.lock()?;
            exp.start(c, &trainer.built.placement.device_name())?;
            exp.update(|i| i.rerun_of = Some(of.display().to_string()))?;
            Ok((exp, lock))
        }
        Start::Resume { run_dir } => {
            let exp = Experiment::open(&run_dir)?;
            let lock = exp.lock()?;
            if exp.read_run_info()?.status == RunStatus::Completed {
                return Err(Problems::one(format!(
                    "{}: the run is completed; there is nothing to resume (`ftexp rerun {}` runs it again as a new version)",
                    run_dir.display(),
                    run_dir.display()
                )));
            }
            experiment::clean_stale(&run_dir);
            let ckpt = restore_newest(&run_dir, trainer)?;
            exp.update(|i| {
                i.status = RunStatus::Running;
                i.end_time = None;
                i.error = None;
                i.resumed_from = Some(ckpt.display().to_string());
            })?;
            println!("resuming {} from {} (step {})", exp.dir.display(), ckpt.display(), trainer.state.step);
            Ok((exp, lock))
        }
    }
}

/// Restores the newest checkpoint of `run_dir` that reads back whole, skipping (and naming) damaged ones.
fn restore_newest(run_dir: &Path, trainer: &mut Trainer) -> Result<PathBuf, Problems> {
    let mut damaged = Vec::new();
    for ckpt in checkpoint::list(run_dir).into_iter().rev() {
        match trainer.restore(&ckpt) {
            Ok(()) => {
                for why in &damaged {
                    eprintln!("warning: skipped a damaged checkpoint: {why}");
                }
                return Ok(ckpt);
            }
            Err(e) => damaged.push(e.to_string()),
        }
    }
    let tried = if damaged.is_empty() { String::new() } else { format!(" (damaged: {})", damaged.join("; ")) };
    Err(Problems::one(format!(
        "{}: has no complete checkpoint to resume from{tried}; start a new run",
        run_dir.display()
    )))
}

/// Records what the run is made of: precision, data, base model files and parameter counts.
fn record_inputs(c: &Config, exp: &Experiment, trainer: &Trainer, data: &Prepared) -> Result<(), Problems> {
    let built = &trainer.built;
    let counts = methods::count(&built.model.spec, &c.method);
    exp.update(|i| {
        i.precision = Some(built.placement.precision);
        i.data = Some(DataRecord {
            path: c.data.path.clone(),
            cache_key: data.key.clone(),
            split_sizes: data.stats.iter().map(|(k, s)| (k.clone(), s.samples)).collect(),
        });
        i.base = Some(BaseRecord {
            checkpoint: c.model.checkpoint.clone(),
            dir: built.base_dir.clone(),
            files: experiment::provenance::record(&built.base_dir),
        });
        i.parameters = Some(counts);
    })
}

/// Where a run's loop stands, for logging.
struct Progress {
    /// The first step this process runs.
    first_step: u64,
    clock: Instant,
    elapsed_before: f64,
    tokens_before: u64,
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn tokens_per_s(&self, tokens: u64) -> f64 {
        (tokens - self.tokens_before) as f64 / self.clock.elapsed().as_secs_f64().max(1e-9)
    }
}

fn train_loop(
    c: &Config,
    trainer: &mut Trainer,
    exp: Option<&Experiment>,
    data: &Prepared,
) -> anyhow::Result<RunStatus> {
    let t = &c.train;
    let total = trainer.schedule.total;
    let resumed_at = (trainer.state.step > 0).then_some(trainer.state.step);
    let mut metrics = exp.map(|e| Metrics::open(&e.dir, resumed_at)).transpose()?;
    let progress = Progress {
        first_step: trainer.state.step + 1,
        clock: Instant::now(),
        elapsed_before: trainer.state.elapsed_s,
        tokens_before: trainer.state.tokens,
        bar: progress_bar(total, trainer.state.step, exp.is_some()),
    };
    let mut last_good: Option<PathBuf> = exp.and_then(|e| checkpoint::list(&e.dir).pop());
    let mut stopped_early = false;
    while trainer.state.step < total {
        let stop = INTERRUPTED.load(Ordering::SeqCst);
        let stats = guard(&format!("step {}", trainer.state.step + 1), || trainer.step(stop))
            .map_err(|e| fit::memory_hint(e, c, trainer, last_good.as_deref()))??;
        trainer.state.elapsed_s = progress.elapsed_before + progress.clock.elapsed().as_secs_f64();
        let step = stats.step;
        let is_eval = step.is_multiple_of(t.eval_interval) && !data.split("val").is_empty();
        let is_save = step.is_multiple_of(t.save_interval) && step < total;
        if step.is_multiple_of(t.log_interval) || step == total || is_eval || is_save {
            let loss = stats.loss.double_value(&[]);
            if !loss.is_finite() {
                progress.bar.abandon();
                let untouched = step == progress.first_step;
                return Err(non_finite_loss(trainer, (step, loss, t.learning_rate), untouched, last_good.as_deref()));
            }
            let val_loss = match is_eval {
                true => split_loss(trainer, data.split("val"), Some(t.eval_iters as usize))?,
                false => None,
            };
            if let Some(val) = val_loss {
                stopped_early = best::after_eval(c, trainer, exp, step, val)?;
            }
            if let (Some(exp), Some(metrics)) = (exp, metrics.as_mut()) {
                log_step(c, exp, trainer, metrics, &progress, &stats, loss, val_loss)?;
                if is_save {
                    last_good = Some(trainer.save(&exp.dir, &checkpoint::dir_name(step))?);
                }
            }
        }
        if stopped_early {
            if exp.is_some() {
                progress.bar.suspend(|| println!("{}", best::stopped_line(t, &trainer.state, step)));
            }
            break;
        }
        // A stop request ends the run after this step, logged like any other, with a checkpoint of it.
        if stats.stop {
            progress.bar.abandon();
            if let (Some(exp), false) = (exp, is_save) {
                trainer.save(&exp.dir, &checkpoint::dir_name(step))?;
            }
            return Ok(RunStatus::Interrupted);
        }
    }
    progress.bar.finish_and_clear();
    finish::finish(c, trainer, exp.zip(metrics.as_mut()), data, (&progress, stopped_early))?;
    Ok(RunStatus::Completed)
}

/// The error of a loss that became NaN or infinite: a damaged base when a weight no step has changed yet
/// is not finite (`untouched`: nothing has changed any weight yet), else a learning rate too high.
fn non_finite_loss(
    trainer: &mut Trainer,
    (step, loss, lr): (u64, f64, f64),
    untouched: bool,
    kept: Option<&Path>,
) -> anyhow::Error {
    if let Some(name) = trainer.non_finite_weight(untouched) {
        return Problems::one(format!(
            "step {step}: the training loss became {loss} because the weight {name} holds NaN or infinite values; the base checkpoint {} is damaged: download or export it again",
            trainer.built.base_dir.display()
        ))
        .into();
    }
    let kept = kept
        .map_or("no checkpoint was saved yet".to_string(), |p| format!("the last good checkpoint is {}", p.display()));
    Problems::one(format!(
        "step {step}: the training loss became {loss}; lower train.learning_rate (now {lr}) or raise warmup_iters; {kept}"
    ))
    .into()
}

/// The mean loss over `samples` (at most `max_batches` micro-batches), shared out over the ranks of a
/// run on several devices: each rank scores its micro-batches and the sums are added up.
fn split_loss(
    trainer: &mut Trainer,
    samples: &[crate::data::Sample],
    max_batches: Option<usize>,
) -> Result<Option<f64>, Problems> {
    let micro = trainer.micro_batch_size();
    let share = trainer.replicas.as_ref().map_or((0, 1), |r| (r.rank.rank, r.rank.world));
    let device = trainer.built.model.device();
    let (mut sum, mut count) = crate::eval::loss_sums(trainer.model(), samples, micro, max_batches, share);
    if let Some(r) = &trainer.replicas {
        let total = r.sum(&[sum, count as f64], device)?;
        (sum, count) = (total[0], total[1].round() as i64);
    }
    Ok((count > 0).then(|| sum / count as f64))
}

/// One row of metrics.csv, a progress line, and loss.png again after an evaluation.
#[allow(clippy::too_many_arguments)]
fn log_step(
    c: &Config,
    exp: &Experiment,
    trainer: &Trainer,
    metrics: &mut Metrics,
    progress: &Progress,
    stats: &StepStats,
    loss: f64,
    val_loss: Option<f64>,
) -> Result<(), Problems> {
    let (state, total) = (&trainer.state, trainer.schedule.total);
    let epoch_size = c.train.epoch_size.unwrap_or(trainer.train_len() as u64).max(1);
    let tokens_per_s = progress.tokens_per_s(state.tokens);
    metrics.push(Row {
        step: stats.step,
        epoch: state.samples_seen as f64 / epoch_size as f64,
        iter: state.iter,
        tokens: state.tokens,
        lr: stats.lr,
        train_loss: Some(loss),
        val_loss,
        tokens_per_s,
        elapsed_s: state.elapsed_s,
    })?;
    let val_text = val_loss.map(|v| format!(" val {v:.4}")).unwrap_or_default();
    let line =
        format!("step {}/{total} loss {loss:.4}{val_text} lr {:.2e} {tokens_per_s:.0} tok/s", stats.step, stats.lr);
    if progress.bar.is_hidden() {
        println!("{line}");
    } else {
        progress.bar.set_position(stats.step);
        progress.bar.set_message(line);
    }
    if val_loss.is_some() {
        experiment::plot::loss_png(&exp.dir.join("loss.png"), &finish::title(exp, c), &metrics.rows)?;
    }
    Ok(())
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

fn progress_bar(total: u64, done: u64, shown: bool) -> indicatif::ProgressBar {
    if !shown || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total).with_position(done);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").expect("a valid template"),
    );
    bar
}
