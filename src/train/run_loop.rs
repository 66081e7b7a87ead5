//! The steps of a run: each one trained, its loss checked, evaluated and checkpointed at the
//! configured steps, and every event passed to the observers; the end evaluated on the val and test
//! splits.
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::observe::{FinishEvent, Observers, StepEvent};
use super::trainer::Trainer;
use super::{fit, INTERRUPTED};
use crate::data::{Prepared, Sample, Split};
use crate::error::{guard, Problems};
use crate::experiment::checkpoint;
use crate::experiment::RunStatus;
use crate::plan::RunPlan;

/// Where the loop stands, for tokens/s and the elapsed time.
struct Clock {
    /// The first step this process runs.
    first_step: u64,
    clock: Instant,
    elapsed_before: f64,
    tokens_before: u64,
}

impl Clock {
    fn tokens_per_s(&self, tokens: u64) -> f64 {
        (tokens - self.tokens_before) as f64 / self.clock.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Trains `trainer` to the plan's last step; `run_dir` is rank 0's (the only one that writes).
pub(super) fn train_loop(
    plan: &RunPlan,
    trainer: &mut Trainer,
    (run_dir, observers): (Option<&Path>, &mut Observers),
    data: &Prepared,
) -> anyhow::Result<RunStatus> {
    let t = &plan.config.train;
    let total = trainer.schedule.total;
    let s = &trainer.state;
    let clock =
        Clock { first_step: s.step + 1, clock: Instant::now(), elapsed_before: s.elapsed_s, tokens_before: s.tokens };
    let mut last_good: Option<PathBuf> = run_dir.and_then(|d| checkpoint::list(d).pop());
    let (mut stopped_early, mut last_loss) = (false, None);
    let epoch_size = t.epoch_size.unwrap_or(trainer.train_len() as u64);
    while trainer.state.step < total {
        let stop = INTERRUPTED.load(Ordering::SeqCst);
        let stats = guard(&format!("step {}", trainer.state.step + 1), || trainer.step(stop))
            .map_err(|e| fit::memory_hint(e, plan, trainer, last_good.as_deref()))??;
        trainer.state.elapsed_s = clock.elapsed_before + clock.clock.elapsed().as_secs_f64();
        let step = stats.step;
        let is_eval = step.is_multiple_of(t.eval_interval) && !data.split(Split::Val).is_empty();
        let is_save = step.is_multiple_of(t.save_interval) && step < total;
        if step.is_multiple_of(t.log_interval) || step == total || is_eval || is_save {
            let loss = stats.loss.double_value(&[]);
            if !loss.is_finite() {
                let untouched = step == clock.first_step;
                return Err(non_finite_loss(trainer, (step, loss, t.learning_rate), untouched, last_good.as_deref()));
            }
            let val_loss = match is_eval {
                true => split_loss(trainer, data.split(Split::Val), Some(t.eval_iters as usize))?,
                false => None,
            };
            if let Some(val) = val_loss {
                let asked = observers.eval(trainer, step, val)?;
                stopped_early = agree(trainer, asked, t.patience().is_some())?;
            }
            let tokens_per_s = clock.tokens_per_s(trainer.state.tokens);
            let event = StepEvent { stats: &stats, loss, val_loss, total, tokens_per_s, epoch_size };
            observers.step(trainer, &event)?;
            last_loss = Some(loss);
            if let (Some(dir), true) = (run_dir, is_save) {
                last_good = Some(trainer.save(dir, &checkpoint::dir_name(step))?);
                observers.checkpoint(step, last_good.as_deref().expect("just saved"))?;
            }
        }
        if stopped_early {
            break;
        }
        // A stop request ends the run after this step, logged like any other, with a checkpoint of it.
        if stats.stop {
            if let (Some(dir), false) = (run_dir, is_save) {
                let saved = trainer.save(dir, &checkpoint::dir_name(step))?;
                observers.checkpoint(step, &saved)?;
            }
            return Ok(RunStatus::Interrupted);
        }
    }
    let final_val = split_loss(trainer, data.split(Split::Val), None)?;
    let final_test = split_loss(trainer, data.split(Split::Test), None)?;
    let tokens_per_s = clock.tokens_per_s(trainer.state.tokens);
    let end = FinishEvent { final_val, final_test, final_train_loss: last_loss, tokens_per_s, stopped_early };
    observers.finish(trainer, &end)?;
    Ok(RunStatus::Completed)
}

/// Whether every rank stops: rank 0's observers decide (`asked`), the others learn it in the same
/// collective, so no rank can ever wait alone in the next step's exchange. Only runs that can stop
/// early (`can_stop`) take part.
fn agree(trainer: &Trainer, asked: bool, can_stop: bool) -> Result<bool, Problems> {
    match (&trainer.replicas, can_stop) {
        (Some(r), true) => Ok(r.sum(&[f64::from(u8::from(asked))], trainer.built.model.device())?[0] > 0.0),
        _ => Ok(asked),
    }
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
fn split_loss(trainer: &mut Trainer, samples: &[Sample], max_batches: Option<usize>) -> Result<Option<f64>, Problems> {
    let micro = trainer.micro_batch_size();
    let share = trainer.replicas.as_ref().map_or((0, 1), |r| (r.rank.rank, r.rank.world));
    let device = trainer.built.model.device();
    let objective = trainer.objective;
    let (mut sum, mut count) = crate::eval::loss_sums(trainer.model(), objective, samples, micro, max_batches, share);
    if let Some(r) = &trainer.replicas {
        let total = r.sum(&[sum, count as f64], device)?;
        (sum, count) = (total[0], total[1].round() as i64);
    }
    Ok((count > 0).then(|| sum / count as f64))
}
