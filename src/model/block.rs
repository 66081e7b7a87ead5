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
//! Gemma adds a norm after attention and after the MLP (`x + post(f(pre(x)))`), OLMo 2 has only
//! those (`x + post(f(x))`). Falcon 7B's parallel block has one norm for both branches (`norm2` is
//! `None`). Shapes: `x` is
//! `(batch, time, hidden)` in and out; q is `(batch, heads, time, head)`, k and v
//! `(batch, groups, time, head)` (grouped-query attention shares each key/value group among its heads).
use tch::{Kind, Tensor};

use super::adapter::Adapter;
use super::footprint::{Val, Walk};
use super::layout::{Module, Proj};
use super::linear::{Ctx, Linear};
use super::mlp::Mlp;
use super::norm::Norm;
use super::spec::{ModelSpec, NormPlacement};

#[derive(Debug)]
pub struct Block {
    /// Which layer this is (its slot in the KV cache).
    pub index: usize,
    /// The norm before attention; `None` with norms after attention only (OLMo 2).
    pub norm1: Option<Norm>,
    /// The MLP's own norm; `None` when attention and MLP share `norm1` (Falcon 7B), or with norms
    /// after the MLP only.
    pub norm2: Option<Norm>,
    /// The norms of attention's and the MLP's outputs (Gemma, OLMo 2).
    pub post_attn_norm: Option<Norm>,
    pub post_mlp_norm: Option<Norm>,
    /// The RMSNorms of the queries and keys (Qwen3, Gemma 3, OLMo 2).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
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

/// The angles of one forward pass: every layer's, and the sliding layers' own where the model gives
/// them another base (Gemma 3).
pub struct Ropes {
    pub(super) global: Rope,
    pub(super) local: Option<Rope>,
}

impl Ropes {
    /// The angles of layer `layer`.
    pub(super) fn of(&self, spec: &ModelSpec, layer: usize) -> &Rope {
        match &self.local {
            Some(local) if spec.window(layer).is_some() => local,
            _ => &self.global,
        }
    }
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
    pub rope: &'a Ropes,
    pub mask: Mask<'a>,
    /// Past keys and values (generation), continued at position `start`.
    pub cache: Option<&'a KvCache>,
    pub start: i64,
    /// Training or not, and the LoRA scaling.
    pub run: Ctx<'a>,
}

impl Block {
    pub(super) fn empty(index: usize) -> Block {
        Block {
            index,
            norm1: None,
            norm2: None,
            post_attn_norm: None,
            post_mlp_norm: None,
            q_norm: None,
            k_norm: None,
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
        let h1 = normed(&self.norm1, x);
        let attn = self.attention(&h1, ctx);
        if ctx.spec.parallel_residual {
            let mlp = match &self.norm2 {
                Some(n) => self.mlp.forward(&n.forward(x), ctx.spec.mlp, self.index, ctx.run),
                None => self.mlp.forward(&h1, ctx.spec.mlp, self.index, ctx.run),
            };
            x + attn + mlp
        } else {
            let x = x + normed(&self.post_attn_norm, &attn);
            let h2 = normed(&self.norm2, &x);
            let mlp = self.mlp.forward(&h2, ctx.spec.mlp, self.index, ctx.run);
            &x + normed(&self.post_mlp_norm, &mlp)
        }
    }

    /// The norm at `module` of this block, created empty when it has none yet.
    pub(super) fn norm_slot(&mut self, module: Module, spec: &ModelSpec) -> &mut Norm {
        let norm = match module {
            Module::Norm1(_) => &mut self.norm1,
            Module::Norm2(_) => &mut self.norm2,
            Module::PostAttnNorm(_) => &mut self.post_attn_norm,
            Module::PostMlpNorm(_) => &mut self.post_mlp_norm,
            Module::QNorm(_) => &mut self.q_norm,
            Module::KNorm(_) => &mut self.k_norm,
            other => unreachable!("{other:?} is not a block's norm"),
        };
        norm.get_or_insert_with(|| Norm::empty(spec))
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

/// `x` through `norm`, or `x` itself where there is none.
fn normed(norm: &Option<Norm>, x: &Tensor) -> Tensor {
    match norm {
        Some(n) => n.forward(x),
        None => x.shallow_clone(),
    }
}

impl Walk<'_> {
    /// [`Block::forward`] of layer `i`.
    pub(super) fn block(&mut self, i: usize, x: Val) -> Val {
        let (pre, post) =
            (self.spec.norm_placement != NormPlacement::Post, self.spec.norm_placement != NormPlacement::Pre);
        let h1 = if pre { self.norm(x, Module::Norm1(i)) } else { x };
        let attn = self.attention(i, h1);
        if self.spec.parallel_residual {
            let h2 = if self.spec.shared_attention_norm { h1 } else { self.norm(x, Module::Norm2(i)) };
            let mlp = self.mlp(i, h2);
            let x2 = self.sum(x, attn);
            self.sum(x2, mlp)
        } else {
            let attn = if post { self.norm(attn, Module::PostAttnNorm(i)) } else { attn };
            let x2 = self.sum(x, attn);
            let h2 = if pre { self.norm(x2, Module::Norm2(i)) } else { x2 };
            let mlp = self.mlp(i, h2);
            let mlp = if post { self.norm(mlp, Module::PostMlpNorm(i)) } else { mlp };
            self.sum(x2, mlp)
        }
    }
}
