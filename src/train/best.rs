//! The best checkpoint and early stopping: after each evaluation the lowest val loss so far and its step
//! are kept in the trainer's state (so they survive a resume), `checkpoints/best` is rewritten when it
//! fell, and the run stops once `train.early_stopping` evaluations in a row did not improve on it.
use super::trainer::Trainer;
use crate::config::{Config, TrainConfig};
use crate::error::Problems;
use crate::experiment::checkpoint::TrainerState;
use crate::experiment::Experiment;

/// Counts an evaluation's val loss at `step` into `state`; returns whether it is the lowest so far.
/// Only a fall of more than `min_delta` below the best resets the patience count.
pub(super) fn record(state: &mut TrainerState, t: &TrainConfig, step: u64, val: f64) -> bool {
    let finite = val.is_finite();
    let improved = finite && state.best_val_loss.is_none_or(|best| val < best - t.min_delta);
    let lowest = finite && state.best_val_loss.is_none_or(|best| val < best);
    state.evals_without_improvement = if improved { 0 } else { state.evals_without_improvement + 1 };
    if lowest {
        (state.best_val_loss, state.best_step) = (Some(val), Some(step));
    }
    lowest
}

/// After the evaluation at `step`: the best kept (by rank 0, which writes `exp`), and whether to stop
/// early, the same answer on every rank.
pub(super) fn after_eval(
    c: &Config,
    trainer: &mut Trainer,
    exp: Option<&Experiment>,
    step: u64,
    val: f64,
) -> Result<bool, Problems> {
    let lowest = record(&mut trainer.state, &c.train, step, val);
    save_if_lowest(c, trainer, exp, lowest)?;
    let Some(patience) = c.train.patience() else { return Ok(false) };
    let mut stop = trainer.state.evals_without_improvement >= patience;
    if let Some(r) = &trainer.replicas {
        // Every rank sees the same summed val loss; agreeing on the answer anyway means no rank can
        // ever wait alone in the next step's exchange.
        stop = r.sum(&[f64::from(u8::from(stop))], trainer.built.model.device())?[0] > 0.0;
    }
    Ok(stop)
}

/// The final val loss counts as one more evaluation when the last step had none.
pub(super) fn after_final(
    c: &Config,
    trainer: &mut Trainer,
    exp: Option<&Experiment>,
    val: Option<f64>,
) -> Result<(), Problems> {
    let step = trainer.state.step;
    let Some(val) = val.filter(|_| !step.is_multiple_of(c.train.eval_interval)) else { return Ok(()) };
    let patience = trainer.state.evals_without_improvement;
    let lowest = record(&mut trainer.state, &c.train, step, val);
    trainer.state.evals_without_improvement = patience;
    save_if_lowest(c, trainer, exp, lowest)
}

fn save_if_lowest(c: &Config, trainer: &Trainer, exp: Option<&Experiment>, lowest: bool) -> Result<(), Problems> {
    if let (true, true, Some(exp)) = (lowest, c.train.keeps_best(), exp) {
        trainer.save_best(&exp.dir)?;
    }
    Ok(())
}

/// What a run stopped early at `step` prints.
pub(super) fn stopped_line(t: &TrainConfig, state: &TrainerState, step: u64) -> String {
    let by = if t.min_delta > 0.0 { format!(" by more than min_delta = {}", t.min_delta) } else { String::new() };
    let best = match (state.best_val_loss, state.best_step) {
        (Some(loss), Some(at)) => format!(" (best {loss:.4} at step {at})"),
        _ => String::new(),
    };
    format!(
        "stopped early at step {step}: the val loss has not improved{by} for {} evaluations{best}",
        state.evals_without_improvement
    )
}

/// The val split the best and early stopping watch must hold samples.
pub(super) fn check_val(c: &Config, val_samples: usize) -> Result<(), Problems> {
    let t = &c.train;
    let key = match (t.patience(), t.save_best) {
        _ if val_samples > 0 => return Ok(()),
        (Some(_), _) => "train.early_stopping",
        (None, Some(true)) => "train.save_best",
        _ => return Ok(()),
    };
    Err(Problems::one(format!(
        "{}: the val split is empty (data.split.val = {}), but `{key}` watches the val loss; raise data.split.val or add records, or unset {key}",
        c.data.path, c.data.split.val
    )))
}
