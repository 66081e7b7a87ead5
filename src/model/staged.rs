//! A training micro-batch's forward and backward in stages, to keep memory down: activation
//! checkpointing (each block keeps only its input and recomputes its forward when the backward pass
//! reaches it) and a chunked LM head (scores and loss for a slice of the supervised positions at a
//! time, each slice's backward run before the next is scored).
//!
//! Autograd sees three kinds of stage, joined by detached tensors whose gradients carry the
//! backward pass from one stage to the one before: `Σ (output · gradient)` backpropagated from a
//! stage's output gives exactly the gradients the whole graph would. Dropout replays itself: a
//! training micro-batch's masks are drawn from per-row seeds ([`super::lora::RowSeeds`]), so the
//! recomputed forward draws the same ones.
use tch::{Kind, Tensor};

pub use super::footprint::{head_chunk, head_chunk_within, HEAD_CHUNK_BYTES};
use super::gpt::Gpt;

/// How a training micro-batch's backward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Staging {
    /// Recompute each block's forward in the backward pass instead of keeping its activations.
    pub checkpoint: bool,
    /// Supervised positions scored at once; `None`: all of them.
    pub head_chunk: Option<i64>,
}

/// A micro-batch as the model sees it: inputs, and for packed rows their positions and segments.
pub struct Rows<'a> {
    pub ids: &'a Tensor,
    pub packed: Option<(&'a Tensor, &'a Tensor)>,
    /// Flat indices into `(batch × time)` of the supervised positions.
    pub positions: &'a Tensor,
}

/// A detached copy of `x` that collects the gradient of whatever is computed from it.
fn leaf(x: &Tensor) -> Tensor {
    x.detach().set_requires_grad(true)
}

/// Backpropagates `gradient` from `output` into everything that computed it.
fn backward_from(output: &Tensor, gradient: &Tensor) {
    if output.requires_grad() {
        (output * gradient).sum(output.kind()).backward();
    }
}

impl Gpt {
    /// Forward and backward of `rows` as `staging` says, the gradients added to the trainable
    /// tensors'; returns the summed loss (detached). `loss(logits, start, len)` is the summed loss of
    /// the supervised positions `start .. start + len` from their scores; each chunk's loss is scaled
    /// by `scale` (1 / the step's supervised positions) before its backward pass.
    pub fn forward_backward(
        &self,
        rows: &Rows,
        staging: Staging,
        scale: f64,
        loss: &dyn Fn(&Tensor, i64, i64) -> Tensor,
    ) -> Tensor {
        let (rope, mask) = match rows.packed {
            Some((positions, segments)) => {
                let (rope, mask) = self.packed_rope_mask(rows.ids, positions, segments);
                (rope, Some(mask))
            }
            None => (self.rope(0, rows.ids.size()[1]), None),
        };
        let ctx = self.training_ctx(&rope, mask.as_ref());
        let embedded =
            if staging.checkpoint { tch::no_grad(|| self.embed_ids(rows.ids)) } else { self.embed_ids(rows.ids) };
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut x = embedded.shallow_clone();
        for block in &self.blocks {
            if staging.checkpoint {
                inputs.push(x.shallow_clone());
                x = tch::no_grad(|| block.forward(&x, &ctx));
            } else {
                x = block.forward(&x, &ctx);
            }
        }
        let last = leaf(&x);
        let hidden = self.final_norm.forward(&last);
        let width = hidden.size()[2];
        let picked = hidden.view([-1, width]).index_select(0, rows.positions);
        let scored = leaf(&picked);
        let n = scored.size()[0];
        let chunk = staging.head_chunk.unwrap_or(n).max(1);
        let mask = self.head_mask(&scored);
        let mut total = Tensor::zeros([], (Kind::Float, self.device()));
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let mask = mask.as_ref().map(|m| m.narrow(0, start, len));
            // The scores are dropped before the backward pass: autograd keeps only their log-softmax.
            let part = {
                let logits = self.logits_masked(&scored.narrow(0, start, len), mask.as_ref()).to_kind(Kind::Float);
                loss(&logits, start, len)
            };
            (&part * scale).backward();
            total += part.detach();
        }
        if n > 0 {
            backward_from(&picked, &scored.grad());
        }
        let mut gradient = last.grad();
        if !gradient.defined() {
            return total;
        }
        if !staging.checkpoint {
            backward_from(&x, &gradient);
            return total;
        }
        for (block, input) in self.blocks.iter().zip(&inputs).rev() {
            let input = leaf(input);
            let output = block.forward(&input, &ctx);
            backward_from(&output, &gradient);
            gradient = input.grad();
        }
        if self.embed.requires_grad() {
            backward_from(&self.embed_ids(rows.ids), &gradient);
        }
        total
    }
}
