//! A layer's weight matrix: held dense today, the one place a quantized kind would be added (a new
//! variant with its own `linear` and `to_dense`), so that no layer's forward has to change.
use tch::Tensor;

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
}

impl Weight {
    /// `x·Wᵀ + bias` in the kind of `x`.
    pub fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        match self {
            Weight::Dense(w) => x.linear(&cast(w, x), bias.map(|b| cast(b, x)).as_ref()),
        }
    }

    /// The weight as one tensor (the stored one itself for a dense weight).
    pub fn to_dense(&self) -> Tensor {
        match self {
            Weight::Dense(w) => w.shallow_clone(),
        }
    }

    /// The stored tensor, to load, train or replace it.
    pub fn tensor_mut(&mut self) -> &mut Tensor {
        match self {
            Weight::Dense(w) => w,
        }
    }
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Weight {
        Weight::Dense(t)
    }
}
