//! How long a run is and how fast it learns at each step: optimizer step counts from the data and the
//! batch settings, and the learning rate with warm-up and a schedule.
use crate::config::{LrSchedule, TrainConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCounts {
    /// Samples in one epoch.
    pub epoch_size: u64,
    pub steps_per_epoch: u64,
    /// Optimizer steps in the whole run.
    pub total: u64,
    /// Optimizer steps of linear warm-up.
    pub warmup: u64,
}

/// The step counts for a train split of `train_len` samples.
pub fn step_counts(t: &TrainConfig, train_len: usize) -> StepCounts {
    let epoch_size = t.epoch_size.unwrap_or(train_len as u64);
    let steps_per_epoch = (epoch_size / t.batch_size).max(1);
    let total = t.max_steps.unwrap_or(steps_per_epoch * t.epochs);
    StepCounts { epoch_size, steps_per_epoch, total, warmup: t.warmup_iters.min(total) }
}

/// The learning rate of a run's steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Schedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub total: u64,
    pub kind: LrSchedule,
}

impl Schedule {
    /// `t`'s schedule over `total` steps.
    pub fn new(t: &TrainConfig, total: u64) -> Schedule {
        Schedule {
            lr: t.learning_rate,
            min_lr: t.min_lr,
            warmup: t.warmup_iters.min(total),
            total,
            kind: t.lr_schedule,
        }
    }

    /// The learning rate for optimizer step `step` (1-based): linear warm-up, then cosine from `lr` to
    /// `min_lr` at the last step, or constant.
    pub fn at(&self, step: u64) -> f64 {
        let (lr, warmup) = (self.lr, self.warmup);
        if step <= warmup && warmup > 0 {
            return lr * step as f64 / warmup as f64;
        }
        if self.kind == LrSchedule::Constant || self.total <= warmup {
            return lr;
        }
        let progress = (step - warmup) as f64 / (self.total - warmup) as f64;
        self.min_lr + (lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }
}
