//! The one training step, shared by `ftexp run` and `ftexp bench`: the next batch of the seeded order,
//! forward and backward over its micro-batches with their gradients added up, then one AdamW update.
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::optimizer::AdamW;
use super::replicas::Replicas;
use crate::config::{Config, TrainConfig};
use crate::data::batches::{self, Batch, MicroBatch, Order};
use crate::data::Sample;
use crate::error::Problems;
use crate::eval::Objective;
use crate::experiment::checkpoint::{self, TrainerState};
use crate::methods::Built;
use crate::model::lora::row_seed;
use crate::model::staged::HEAD_CHUNK_BYTES;
use crate::model::Gpt;
use crate::plan::steps::Schedule;

pub struct Trainer<'a> {
    pub built: Built,
    pub opt: AdamW,
    pub state: TrainerState,
    pub schedule: Schedule,
    train: &'a [Sample],
    order: Order,
    t: TrainConfig,
    seed: u64,
    /// The other ranks of a data-parallel run.
    pub replicas: Option<Replicas>,
    /// `data.packing`: the row length samples are packed into.
    packing: Option<usize>,
    /// What the steps minimise.
    pub objective: Objective,
    /// Activation checkpointing (the plan's choice).
    pub checkpointing: bool,
    /// The most memory one chunk of the LM head's scores may take ([`HEAD_CHUNK_BYTES`]; `ftexp bench
    /// --head-chunk-bytes` alone changes it).
    pub head_chunk_bytes: i64,
}

pub struct StepStats {
    pub step: u64,
    /// The mean loss per supervised token, before the update; left on the device (reading it is a
    /// host sync).
    pub loss: Tensor,
    pub lr: f64,
    /// The gradients' global L2 norm before clipping, left on the device; `None` with clipping off.
    pub grad_norm: Option<Tensor>,
    /// All micro-batches of the step, over every rank.
    pub micro_batches: Vec<MicroBatch>,
    /// Some rank was asked to stop: every rank learns it at the same step.
    pub stop: bool,
}

impl StepStats {
    pub fn real_tokens(&self) -> u64 {
        self.micro_batches.iter().map(|b| b.real_tokens as u64).sum()
    }
}

impl<'a> Trainer<'a> {
    /// A trainer of `built` on `train` over the steps of `schedule`, continuing from `state`.
    pub fn new(built: Built, c: &Config, train: &'a [Sample], schedule: Schedule, state: TrainerState) -> Trainer<'a> {
        let opt = AdamW::new(&built.trainable);
        Trainer {
            built,
            opt,
            state,
            schedule,
            train,
            order: Order::new(c.seed, train.len()),
            t: c.train.clone(),
            seed: c.seed,
            replicas: None,
            packing: c.data.packing.then_some(c.data.max_seq_length as usize),
            objective: Objective::Sft,
            checkpointing: false,
            head_chunk_bytes: HEAD_CHUNK_BYTES,
        }
    }

    /// Samples in the train split.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    pub fn micro_batch_size(&self) -> usize {
        self.t.micro_batch_size.max(1) as usize
    }

    /// Sets the micro-batch (`micro_batch_size = "auto"` resolved).
    pub fn set_micro_batch_size(&mut self, micro: u64) {
        self.t.micro_batch_size = micro;
    }

    pub fn model(&mut self) -> &mut Gpt {
        &mut self.built.model
    }

    /// One optimizer step; `stop` asks every rank to stop after it.
    pub fn step(&mut self, stop: bool) -> Result<StepStats, Problems> {
        let step = self.state.step + 1;
        seed_step(self.seed, step);
        let device = self.built.model.device();
        let share = self.replicas.as_ref().map_or((0, 1), |r| (r.rank.rank, r.rank.world));
        let (train, order, seen) = (self.train, &mut self.order, &mut self.state.samples_seen);
        let batches = batches::for_step(train, order, seen, &self.t, self.packing, device, share);
        let supervised = batches.supervised();
        let model = &mut self.built.model;
        let how = (self.objective, self.checkpointing, self.head_chunk_bytes);
        let mut loss = accumulate_gradients(model, how, &batches.mine, supervised, self.seed);
        let mut stop = stop;
        if let Some(replicas) = self.replicas.as_mut() {
            let exchanged = replicas.exchange(&self.built.trainable, &loss, stop)?;
            (loss, stop) = (exchanged.loss, exchanged.stop);
        }
        let lr = self.schedule.at(step);
        let grad_norm = self.opt.update(lr, &self.t);
        self.state.step = step;
        self.state.iter += batches.all.len() as u64;
        let stats = StepStats { step, loss, lr, grad_norm, micro_batches: batches.all, stop };
        self.state.tokens += stats.real_tokens();
        Ok(stats)
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
        checkpoint::save(run_dir, name, &self.trained(), &self.opt.state(), &self.state)
    }

    /// Saves the trained tensors and the position, without the optimizer's moments, as `checkpoints/best`.
    pub fn save_best(&self, run_dir: &Path) -> Result<PathBuf, Problems> {
        checkpoint::save(run_dir, checkpoint::BEST, &self.trained(), &[], &self.state)
    }

    fn trained(&self) -> Vec<(String, Tensor)> {
        self.built.trainable.iter().map(|t| (t.name.clone(), t.tensor.shallow_clone())).collect()
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

/// Anything random in a step that is not a training micro-batch's dropout (drawn per sample, see
/// [`RowSeeds`](crate::model::lora::RowSeeds)) depends on the run's seed and the step alone, so a
/// resumed run (and `ftexp bench`) draws the same.
fn seed_step(seed: u64, step: u64) {
    tch::manual_seed((seed as i64).wrapping_mul(1_000_003).wrapping_add(step as i64));
}

/// Forward and backward passes over the micro-batches of one optimizer step, their gradients added up;
/// returns their share of the step's mean loss per supervised token (`supervised` over all ranks).
/// Each row's dropout masks come from the run's `seed` and the row's sample number.
fn accumulate_gradients(
    model: &mut Gpt,
    (objective, checkpointing, head_chunk_bytes): (Objective, bool, i64),
    batches: &[Batch],
    supervised: i64,
    seed: u64,
) -> Tensor {
    model.training = true;
    let mut step_loss = Tensor::zeros([], (Kind::Float, model.device()));
    let scale = 1.0 / supervised.max(1) as f64;
    for batch in batches {
        model.dropout_seeds = batch.numbers.iter().map(|&n| row_seed(seed, n)).collect();
        step_loss += objective.backward(model, batch, checkpointing, head_chunk_bytes, scale) * scale;
    }
    model.dropout_seeds.clear();
    step_loss
}
