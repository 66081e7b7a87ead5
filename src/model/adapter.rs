//! LLaMA-Adapter and Adapter v2. The adapter prompt: learned prompt vectors whose keys and values (from
//! the layer's own projections, without rotary) are attended by a separate softmax and added through a
//! zero-initialised gate per head. Adapter v2 adds a per-channel scale and bias to every linear layer:
//! `scale ⊙ (Wx + b + bias)`, scale one and bias zero at first.
use tch::{Device, Kind, Tensor};

use super::gpt::{cast, Ctx, Linear};
use super::layout::Param;
use super::spec::ModelSpec;

#[derive(Debug)]
pub struct Adapter {
    /// `(prompt_length, hidden)`.
    pub prefix: Tensor,
    /// `(1, heads, 1, 1)`.
    pub gate: Tensor,
}

impl Adapter {
    pub fn empty() -> Adapter {
        Adapter { prefix: Tensor::new(), gate: Tensor::new() }
    }
}

#[derive(Debug)]
pub struct AdapterV2 {
    /// `(out,)`.
    pub scale: Tensor,
    /// `(out,)`.
    pub bias: Tensor,
}

impl AdapterV2 {
    pub fn empty() -> AdapterV2 {
        AdapterV2 { scale: Tensor::new(), bias: Tensor::new() }
    }

    /// `scale ⊙ (y + bias)` for a linear layer's output `y`.
    pub fn apply(&self, y: Tensor) -> Tensor {
        (&y + cast(&self.bias, &y)) * cast(&self.scale, &y)
    }
}

impl Adapter {
    /// The prompt's attention for queries `q` `(batch, heads, time, head)`, gated per head: the prompt's
    /// keys and values come from the block's own k and v projections, without rotary, and every query
    /// sees the whole prompt.
    pub fn attend(&self, q: &Tensor, k_proj: &Linear, v_proj: &Linear, spec: &ModelSpec, ctx: Ctx) -> Tensor {
        let batch = q.size()[0];
        let prefix = cast(&self.prefix, q).unsqueeze(0); // (1, p, hidden)
        let p = prefix.size()[1];
        let project = |lin: &Linear| {
            lin.forward(&prefix, ctx)
                .view([1, p, spec.n_query_groups, spec.head_size])
                .transpose(1, 2) // (1, groups, p, head)
                .expand([batch, spec.n_query_groups, p, spec.head_size], false)
        };
        let gqa = spec.n_query_groups != spec.n_head;
        let y = Tensor::scaled_dot_product_attention::<Tensor>(
            q,
            &project(k_proj),
            &project(v_proj),
            None,
            0.0,
            false,
            None,
            gqa,
        ); // (batch, heads, time, head)
        cast(&self.gate, q) * y
    }
}

/// A fresh adapter tensor in fp32: prompts N(0, 1) (from the global generator), gates zero, v2 scales
/// one, v2 biases zero.
pub fn init(param: Param, shape: &[i64], device: Device) -> Tensor {
    match param {
        Param::AdapterPrefix => Tensor::randn(shape, (Kind::Float, device)),
        Param::AdapterScale => Tensor::ones(shape, (Kind::Float, device)),
        _ => Tensor::zeros(shape, (Kind::Float, device)),
    }
}
