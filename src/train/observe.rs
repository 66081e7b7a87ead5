//! What a run reports as it trains. The loop only emits events; observers write them down: the
//! console line, metrics.csv and loss.png, the best checkpoint, early stopping, the final checkpoint
//! and export, the results in run.json, and what `[track]` asks for (track.rs). They run on rank 0
//! only, in the order of [`for_run`].
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::trainer::{StepStats, Trainer};
use crate::config::{Config, ExportFormat, MethodKind, TrainConfig};
use crate::error::Problems;
use crate::experiment::metrics::{Metrics, Row};
use crate::experiment::{plot, Experiment, Results};
use crate::methods::export::{export, Source, DEFAULT_SHARD_BYTES};

/// A logged optimizer step.
pub struct StepEvent<'a> {
    pub stats: &'a StepStats,
    /// The step's training loss (read from the device).
    pub loss: f64,
    /// The val loss, when the step evaluated.
    pub val_loss: Option<f64>,
    pub total: u64,
    pub tokens_per_s: f64,
    /// Samples in one epoch, for the epoch column.
    pub epoch_size: u64,
}

/// The end of a run that completed (all its steps, or stopped early).
pub struct FinishEvent {
    pub final_val: Option<f64>,
    pub final_test: Option<f64>,
    /// The loss of the last logged step.
    pub final_train_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub stopped_early: bool,
}

/// One thing that watches a run. Every method has a default that does nothing.
pub trait RunObserver {
    fn on_step(&mut self, _trainer: &Trainer, _e: &StepEvent) -> Result<(), Problems> {
        Ok(())
    }

    /// After an evaluation at `step` with val loss `val`; `true` asks the run to stop.
    fn on_eval(&mut self, _trainer: &mut Trainer, _step: u64, _val: f64) -> Result<bool, Problems> {
        Ok(false)
    }

    /// A checkpoint of `step` was written into `dir`.
    fn on_checkpoint(&mut self, _step: u64, _dir: &Path) -> Result<(), Problems> {
        Ok(())
    }

    fn on_finish(&mut self, _trainer: &mut Trainer, _e: &FinishEvent) -> Result<(), Problems> {
        Ok(())
    }
}

/// The observers of a run, called in order.
#[derive(Default)]
pub struct Observers(Vec<Box<dyn RunObserver>>);

impl Observers {
    pub fn step(&mut self, trainer: &Trainer, e: &StepEvent) -> Result<(), Problems> {
        self.0.iter_mut().try_for_each(|o| o.on_step(trainer, e))
    }

    /// Whether any observer asks the run to stop.
    pub fn eval(&mut self, trainer: &mut Trainer, step: u64, val: f64) -> Result<bool, Problems> {
        let mut stop = false;
        for o in &mut self.0 {
            stop |= o.on_eval(trainer, step, val)?;
        }
        Ok(stop)
    }

    pub fn checkpoint(&mut self, step: u64, dir: &Path) -> Result<(), Problems> {
        self.0.iter_mut().try_for_each(|o| o.on_checkpoint(step, dir))
    }

    pub fn finish(&mut self, trainer: &mut Trainer, e: &FinishEvent) -> Result<(), Problems> {
        self.0.iter_mut().try_for_each(|o| o.on_finish(trainer, e))
    }
}

/// The observers of rank 0's run in `exp`, `done` of its `total` steps done before, with `tracking` (the
/// `[track]` observers) before the console's done line: the best checkpoint is kept before early stopping
/// reads its patience count, and the final checkpoint written before the results.
pub fn for_run(
    c: &Config,
    exp: &Experiment,
    (done, total): (u64, u64),
    tracking: Vec<Box<dyn RunObserver>>,
) -> Result<Observers, Problems> {
    let title = title(exp, c);
    let files = MetricsFiles {
        metrics: Metrics::open(&exp.dir, (done > 0).then_some(done))?,
        png: exp.dir.join("loss.png"),
        title,
    };
    let mut list: Vec<Box<dyn RunObserver>> = vec![Box::new(Best { t: c.train.clone(), dir: exp.dir.clone() })];
    if let Some(patience) = c.train.patience() {
        list.push(Box::new(EarlyStopping { patience }));
    }
    list.push(Box::new(files));
    list.push(Box::new(FinalModel { config: c.clone(), dir: exp.dir.clone() }));
    list.push(Box::new(RunRecord { exp: exp.clone() }));
    list.extend(tracking);
    list.push(Box::new(Console::new(&c.train, exp.dir.clone(), (done, total))));
    Ok(Observers(list))
}

/// The title of a run's loss plot.
pub fn title(exp: &Experiment, c: &Config) -> String {
    format!("{} v{} · {}", exp.name, exp.version, c.method.kind)
}

/// A progress bar on a terminal, else one line per logged step; the done line.
struct Console {
    bar: indicatif::ProgressBar,
    t: TrainConfig,
    dir: PathBuf,
}

impl Console {
    fn new(t: &TrainConfig, dir: PathBuf, (done, total): (u64, u64)) -> Console {
        let bar = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total).with_position(done);
            let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}");
            bar.set_style(style.expect("a valid template"));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Console { bar, t: t.clone(), dir }
    }
}

impl RunObserver for Console {
    fn on_step(&mut self, _trainer: &Trainer, e: &StepEvent) -> Result<(), Problems> {
        let (step, loss, lr, total) = (e.stats.step, e.loss, e.stats.lr, e.total);
        let val_text = e.val_loss.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        let line = format!("step {step}/{total} loss {loss:.4}{val_text} lr {lr:.2e} {:.0} tok/s", e.tokens_per_s);
        if self.bar.is_hidden() {
            println!("{line}");
        } else {
            self.bar.set_position(step);
            self.bar.set_message(line);
        }
        Ok(())
    }

