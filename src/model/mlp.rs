//! The feed-forward layers of a block, and what they keep for the backward pass.
use tch::Tensor;

use super::footprint::{Val, Walk};
use super::layout::{Module, Proj};
use super::linear::{Ctx, Linear};
use super::lora::{Input, Site};
use super::spec::Mlp as MlpKind;

/// `down(act(up(x)))`, or `down(act(gate(x)) · up(x))` for SwiGLU (silu) and GeGLU (tanh GELU).
#[derive(Debug)]
pub struct Mlp {
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    /// `(batch, time, hidden)` → `(batch, time, intermediate)` → `(batch, time, hidden)`.
    /// Of block `block`.
    pub fn forward(&self, x: &Tensor, kind: MlpKind, block: usize, run: Ctx) -> Tensor {
        let input = Input::new(x, Site::Mlp, block);
        let hidden = match (kind, &self.gate) {
            (MlpKind::SwiGlu, Some(gate)) => gate.forward(&input, run).silu() * self.up.forward(&input, run),
            (MlpKind::GeGlu, Some(gate)) => gate.forward(&input, run).gelu("tanh") * self.up.forward(&input, run),
            (MlpKind::GeluTanh, _) => self.up.forward(&input, run).gelu("tanh"),
            _ => self.up.forward(&input, run).gelu("none"),
        };
        self.down.forward(&Input::new(&hidden, Site::MlpOut, block), run)
    }
}

impl Walk<'_> {
    /// [`Mlp::forward`] of layer `i`: the activation's input (silu's, or GELU's), and the product's
    /// factors.
    pub(super) fn mlp(&mut self, i: usize, h: Val) -> Val {
        let up = self.linear(h, Module::Linear(i, Proj::Up));
        let hidden = match self.spec.mlp {
            MlpKind::SwiGlu | MlpKind::GeGlu => {
                let gate = self.linear(h, Module::Linear(i, Proj::Gate));
                if gate.grad {
                    self.save(gate); // the activation's input
                }
                let act = self.val(gate.rows, gate.width, gate.elem_bytes, gate.grad);
                self.product(act, up)
            }
            MlpKind::Gelu | MlpKind::GeluTanh => {
                if up.grad {
                    self.save(up);
                }
                self.val(up.rows, up.width, up.elem_bytes, up.grad)
            }
        };
        self.widest = self.widest.max(hidden.bytes());
        self.linear(hidden, Module::Linear(i, Proj::Down))
    }
}
