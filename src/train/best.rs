//! The best checkpoint and early stopping: after each evaluation the lowest val loss so far and its step
//! are kept in the trainer's state (so they survive a resume), `checkpoints/best` is rewritten when it
//! fell, and the run stops once `train.early_stopping` evaluations in a row did not improve on it.
use crate::config::{Config, TrainConfig};
use crate::error::Problems;
use crate::experiment::checkpoint::TrainerState;

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

/// The final val loss counts as one more evaluation when the last step had none (the patience count
/// stays); returns whether it is the lowest.
pub(super) fn after_final(t: &TrainConfig, state: &mut TrainerState, val: Option<f64>) -> bool {
    let step = state.step;
    let Some(val) = val.filter(|_| !step.is_multiple_of(t.eval_interval)) else { return false };
    let patience = state.evals_without_improvement;
    let lowest = record(state, t, step, val);
    state.evals_without_improvement = patience;
    lowest
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
