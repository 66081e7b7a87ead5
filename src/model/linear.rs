//! A linear layer with what a method adds to it (a LoRA branch, adapter v2's scale and bias), and what
//! it keeps for the backward pass.
use tch::Tensor;

use super::footprint::{Val, Walk};
use super::layout::{Module, Param};
use super::lora::{self, Input, Lora, LoraScaling, RowSeeds};
use super::weight::{cast, Weight};

/// How a forward pass runs: training (dropout on) or not, the model's LoRA scaling, and the
/// micro-batch's per-row dropout seeds (`None`: masks from the global generator).
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub training: bool,
    pub lora: LoraScaling,
    pub rows: Option<RowSeeds<'a>>,
}

/// Adapter v2's per-channel scale and bias on a linear layer's output: `scale ⊙ (Wx + b + bias)`,
/// scale one and bias zero at first.
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

#[derive(Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    pub adapter_v2: Option<AdapterV2>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear { weight: Weight::Dense(weight), bias, lora: None, adapter_v2: None }
    }

    pub(super) fn empty() -> Linear {
        Linear::new(Tensor::new(), None)
    }

    /// The layer of `input` (which other layers may read too, sharing its LoRA dropout).
    pub fn forward(&self, input: &Input, ctx: Ctx) -> Tensor {
        let y = self.weight.linear(input.x, self.bias.as_ref());
        let y = match &self.lora {
            Some(l) => y + lora::delta(l, input, ctx.lora, ctx.training, ctx.rows),
            None => y,
        };
        match &self.adapter_v2 {
            Some(a) => a.apply(y),
            None => y,
        }
    }

    /// The tensor `param`, created empty when the layer has none yet.
    pub(super) fn slot(&mut self, param: Param) -> &mut Tensor {
        match param {
            Param::Weight => self.weight.tensor_mut(),
            Param::Bias => self.bias.get_or_insert_with(Tensor::new),
            Param::LoraA => &mut self.lora.get_or_insert_with(Lora::empty).a,
            Param::LoraB => &mut self.lora.get_or_insert_with(Lora::empty).b,
            Param::AdapterScale => &mut self.adapter_v2.get_or_insert_with(AdapterV2::empty).scale,
            Param::AdapterBias => &mut self.adapter_v2.get_or_insert_with(AdapterV2::empty).bias,
            Param::AdapterPrefix | Param::AdapterGate => unreachable!("a linear layer has no {param:?}"),
        }
    }
}

impl Walk<'_> {
    /// [`Linear::forward`] of `x` at `module` (a tied head uses the embedding): the input kept when
    /// the weight trains (with the weight cast to the compute dtype when it is kept in another), then
    /// the LoRA branch and adapter v2's scale when the layer has them.
    pub(super) fn linear(&mut self, x: Val, module: Module) -> Val {
        let t = self.tensors;
        let weight = t.get(module, Param::Weight).or_else(|| t.get(Module::Embed, Param::Weight));
        let weight = weight.expect("every linear layer has a weight (a tied head uses the embedding)");
        let out_width = (weight.elems / x.width as u64) as i64;
        let weight_trains = weight.trainable;
        if weight.quantized && x.grad {
            // The weight dequantized for the product, kept for the input's gradient.
            let dense = self.val(out_width, x.width, self.compute, false);
            self.save(dense);
        }
        if weight_trains {
            self.save(x);
            if x.grad && weight.elem_bytes != self.compute {
                let cast = self.val(out_width, x.width, self.compute, true);
                self.save(cast);
            }
        }
        let bias_trains = t.trains(module, Param::Bias);
        let mut y = self.val(x.rows, out_width, self.compute, x.grad || weight_trains || bias_trains);
        if let Some(a) = t.get(module, Param::LoraA) {
            y = self.lora(x, y, a.elems as i64 / x.width);
        }
        if t.get(module, Param::AdapterScale).is_some() {
            let shifted = self.val(y.rows, y.width, y.elem_bytes, true); // y + bias, kept by the scale
            self.save(shifted);
            y = self.val(y.rows, y.width, y.elem_bytes, true);
        }
        y
    }
}
