//! LayerNorm and RMSNorm, and what each keeps for the backward pass.
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
            // As transformers does it: normalise in fp32, cast back, then scale.
            NormKind::RmsNorm => {
                let xf = x.to_kind(Kind::Float);
                let inv_rms = (xf.square().mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
                (xf * inv_rms).to_kind(x.kind()) * weight
            }
        }
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
            NormKind::RmsNorm => {
                let xf = if x.elem_bytes == 4 { x } else { self.val(x.rows, x.width, 4, x.grad) };
                if xf.grad {
                    self.save(xf);
                    let inv_rms = self.val(x.rows, 1, 4, true);
                    self.save(inv_rms);
                }
                let normed = self.val(x.rows, x.width, x.elem_bytes, xf.grad); // back in the compute dtype
                if weight_trains {
                    self.save(normed);
                }
            }
        }
        self.val(x.rows, x.width, x.elem_bytes, grad)
    }
}
