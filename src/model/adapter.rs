//! LLaMA-Adapter and Adapter v2. The adapter prompt: learned prompt vectors whose keys and values (from
//! the layer's own projections, without rotary) are attended by a separate softmax and added through a
//! zero-initialised gate per head. Adapter v2 adds a per-channel scale and bias to every linear layer
//! (`AdapterV2`, in linear.rs): `scale ⊙ (Wx + b + bias)`, scale one and bias zero at first.
use tch::{Device, Kind, Tensor};

use super::footprint::{Val, Walk};
use super::layout::{Module, Param, Proj};
use super::linear::{Ctx, Linear};
use super::lora::{Input, Site};
use super::spec::ModelSpec;
use super::weight::cast;

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

impl Adapter {
    /// The prompt's attention for queries `q` `(batch, heads, time, head)`, gated per head: the prompt's
    /// keys and values come from the block's own k and v projections, without rotary, and every query
    /// sees the whole prompt; of block `block`.
    pub fn attend(
        &self,
        q: &Tensor,
        (k_proj, v_proj): (&Linear, &Linear),
        spec: &ModelSpec,
        block: usize,
        ctx: Ctx,
    ) -> Tensor {
        let batch = q.size()[0];
        let prefix = cast(&self.prefix, q).unsqueeze(0); // (1, p, hidden)
        let p = prefix.size()[1];
        let input = Input::new(&prefix, Site::Prompt, block);
        let project = |lin: &Linear| {
            lin.forward(&input, ctx)
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
            spec.attention_scale,
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

impl Walk<'_> {
    /// [`Adapter::attend`] of layer `i` added to the attention output `y`, when the layer has an
    /// adapter prompt: the prompt's keys and values, its attention (kept by the gate's product), and the
    /// sum laid out head by head, which flattening back to (time, hidden) copies.
    pub(super) fn adapter_prompt(&mut self, i: usize, q: Val, y: Val) -> Val {
        if self.tensors.get(Module::Adapter(i), Param::AdapterPrefix).is_none() {
            return y;
        }
        let p = self.method.adapter_prompt_length as i64;
        let prefix = self.val(p, self.spec.hidden_size, self.trainable_bytes, true);
        let pk = self.linear(prefix, Module::Linear(i, Proj::K));
        let pv = self.linear(prefix, Module::Linear(i, Proj::V));
        let prompt = self.sdpa(q, pk, pv, self.packed);
        self.save(prompt);
        let gated = self.val(y.rows, y.width, y.elem_bytes, true);
        self.sum(y, gated);
        self.val(y.rows, y.width, y.elem_bytes, true)
    }
}
