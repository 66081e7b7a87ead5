//! A layer's weight matrix: dense, or quantized (a frozen base under QLoRA) and dequantized to the
//! compute dtype where the layer multiplies by it, so that no layer's forward depends on which.
use tch::Tensor;

use super::quant::Quantized;

/// `t` in the kind of `like` (trainable weights may be kept in fp32 under a 16-bit compute kind).
pub fn cast(t: &Tensor, like: &Tensor) -> Tensor {
    if t.kind() == like.kind() {
        t.shallow_clone()
    } else {
        t.to_kind(like.kind())
    }
}

#[derive(Debug)]
pub enum Weight {
    /// `(out, in)` in the checkpoint's layout, in the model's kind (fp32 when it trains under `bf16-mixed`).
    Dense(Tensor),
    /// A frozen weight quantized ([`Quantized`]).
    Quantized(Quantized),
}

impl Weight {
    /// `x·Wᵀ + bias` in the kind of `x`.
    pub fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        match self {
            Weight::Dense(w) => x.linear(&cast(w, x), bias.map(|b| cast(b, x)).as_ref()),
            Weight::Quantized(q) => x.linear(&q.dequantize(x.kind()), bias.map(|b| cast(b, x)).as_ref()),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, Weight::Quantized(_))
    }

    /// The weight as one tensor (the stored one itself for a dense weight, else dequantized to the
    /// dtype it was quantized from).
    pub fn to_dense(&self) -> Tensor {
        match self {
            Weight::Dense(w) => w.shallow_clone(),
            Weight::Quantized(q) => q.dequantize(q.kind),
        }
    }

    /// The stored tensor, to load, train or replace it; a quantized weight becomes dense first
    /// (dequantized: merging an adapter onto it merges onto what was trained against).
    pub fn tensor_mut(&mut self) -> &mut Tensor {
        if let Weight::Quantized(q) = self {
            *self = Weight::Dense(q.dequantize(q.kind));
        }
        match self {
            Weight::Dense(w) => w,
            Weight::Quantized(_) => unreachable!("made dense above"),
        }
    }
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Weight {
        Weight::Dense(t)
    }
}