    fn on_finish(&mut self, trainer: &mut Trainer, e: &FinishEvent) -> Result<(), Problems> {
        self.bar.finish_and_clear();
        if e.stopped_early {
            println!("{}", super::best::stopped_line(&self.t, &trainer.state, trainer.state.step));
        }
        let loss = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        println!(
            "done: {} — val loss {} test loss {} ({:.0} tokens/s)",
            self.dir.display(),
            loss(e.final_val),
            loss(e.final_test),
            e.tokens_per_s
        );
        Ok(())
    }
}

/// metrics.csv, one row per logged step, and loss.png after each evaluation and at the end.
struct MetricsFiles {
    metrics: Metrics,
    png: PathBuf,
    title: String,
}

impl RunObserver for MetricsFiles {
    fn on_step(&mut self, trainer: &Trainer, e: &StepEvent) -> Result<(), Problems> {
        let state = &trainer.state;
        self.metrics.push(Row {
            step: e.stats.step,
            epoch: state.samples_seen as f64 / e.epoch_size.max(1) as f64,
            iter: state.iter,
            tokens: state.tokens,
            lr: e.stats.lr,
            train_loss: Some(e.loss),
            val_loss: e.val_loss,
            tokens_per_s: e.tokens_per_s,
            elapsed_s: state.elapsed_s,
        })?;
        match e.val_loss {
            Some(_) => plot::loss_png(&self.png, &self.title, &self.metrics.rows),
            None => Ok(()),
        }
    }

    fn on_finish(&mut self, _trainer: &mut Trainer, e: &FinishEvent) -> Result<(), Problems> {
        if let (Some(v), Some(mut row)) = (e.final_val, self.metrics.rows.last().cloned()) {
            row.val_loss = Some(v);
            self.metrics.push(row)?;
        }
        plot::loss_png(&self.png, &self.title, &self.metrics.rows)
    }
}

/// `checkpoints/best`: rewritten whenever the val loss falls to its lowest (`train.save_best`); the
/// lowest and its step are kept in the trainer's state either way, for early stopping and resume.
struct Best {
    t: TrainConfig,
    dir: PathBuf,
}

impl RunObserver for Best {
    fn on_eval(&mut self, trainer: &mut Trainer, step: u64, val: f64) -> Result<bool, Problems> {
        let lowest = super::best::record(&mut trainer.state, &self.t, step, val);
        self.save_if(trainer, lowest)?;
        Ok(false)
    }

    fn on_finish(&mut self, trainer: &mut Trainer, e: &FinishEvent) -> Result<(), Problems> {
        let lowest = super::best::after_final(&self.t, &mut trainer.state, e.final_val);
        self.save_if(trainer, lowest)
    }
}

impl Best {
    fn save_if(&self, trainer: &Trainer, lowest: bool) -> Result<(), Problems> {
        if lowest && self.t.keeps_best() {
            trainer.save_best(&self.dir)?;
        }
        Ok(())
    }
}

/// `train.early_stopping`: stops once that many evaluations in a row did not improve on the best.
struct EarlyStopping {
    patience: u64,
}

impl RunObserver for EarlyStopping {
    fn on_eval(&mut self, trainer: &mut Trainer, _step: u64, _val: f64) -> Result<bool, Problems> {
        Ok(trainer.state.evals_without_improvement >= self.patience)
    }
}

/// The `final` checkpoint, and the exported model of a `full` run (or of `export.format`).
struct FinalModel {
    config: Config,
    dir: PathBuf,
}

impl RunObserver for FinalModel {
    fn on_finish(&mut self, trainer: &mut Trainer, _e: &FinishEvent) -> Result<(), Problems> {
        let c = &self.config;
        let final_dir = trainer.save(&self.dir, "final")?;
        // `full` runs always leave a hub checkpoint (so they can be the base of another run).
        let format = c.export.format.or((c.method.kind == MethodKind::Full).then_some(ExportFormat::Hf));
        let Some(format) = format else { return Ok(()) };
        let out = final_dir.join(if format == ExportFormat::Hf { "model" } else { "peft" });
        let built = &mut trainer.built;
        let src = Source {
            config: c,
            base_dir: &built.base_dir,
            tokenizer_dir: &built.tokenizer_dir,
            config_json: &built.config_json,
        };
        export(&mut built.model, &src, format, c.export.dtype, DEFAULT_SHARD_BYTES, &out).map(|_| ())
    }
}

/// The results in run.json.
struct RunRecord {
    exp: Experiment,
}

impl RunObserver for RunRecord {
    fn on_finish(&mut self, trainer: &mut Trainer, e: &FinishEvent) -> Result<(), Problems> {
        let state = &trainer.state;
        let results = Results {
            steps: state.step,
            final_train_loss: e.final_train_loss,
            final_val_loss: e.final_val,
            val_perplexity: e.final_val.map(f64::exp),
            test_loss: e.final_test,
            test_perplexity: e.final_test.map(f64::exp),
            tokens: state.tokens,
            tokens_per_s: e.tokens_per_s,
            peak_rss_mib: super::peak_rss_mib(),
            train_seconds: state.elapsed_s,
            stopped_early: e.stopped_early,
            best_step: state.best_step,
            best_val_loss: state.best_val_loss,
        };
        self.exp.update(|i| i.results = Some(results))
    }
}
