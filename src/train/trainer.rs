//! The one training step, shared by `ftexp run` and `ftexp bench`: the next batch of the seeded order,
//! forward and backward over its micro-batches with their gradients added up, then one AdamW update.
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::optimizer::AdamW;
use super::schedule::Schedule;
use crate::config::{Config, TrainConfig};
use crate::data::batches::{self, Batch, Order};
use crate::data::Sample;
use crate::error::Problems;
use crate::eval::supervised_loss;
use crate::experiment::checkpoint::{self, TrainerState};
use crate::methods::Built;
use crate::model::Gpt;

pub struct Trainer<'a> {
    pub built: Built,
    pub opt: AdamW,
    pub state: TrainerState,
    pub schedule: Schedule,
    train: &'a [Sample],
    order: Order,
    t: TrainConfig,
    seed: u64,
    /// `data.packing`: the row length samples are packed into.
    packing: Option<usize>,
}

/// The sizes of one micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct MicroBatch {
    /// Non-padding tokens.
    pub real_tokens: i64,
    pub supervised: i64,
    /// Positions of the input tensor, padding included.
    pub width: i64,
    pub rows: i64,
}

pub struct StepStats {
    pub step: u64,
    /// The mean loss per supervised token, before the update; left on the device (reading it is a
    /// host sync).
    pub loss: Tensor,
    pub lr: f64,
    pub micro_batches: Vec<MicroBatch>,
}

impl StepStats {
    pub fn real_tokens(&self) -> u64 {
        self.micro_batches.iter().map(|b| b.real_tokens as u64).sum()
    }
}

impl<'a> Trainer<'a> {
    /// A trainer of `built` on `train` for `total` steps, continuing from `state`.
    pub fn new(built: Built, c: &Config, train: &'a [Sample], total: u64, state: TrainerState) -> Trainer<'a> {
        let opt = AdamW::new(&built.trainable);
        Trainer {
            built,
            opt,
            state,
            schedule: Schedule::new(&c.train, total),
            train,
            order: Order::new(c.seed, train.len()),
            t: c.train.clone(),
            seed: c.seed,
            packing: c.data.packing.then_some(c.data.max_seq_length as usize),
        }
    }

    /// Samples in the train split.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    pub fn model(&mut self) -> &mut Gpt {
        &mut self.built.model
    }

    /// One optimizer step.
    pub fn step(&mut self) -> StepStats {
        let step = self.state.step + 1;
        seed_step(self.seed, step);
        let device = self.built.model.device();
        let step_batches =
            batches::for_step(self.train, &mut self.order, &mut self.state.samples_seen, &self.t, self.packing, device);
        let loss = accumulate_gradients(&mut self.built.model, &step_batches);
        let micro_batches: Vec<MicroBatch> = step_batches
            .iter()
            .map(|b| {
                let size = b.inputs.size();
                MicroBatch { real_tokens: b.real_tokens, supervised: b.supervised, width: size[1], rows: size[0] }
            })
            .collect();
        let lr = self.schedule.at(step);
        self.opt.update(lr, &self.t);
        self.state.step = step;
        self.state.iter += step_batches.len() as u64;
        let stats = StepStats { step, loss, lr, micro_batches };
        self.state.tokens += stats.real_tokens();
        stats
    }

    /// The name of a weight holding NaN or infinite values: among the frozen ones, or all with `all`.
    pub fn non_finite_weight(&mut self, all: bool) -> Option<String> {
        let mut found = None;
        self.built.model.visit(&mut |name, t| {
            if found.is_none() && (all || !t.requires_grad()) {
                let finite = tch::no_grad(|| t.isfinite().all().int64_value(&[]) != 0);
                if !finite {
                    found = Some(name.to_string());
                }
            }
        });
        found
    }

    /// Saves the trained tensors, the optimizer's moments and the trainer's position as checkpoint
    /// `name` of the run in `run_dir`.
    pub fn save(&self, run_dir: &Path, name: &str) -> Result<PathBuf, Problems> {
        let trained: Vec<(String, Tensor)> =
            self.built.trainable.iter().map(|t| (t.name.clone(), t.tensor.shallow_clone())).collect();
        checkpoint::save(run_dir, name, &trained, &self.opt.state(), &self.state)
    }

    /// Restores the trained tensors, the moments and the position of checkpoint `dir`.
    pub fn restore(&mut self, dir: &Path) -> Result<(), Problems> {
        crate::methods::load_trained(&self.built.trainable, dir)?;
        self.opt
            .load_state(checkpoint::read_tensors(&dir.join(checkpoint::OPTIMIZER))?)
            .map_err(|e| Problems::one(format!("{}: {e}", dir.display())))?;
        self.state = checkpoint::read_state(dir)?;
        Ok(())
    }
}

/// Dropout masks depend on the run's seed and the step alone, so a resumed run (and `ftexp bench`)
/// draws the same ones.
fn seed_step(seed: u64, step: u64) {
    tch::manual_seed((seed as i64).wrapping_mul(1_000_003).wrapping_add(step as i64));
}

/// Forward and backward passes over the micro-batches of one optimizer step, their gradients added up;
/// returns the step's mean loss per supervised token.
fn accumulate_gradients(model: &mut Gpt, step_batches: &[Batch]) -> Tensor {
    model.training = true;
    let supervised: i64 = step_batches.iter().map(|b| b.supervised).sum::<i64>().max(1);
    let mut step_loss = Tensor::zeros([], (Kind::Float, model.device()));
    for batch in step_batches {
        let loss = supervised_loss(model, batch, tch::Reduction::Sum) / supervised as f64;
        loss.backward();
        step_loss += loss.detach();
    }
    step_loss
}
