//! What to change when a run does not fit: a ladder of settings, cheapest in speed first
//! (activation checkpointing, a smaller micro-batch, an 8-bit then a 4-bit base, shorter samples),
//! each rung adding to the ones before and planned by the plan itself, up to the first that fits.
//! Settings the config already has are never advised.
use serde::Serialize;

use super::{RunPlan, Strategies};
use crate::config::{MethodKind, Quantize, Switch};
use crate::methods::memory;

/// Settings that together would fit, with the plan's total for them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Advice {
    /// `key = value`, as `--set` takes them.
    pub settings: Vec<String>,
    pub total: u64,
    pub fits: bool,
}

impl RunPlan {
    /// Fills `advice` when the plan does not fit (and is not itself an advice being weighed).
    pub(super) fn advise(&mut self) {
        self.advice.clear();
        if self.fits != Some(false) || self.weighing {
            return;
        }
        let mut trial = self.clone();
        trial.weighing = true;
        let mut settings: Vec<String> = Vec::new();
        for step in ladder(&trial) {
            let Some(change) = step.apply(&mut trial) else { continue };
            settings.push(change);
            trial.replan();
            let (Some(total), Some(fits)) = (trial.needed(), trial.fits) else { return };
            self.advice.push(Advice { settings: settings.clone(), total, fits });
            if fits {
                return;
            }
        }
    }

    /// The bytes that must fit the device: all processes' on the CPU, else one's.
    pub(super) fn needed(&self) -> Option<u64> {
        self.processes_memory.or(self.memory.as_ref().map(|m| m.total))
    }

    /// The plan again from its config (the micro-batch, strategies and `"auto"` choices redone).
    fn replan(&mut self) {
        self.strategies = Strategies::of(&self.config);
        self.auto_micro_batch = None;
        self.micro_batch_size = self.config.train.micro_batch_size;
        self.plan_memory();
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Checkpointing,
    MicroBatch,
    Quantize(Quantize),
    ShorterSamples,
}

/// The rungs for this plan's config: quantizing only where the method can keep its base frozen.
fn ladder(plan: &RunPlan) -> Vec<Step> {
    let mut steps = vec![Step::Checkpointing, Step::MicroBatch];
    if plan.config.method.kind != MethodKind::Full {
        steps.extend([Step::Quantize(Quantize::Int8), Step::Quantize(Quantize::Nf4)]);
    }
    steps.push(Step::ShorterSamples);
    steps
}

impl Step {
    /// Changes `plan`'s config by this step; the setting as `key = value`, or `None` when the config
    /// already has it (or better).
    fn apply(self, plan: &mut RunPlan) -> Option<String> {
        let c = &mut plan.config;
        match self {
            Step::Checkpointing => {
                let on = plan.strategies.activation_checkpointing;
                (!on).then(|| {
                    c.train.activation_checkpointing = Switch::On;
                    "train.activation_checkpointing = true".to_string()
                })
            }
            Step::MicroBatch => {
                let micro = plan.micro_batch_size;
                (micro > 1).then(|| {
                    c.train.micro_batch_size = 1;
                    "train.micro_batch_size = 1".to_string()
                })
            }
            Step::Quantize(q) => {
                let fewer_bits = |now: Quantize| match q {
                    Quantize::Int8 => now == Quantize::None,
                    _ => matches!(now, Quantize::None | Quantize::Int8),
                };
                fewer_bits(c.model.quantize).then(|| {
                    c.model.quantize = q;
                    format!("model.quantize = \"{q}\"")
                })
            }
            Step::ShorterSamples => {
                let len = c.data.max_seq_length;
                (len > 64).then(|| {
                    c.data.max_seq_length = len / 2;
                    format!("data.max_seq_length = {}", len / 2)
                })
            }
        }
    }
}

impl RunPlan {
    /// A run refuses a plan that does not fit (unless `train.run_over_plan`), saying what would.
    pub(super) fn refuse_over_plan(&mut self) {
        self.refusals.retain(|r| !r.starts_with(OVER_PLAN));
        let (Some(false), Some(available), false) = (self.fits, self.device_memory, self.weighing) else { return };
        if self.config.train.run_over_plan {
            return;
        }
        let needed = self.processes_memory.or(self.memory.as_ref().map(|m| m.total)).unwrap_or(0);
        let change = match self.advice.iter().find(|a| a.fits) {
            Some(a) => format!("set {} (the plan's advice)", a.settings.join(" and ")),
            None => "see the plan's advice (ftexp plan)".to_string(),
        };
        self.refusals.push(format!(
            "{OVER_PLAN} {}, is more than the {} of {}: {change}, or set train.run_over_plan = true to try anyway (the plan counts every row at data.max_seq_length)",
            memory::mib_text(needed),
            memory::mib_text(available),
            self.device
        ));
    }
}

/// How the refusal of a plan that does not fit begins.
const OVER_PLAN: &str = "the memory plan's peak,";
