//! What training minimises and evaluation reports. Each objective scores a batch as a sum over the
//! positions it supervises, so the loop divides by their count wherever the batch was split.
use tch::{Kind, Tensor};

use crate::data::batches::Batch;
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
