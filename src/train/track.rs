//! `[track]`: where a run's curves go besides metrics.csv and loss.png. `track.tensorboard` writes
//! TensorBoard event files into the run's `tensorboard/` directory (see
//! [`EventWriter`](crate::experiment::tensorboard::EventWriter)): the scalars of every logged step, the
//! final losses, and the resolved config as text once at the start.
use super::observe::{FinishEvent, RunObserver, StepEvent};
use super::trainer::Trainer;
use crate::config::{to_toml, Config};
use crate::error::Problems;
use crate::experiment::tensorboard::EventWriter;
use crate::experiment::Experiment;

/// The directory of a run's TensorBoard event files, inside the run directory.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// The observers `[track]` asks for on rank 0's run in `exp`, `done` steps trained before (a resumed run).
pub(super) fn observers(c: &Config, exp: &Experiment, done: u64) -> Vec<Box<dyn RunObserver>> {
    let mut list: Vec<Box<dyn RunObserver>> = Vec::new();
    if c.track.tensorboard {
        list.push(Box::new(TensorBoard::start(c, exp, done)));
    }
    list
}

/// The scalars of each logged step (`train/loss`, `train/learning_rate`, `train/tokens_per_s`,
/// `train/grad_norm`, and `val/loss` at evaluations), the final `val/final_loss` and `test/loss` at the
/// last step, and the text `config` at step 0.
struct TensorBoard {
    writer: EventWriter,
}

impl TensorBoard {
    /// A new events file; a resumed run's restarts at the first step it trains, and the config is
    /// written by the run that started at step 0 only.
    fn start(c: &Config, exp: &Experiment, done: u64) -> TensorBoard {
        let writer = EventWriter::start(&exp.dir.join(TENSORBOARD_DIR), done + 1);
        if done == 0 {
            writer.text(0, "config", &format!("```toml\n{}```\n", to_toml(c)));
        }
        TensorBoard { writer }
    }
}

impl RunObserver for TensorBoard {
    fn on_step(&mut self, _trainer: &Trainer, e: &StepEvent) -> Result<(), Problems> {
        let mut values = vec![("train/loss", e.loss), ("train/learning_rate", e.stats.lr)];
        values.push(("train/tokens_per_s", e.tokens_per_s));
        if let Some(norm) = &e.stats.grad_norm {
            values.push(("train/grad_norm", norm.double_value(&[])));
        }
        if let Some(val) = e.val_loss {
            values.push(("val/loss", val));
        }
        self.writer.scalars(e.stats.step, &values);
        Ok(())
    }

    fn on_finish(&mut self, trainer: &mut Trainer, e: &FinishEvent) -> Result<(), Problems> {
        let finals = [("val/final_loss", e.final_val), ("test/loss", e.final_test)];
        let values: Vec<(&str, f64)> = finals.into_iter().filter_map(|(tag, v)| Some((tag, v?))).collect();
        self.writer.scalars(trainer.state.step, &values);
        self.writer.close();
        Ok(())
    }
}
