//! What training minimises and evaluation reports. Each objective scores a batch as a sum over the
//! positions it supervises, so the loop divides by their count wherever the batch was split.
use tch::{Kind, Tensor};

use crate::data::batches::Batch;
use crate::model::staged::{self, Rows, Staging};
use crate::model::Gpt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    /// Supervised fine-tuning: cross entropy of the response tokens (the prompt is masked).
    #[default]
    Sft,
}

impl Objective {
    /// The batch's summed loss (a scalar tensor that autograd can differentiate).
    pub fn loss(self, model: &Gpt, batch: &Batch) -> Tensor {
        match self {
            Objective::Sft => supervised_loss(model, batch, tch::Reduction::Sum),
        }
    }
}

impl Objective {
    /// The batch's loss (summed, detached) with its gradients, scaled by `scale`, added to the trainable
    /// tensors'. `checkpoint`: activation checkpointing; the LM head scores its positions in chunks of
    /// at most `head_chunk_bytes` ([`staged::head_chunk_within`]; training always uses
    /// [`staged::HEAD_CHUNK_BYTES`], `ftexp bench` may ask for others) whenever they would take more
    /// memory than one.
    pub fn backward(self, model: &Gpt, batch: &Batch, checkpoint: bool, head_chunk_bytes: i64, scale: f64) -> Tensor {
        let compute = if model.compute_kind == Kind::Float { 4 } else { 2 };
        let chunk = staged::head_chunk_within(model.spec.vocab_size, compute, head_chunk_bytes);
        if !checkpoint && batch.supervised <= chunk {
            let loss = self.loss(model, batch);
            (&loss * scale).backward();
            return loss.detach();
        }
        self.staged_backward(model, batch, Staging { checkpoint, head_chunk: Some(chunk) }, scale)
    }

    /// [`Objective::backward`] in the stages `staging` names.
    pub fn staged_backward(self, model: &Gpt, batch: &Batch, staging: Staging, scale: f64) -> Tensor {
        let packed = batch.packed.as_ref().map(|p| (&p.positions, &p.segments));
        let rows = Rows { ids: &batch.inputs, packed, positions: &batch.positions };
        let loss = |logits: &Tensor, start: i64, len: i64| match self {
            Objective::Sft => logits.cross_entropy_loss::<Tensor>(
                &batch.targets.narrow(0, start, len),
                None,
                tch::Reduction::Sum,
                -100,
                0.0,
            ),
        };
        model.forward_backward(&rows, staging, scale, &loss)
    }
}

/// Cross entropy of the supervised positions only: the LM head never sees prompt or padding positions.
pub fn supervised_loss(model: &Gpt, batch: &Batch, reduction: tch::Reduction) -> Tensor {
    let hidden = match &batch.packed {
        Some(p) => model.hidden_packed(&batch.inputs, &p.positions, &p.segments),
        None => model.hidden(&batch.inputs, None),
    }; // (batch, time, hidden)
    let width = hidden.size()[2];
    let picked = hidden.view([-1, width]).index_select(0, &batch.positions); // (supervised, hidden)
    let logits = model.logits(&picked).to_kind(Kind::Float);
    logits.cross_entropy_loss::<Tensor>(&batch.targets, None, reduction, -100, 0.0)
}
