//! Training a config into a run directory: the data prepared, the model built, the steps run with
//! evaluation, logging and checkpoints at the configured steps, and the run finished — or, on Ctrl-C,
//! a checkpoint saved that `--resume` continues from.
pub mod bench;
mod finish;
pub mod optimizer;
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

/// Continues the run in `run_dir` from its newest complete checkpoint, with the config, the base and the
/// prepared data it started with.
pub fn resume(run_dir: &Path, allow_changed_base: bool) -> anyhow::Result<PathBuf> {
    let saved = crate::config::resolve(&run_dir.join("config.toml"), &[])?.config;
    run(&saved, Start::Resume { run_dir: run_dir.to_path_buf() }, allow_changed_base)
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

/// Runs the experiment; returns its directory. Errors leave the run marked `failed`.
pub fn run(c: &Config, start: Start, allow_changed_base: bool) -> anyhow::Result<PathBuf> {
    if c.train.devices > 1 {
        bail_user!(
            "train.devices = {}: training on several devices is not supported yet; set train.devices = 1",
            c.train.devices
        );
    }
    let rules = crate::config::run_rules(c);
    if !rules.is_empty() {
        return Err(Problems(rules.into_iter().map(|(key, msg)| format!("`{key}` {msg}")).collect()).into());
    }
    let (data, built) = inputs(c, &start, allow_changed_base)?;
    let total = schedule::step_counts(&c.train, data.split("train").len()).total;
    let state = TrainerState { method: Some(c.method.kind), ..TrainerState::default() };
    let mut trainer = Trainer::new(built, c, data.split("train"), total, state);
    let (exp, _lock) = open(c, start, &mut trainer)?;
    record_inputs(c, &exp, &trainer, &data)?;
    catch_interrupts();
    // A libtorch error anywhere in the loop (a panic from tch) fails the run like any other error.
    let outcome = guard(&exp.dir.display().to_string(), || train_loop(c, &mut trainer, &exp, &data))
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
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
/// recorded base, for a rerun its recorded base.
fn inputs(c: &Config, start: &Start, allow_changed_base: bool) -> Result<(Prepared, methods::Built), Problems> {
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
    let built = methods::build_on(c, base.as_deref())?;
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

fn train_loop(c: &Config, trainer: &mut Trainer, exp: &Experiment, data: &Prepared) -> anyhow::Result<RunStatus> {
    let t = &c.train;
    let total = trainer.schedule.total;
    let mut metrics = Metrics::open(&exp.dir, (trainer.state.step > 0).then_some(trainer.state.step))?;
    let progress = Progress {
        first_step: trainer.state.step + 1,
        clock: Instant::now(),
        elapsed_before: trainer.state.elapsed_s,
        tokens_before: trainer.state.tokens,
        bar: progress_bar(total, trainer.state.step),
    };
    let mut last_good: Option<PathBuf> = checkpoint::list(&exp.dir).pop();
    while trainer.state.step < total {
        if INTERRUPTED.load(Ordering::SeqCst) {
            progress.bar.abandon();
            trainer.save(&exp.dir, &checkpoint::dir_name(trainer.state.step))?;
            return Ok(RunStatus::Interrupted);
        }
        let stats = guard(&format!("step {}", trainer.state.step + 1), || trainer.step())?;
        trainer.state.elapsed_s = progress.elapsed_before + progress.clock.elapsed().as_secs_f64();
        let step = stats.step;
        let is_eval = step.is_multiple_of(t.eval_interval) && !data.split("val").is_empty();
        let is_save = step.is_multiple_of(t.save_interval) && step < total;
        if !(step.is_multiple_of(t.log_interval) || step == total || is_eval || is_save) {
            continue;
        }
        let loss = stats.loss.double_value(&[]);
        if !loss.is_finite() {
            progress.bar.abandon();
            // Weights no step has changed yet that are not finite come from the base, not the learning rate.
            let untouched = step == progress.first_step;
            if let Some(name) = trainer.non_finite_weight(untouched) {
                bail_user!(
                    "step {step}: the training loss became {loss} because the weight {name} holds NaN or infinite values; the base checkpoint {} is damaged: download or export it again",
                    trainer.built.base_dir.display()
                );
            }
            let kept = last_good.as_ref().map_or("no checkpoint was saved yet".to_string(), |p| {
                format!("the last good checkpoint is {}", p.display())
            });
            bail_user!(
                "step {step}: the training loss became {loss}; lower train.learning_rate (now {}) or raise warmup_iters; {kept}",
                t.learning_rate
            );
        }
        let (micro, eval_iters) = (t.micro_batch_size as usize, Some(t.eval_iters as usize));
        let val_loss = match is_eval {
            true => crate::eval::mean_loss(trainer.model(), data.split("val"), micro, eval_iters),
            false => None,
        };
        log_step(c, exp, trainer, &mut metrics, &progress, &stats, loss, val_loss)?;
        if is_save {
            last_good = Some(trainer.save(&exp.dir, &checkpoint::dir_name(step))?);
        }
    }
    progress.bar.finish_and_clear();
    finish::finish(c, trainer, exp, data, &mut metrics, &progress)?;
    Ok(RunStatus::Completed)
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
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

fn progress_bar(total: u64, done: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total).with_position(done);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").expect("a valid template"),
    );
    bar
}
