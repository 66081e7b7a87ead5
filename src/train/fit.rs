//! `train.micro_batch_size = "auto"` on the built model: the largest micro-batch the memory plan fits
//! in 90% of the device's memory, confirmed by one trial step (forward and backward of a micro-batch
//! of full-length rows, every position scored), halved while the trial runs out of memory.
use super::replicas::Replicas;
use super::trainer::Trainer;
use crate::data::batches;
use crate::data::Sample;
use crate::error::{guard, ErrorKind, Problems};
use crate::experiment::MicroBatchRecord;
use crate::methods::memory;
use crate::plan::RunPlan;

/// Confirms the plan's `"auto"` choice for `trainer` (a resumed run keeps the `recorded` choice);
/// `None` when the config names a number.
pub fn resolve_micro_batch(
    plan: &RunPlan,
    trainer: &mut Trainer,
    recorded: Option<&MicroBatchRecord>,
) -> Result<Option<MicroBatchRecord>, Problems> {
    let c = &plan.config;
    let Some(choice) = plan.auto_micro_batch.as_ref() else { return Ok(None) };
    if let Some(r) = recorded {
        trainer.set_micro_batch_size(r.chosen);
        return Ok(Some(r.clone()));
    }
    let world = plan.world_size;
    let placement = trainer.built.placement;
    let spec = trainer.built.model.spec.clone();
    let (mut micro, mut out_of_memory) = (choice.chosen, Vec::new());
    let seq_len = c.data.max_seq_length as usize;
    while let Err(e) = guard("trial step", || trial_step(trainer, micro, seq_len)) {
        if e.kind() != ErrorKind::OutOfMemory || micro == 1 {
            return Err(e.prefixed("train.micro_batch_size = \"auto\""));
        }
        out_of_memory.push(micro);
        micro = largest_divisor_at_most(c.train.batch_size / world, micro / 2);
    }
    zero_gradients(trainer);
    if let Some(r) = &trainer.replicas {
        micro = smallest_over_ranks(r, micro, trainer.built.model.device())?;
    }
    trainer.set_micro_batch_size(micro);
    println!("micro_batch_size = \"auto\": {micro}{}", note(&out_of_memory));
    let planned = memory::estimate(&spec, &c.method, &placement, plan.shape(micro));
    Ok(Some(MicroBatchRecord {
        chosen: micro,
        planned_peak_bytes: planned.total,
        budget_bytes: choice.budget,
        out_of_memory,
    }))
}

fn note(out_of_memory: &[u64]) -> String {
    match out_of_memory {
        [] => String::new(),
        sizes => format!(
            " (the trial step ran out of memory with {})",
            sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", then ")
        ),
    }
}

/// An out-of-memory error of a training step with the memory plan's figure for the run, what the
/// device has, and the checkpoint that is kept; other errors unchanged.
pub fn memory_hint(e: Problems, plan: &RunPlan, trainer: &Trainer, kept: Option<&std::path::Path>) -> Problems {
    if e.kind() != ErrorKind::OutOfMemory {
        return e;
    }
    let (c, placement) = (&plan.config, &trainer.built.placement);
    let (micro, seq) = (trainer.micro_batch_size() as u64, c.data.max_seq_length);
    let peak = memory::estimate(&trainer.built.model.spec, &c.method, placement, plan.shape(micro)).total;
    let available =
        plan.device_memory.map(|b| format!(" of the {} available", memory::mib_text(b))).unwrap_or_default();
    let kept = kept.map_or("no checkpoint was saved yet".to_string(), |p| {
        format!("the last checkpoint, {}, is kept", p.display())
    });
    e.map(|m| {
        format!(
            "{m}; the memory plan expects a peak of {} for micro-batches of {micro} × {seq} (see `ftexp plan`){available}; {kept}",
            memory::mib_text(peak)
        )
    })
}

/// The largest divisor of `n` that is at most `limit` (at least 1).
fn largest_divisor_at_most(n: u64, limit: u64) -> u64 {
    (1..=limit.max(1)).rev().find(|d| n.is_multiple_of(*d)).unwrap_or(1)
}

/// Forward and backward of `micro` rows of `seq_len` tokens with every position scored: the most
/// memory one micro-batch of the run can take. Its gradients are zeroed before training starts.
fn trial_step(trainer: &mut Trainer, micro: u64, seq_len: usize) {
    let ids = vec![0u32; seq_len.max(2)];
    let row = Sample {
        instruction: String::new(),
        input: String::new(),
        output: String::new(),
        labels: crate::data::prepare::labels(&ids, 0),
        input_ids_no_response: Vec::new(),
        input_ids: ids,
    };
    let rows: Vec<&Sample> = (0..micro).map(|_| &row).collect();
    let objective = trainer.objective;
    let model = trainer.model();
    let batch = batches::make(&rows, model.device());
    let was = std::mem::replace(&mut model.training, true);
    objective.loss(model, &batch).backward();
    model.training = was;
}

fn zero_gradients(trainer: &mut Trainer) {
    tch::no_grad(|| {
        for t in &trainer.built.trainable {
            let mut g = t.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    });
}

/// Every rank trains with the same micro-batch: the smallest any of them could run.
fn smallest_over_ranks(r: &Replicas, micro: u64, device: tch::Device) -> Result<u64, Problems> {
    let mut slots = vec![0.0; r.rank.world];
    slots[r.rank.rank] = micro as f64;
    let all = r.sum(&slots, device)?;
    Ok(all.iter().map(|m| m.round() as u64).min().unwrap_or(micro).max(1))
}
