//! A transformer block: attention and MLP around their norms, with one residual layout per family.
//!
//! ```text
//!   sequential (Llama, Qwen2, Falcon 40B-style … ):      parallel (GPT-NeoX, Falcon 7B):
//!
//!   x ─┬─ norm1 ─ attention ─(+)─┬─ norm2 ─ mlp ─(+)─►    x ─┬─ norm1 ─┬─ attention ──┐
//!      └─────────────────────────┘└──────────────┘           │  (norm2)└─ mlp ───────(+)─►
//!                                                            └──────────────────────────┘
//! ```
//!
//! Falcon 7B's parallel block has one norm for both branches (`norm2` is `None`). Shapes: `x` is
//! `(batch, time, hidden)` in and out; q is `(batch, heads, time, head)`, k and v
//! `(batch, groups, time, head)` (grouped-query attention shares each key/value group among its heads).
use tch::{Kind, Tensor};

use super::adapter::Adapter;
use super::footprint::{Val, Walk};
use super::layout::{Module, Proj};
use super::linear::{Ctx, Linear};
use super::mlp::Mlp;
use super::norm::Norm;
use super::spec::ModelSpec;

#[derive(Debug)]
pub struct Block {
    /// Which layer this is (its slot in the KV cache).
    pub index: usize,
    pub norm1: Norm,
    /// The MLP's own norm; `None` when attention and MLP share `norm1` (Falcon 7B).
    pub norm2: Option<Norm>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp: Mlp,
    pub adapter: Option<Adapter>,
}

/// Rotary embedding angles for a run of positions, shared by every layer of one forward pass.
pub struct Rope {
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
}

/// Keys and values of past positions, preallocated for `capacity` positions.
pub struct KvCache {
    pub(super) keys: Vec<Tensor>,
    pub(super) values: Vec<Tensor>,
    pub len: i64,
    pub capacity: i64,
}

impl KvCache {
    pub fn new(spec: &ModelSpec, batch: i64, capacity: i64, kind: Kind, device: tch::Device) -> KvCache {
        let shape = [batch, spec.n_query_groups, capacity, spec.head_size];
        let make = || (0..spec.n_layer).map(|_| Tensor::zeros(shape, (kind, device))).collect();
        KvCache { keys: make(), values: make(), len: 0, capacity }
    }
}

/// Which keys each query sees.
pub enum Mask<'a> {
    /// Causal: every earlier position (and, continuing a cache, every cached one).
    Causal,
    /// Packed rows: `(batch, 1, time, time)`, true where a query may see a key (its own sample, causal).
    Packed(&'a Tensor),
}

/// What every block of one forward pass shares.
pub struct BlockCtx<'a> {
    pub spec: &'a ModelSpec,
    pub rope: &'a Rope,
    pub mask: Mask<'a>,
    /// Past keys and values (generation), continued at position `start`.
    pub cache: Option<&'a KvCache>,
    pub start: i64,
    /// Training or not, and the LoRA scaling.
    pub run: Ctx<'a>,
}

impl Block {
    pub(super) fn empty(spec: &ModelSpec, index: usize) -> Block {
        Block {
            index,
            norm1: Norm::empty(spec),
            norm2: None,
            q: Linear::empty(),
            k: Linear::empty(),
            v: Linear::empty(),
            o: Linear::empty(),
            mlp: Mlp { gate: None, up: Linear::empty(), down: Linear::empty() },
            adapter: None,
        }
    }

    /// `(batch, time, hidden)` → `(batch, time, hidden)`.
    pub fn forward(&self, x: &Tensor, ctx: &BlockCtx) -> Tensor {
        let h1 = self.norm1.forward(x);
        let attn = self.attention(&h1, ctx);
        if ctx.spec.parallel_residual {
            let mlp = match &self.norm2 {
                Some(n) => self.mlp.forward(&n.forward(x), ctx.spec.mlp, self.index, ctx.run),
                None => self.mlp.forward(&h1, ctx.spec.mlp, self.index, ctx.run),
            };
            x + attn + mlp
        } else {
            let x = x + attn;
            let h2 = self.norm2.as_ref().expect("sequential blocks have two norms").forward(&x);
            &x + self.mlp.forward(&h2, ctx.spec.mlp, self.index, ctx.run)
        }
    }

    pub(super) fn linear(&mut self, proj: Proj) -> &mut Linear {
        match proj {
            Proj::Q => &mut self.q,
            Proj::K => &mut self.k,
            Proj::V => &mut self.v,
            Proj::O => &mut self.o,
            Proj::Gate => self.mlp.gate.get_or_insert_with(Linear::empty),
            Proj::Up => &mut self.mlp.up,
            Proj::Down => &mut self.mlp.down,
        }
    }

    /// The block's layer `proj`, when it has one (GELU MLPs have no gate).
    pub(super) fn linear_opt(&mut self, proj: Proj) -> Option<&mut Linear> {
        match proj {
            Proj::Gate => self.mlp.gate.as_mut(),
            _ => Some(self.linear(proj)),
        }
    }

    /// [`Block::linear_opt`] to read.
    pub fn linear_ref(&self, proj: Proj) -> Option<&Linear> {
        match proj {
            Proj::Q => Some(&self.q),
            Proj::K => Some(&self.k),
            Proj::V => Some(&self.v),
            Proj::O => Some(&self.o),
            Proj::Gate => self.mlp.gate.as_ref(),
            Proj::Up => Some(&self.mlp.up),
            Proj::Down => Some(&self.mlp.down),
        }
    }
}

impl Walk<'_> {
    /// [`Block::forward`] of layer `i`.
    pub(super) fn block(&mut self, i: usize, x: Val) -> Val {
        let h1 = self.norm(x, Module::Norm1(i));
        let attn = self.attention(i, h1);
        if self.spec.parallel_residual {
            let h2 = if self.spec.shared_attention_norm { h1 } else { self.norm(x, Module::Norm2(i)) };
            let mlp = self.mlp(i, h2);
            let x2 = self.sum(x, attn);
            self.sum(x2, mlp)
        } else {
            let x2 = self.sum(x, attn);
            let h2 = self.norm(x2, Module::Norm2(i));
            let mlp = self.mlp(i, h2);
            self.sum(x2, mlp)
        }
    }
}
