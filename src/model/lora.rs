//! LoRA: a low-rank update `B·A` beside a frozen linear layer, scaled by `alpha / r`. A starts
//! Kaiming-uniform and B at zero, so before the first step the layer computes exactly the base's output.
use std::cell::OnceCell;

use tch::{Device, Kind, Tensor};

use super::footprint::{Val, Walk};
use super::layout::Param;
use super::weight::cast;

#[derive(Debug)]
pub struct Lora {
    /// `(r, in)`.
    pub a: Tensor,
    /// `(out, r)`.
    pub b: Tensor,
}

impl Lora {
    pub fn empty() -> Lora {
        Lora { a: Tensor::new(), b: Tensor::new() }
    }
}

/// The scale and dropout every LoRA branch of a model shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraScaling {
    /// `lora_alpha / lora_r`.
    pub scale: f64,
    pub dropout: f64,
}

impl Default for LoraScaling {
    fn default() -> Self {
        LoraScaling { scale: 1.0, dropout: 0.0 }
    }
}

/// An input that several layers read (q, k and v; an MLP's gate and up). Its LoRA dropout is drawn
/// once and shared by every LoRA branch that reads it, as litgpt's fused QKV LoRA does: on the CPU the
/// random mask costs more than the branch's products, and one mask per input halves that for q and v.
pub struct Input<'a> {
    pub x: &'a Tensor,
    dropped: OnceCell<Tensor>,
}

impl<'a> Input<'a> {
    pub fn new(x: &'a Tensor) -> Input<'a> {
        Input { x, dropped: OnceCell::new() }
    }

    fn dropped(&self, s: LoraScaling, training: bool) -> &Tensor {
        self.dropped.get_or_init(|| {
            if training && s.dropout > 0.0 {
                self.x.dropout(s.dropout, true)
            } else {
                self.x.shallow_clone()
            }
        })
    }
}

/// `dropout(x)·Aᵀ·Bᵀ·scale`, in the kind of `x`.
pub fn delta(lora: &Lora, input: &Input, s: LoraScaling, training: bool) -> Tensor {
    let x = input.dropped(s, training);
    // (…, in) → (…, r) → (…, out)
    x.linear::<&Tensor>(&cast(&lora.a, x), None).linear::<&Tensor>(&cast(&lora.b, x), None) * s.scale
}

/// A fresh LoRA tensor in fp32 (draws from the global generator for A).
pub fn init(param: Param, shape: &[i64], device: Device) -> Tensor {
    match param {
        Param::LoraA => {
            let bound = 1.0 / (shape[1] as f64).sqrt();
            Tensor::rand(shape, (Kind::Float, device)) * (2.0 * bound) - bound
        }
        _ => Tensor::zeros(shape, (Kind::Float, device)),
    }
}

impl Walk<'_> {
    /// A LoRA branch of rank `r` beside a linear layer of input `x` and output `y`: the dropped input
    /// (its mask once per input, shared by the branches that read it, as [`Input`] does) and `x·Aᵀ`.
    pub(super) fn lora(&mut self, x: Val, y: Val, r: i64) -> Val {
        let dropped = match (self.method.lora_dropout > 0.0, self.dropped.get(&x.id)) {
            (true, Some(&d)) => d,
            (true, None) => {
                let mask = self.val(x.rows, x.width, 1, false);
                self.save(mask);
                let d = self.val(x.rows, x.width, x.elem_bytes, x.grad);
                self.dropped.insert(x.id, d);
                d
            }
            (false, _) => x,
        };
        self.save(dropped);
        let mid = self.val(x.rows, r, self.compute, true);
        self.save(mid);
        self.val(y.rows, y.width, y.elem_bytes, true)
    }
}
