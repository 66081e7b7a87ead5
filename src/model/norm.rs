//! LayerNorm and the RMSNorms (Llama's, OLMo 2's scaled in fp32, Gemma's `1 + w`), and what each keeps
//! for the backward pass.
use tch::{Kind, Tensor};

use super::footprint::{Val, Walk};
use super::layout::{Module, Param};
use super::spec::{ModelSpec, Norm as NormKind};
use super::weight::cast;

#[derive(Debug)]
pub struct Norm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub kind: NormKind,
    pub eps: f64,
}

impl Norm {
    pub(super) fn empty(spec: &ModelSpec) -> Norm {
        Norm { weight: Tensor::new(), bias: None, kind: spec.norm, eps: spec.norm_eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let weight = cast(&self.weight, x);
        match self.kind {
            NormKind::LayerNorm => {
                let bias = self.bias.as_ref().map(|b| cast(b, x));
                x.layer_norm([weight.size()[0]], Some(&weight), bias.as_ref(), self.eps, true)
            }
            // As transformers does each: normalise in fp32, then cast back and scale (Llama), or scale
            // in fp32 and cast back (OLMo 2, Gemma).
            NormKind::RmsNorm => self.normalised(x).to_kind(x.kind()) * weight,
            NormKind::RmsNormScaledInFp32 => (self.weight.to_kind(Kind::Float) * self.normalised(x)).to_kind(x.kind()),
            NormKind::RmsNormPlusOne => {
                (self.normalised(x) * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(x.kind())
            }
        }
    }

    /// `x / rms(x)` in fp32.
    fn normalised(&self, x: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let inv_rms = (xf.square().mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
        xf * inv_rms
    }

    pub(super) fn slot(&mut self, param: Param) -> &mut Tensor {
        match param {
            Param::Weight => &mut self.weight,
            Param::Bias => self.bias.get_or_insert_with(Tensor::new),
            _ => unreachable!("a norm has no {param:?}"),
        }
    }
}

impl Walk<'_> {
    /// [`Norm::forward`] of `x` at `module`: LayerNorm keeps its input and its statistics; RMSNorm its
    /// fp32 input and 1/rms, and the normalised value when its weight trains.
    pub(super) fn norm(&mut self, x: Val, module: Module) -> Val {
        let weight_trains = self.tensors.trains(module, Param::Weight);
        let grad = x.grad || weight_trains;
        match self.spec.norm {
            NormKind::LayerNorm => {
                if grad {
                    self.save(x);
                    let stats = self.val(x.rows, 2, 4, true); // mean and 1/std
                    self.save(stats);
                }
            }
            kind => {
                let xf = if x.elem_bytes == 4 { x } else { self.val(x.rows, x.width, 4, x.grad) };
                if xf.grad {
                    self.save(xf);
                    let inv_rms = self.val(x.rows, 1, 4, true);
                    self.save(inv_rms);
                }
                // Scaled in the compute dtype (Llama) or in fp32 (OLMo 2, Gemma).
                let bytes = if kind == NormKind::RmsNorm { x.elem_bytes } else { 4 };
                let normed = self.val(x.rows, x.width, bytes, xf.grad);
                if weight_trains {
                    self.save(normed);
                }
            }
        }
        self.val(x.rows, x.width, x.elem_bytes, grad)
    }
}
