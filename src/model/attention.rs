//! The attention half of a block: q, k and v projected, rotary applied, the KV cache continued,
//! scaled dot-product attention (with the adapter prompt's gated attention added), and the output
//! projection; and what it keeps for the backward pass.
use tch::{Kind, Tensor};

use super::block::{Block, BlockCtx, Mask, Rope};
use super::footprint::{Val, Walk};
use super::layout::{Module, Proj};
use super::linear::Linear;
use super::lora::{Input, Site};

impl Block {
    /// `(batch, time, hidden)` (normed) → `(batch, time, hidden)`.
    pub(super) fn attention(&self, x: &Tensor, ctx: &BlockCtx) -> Tensor {
        let (s, run) = (ctx.spec, ctx.run);
        let (batch, t) = (x.size()[0], x.size()[1]);
        // (batch, time, n × head) → (batch, n, time, head)
        let input = Input::new(x, Site::Attention, self.index);
        let heads = |lin: &Linear, n: i64| lin.forward(&input, run).view([batch, t, n, s.head_size]).transpose(1, 2);
        let q = apply_rope(&heads(&self.q, s.n_head), ctx.rope, s.rope_dims); // (batch, heads, time, head)
        let k = apply_rope(&heads(&self.k, s.n_query_groups), ctx.rope, s.rope_dims); // (batch, groups, time, head)
        let v = heads(&self.v, s.n_query_groups); // (batch, groups, time, head)
        let start = ctx.start;
        let (k, v) = match ctx.cache {
            Some(c) => {
                let layer = self.index;
                c.keys[layer].narrow(2, start, t).copy_(&k);
                c.values[layer].narrow(2, start, t).copy_(&v);
                (c.keys[layer].narrow(2, 0, start + t), c.values[layer].narrow(2, 0, start + t))
            }
            None => (k, v),
        };
        let kv_len = start + t;
        // SDPA's is_causal aligns the mask top-left, which is only right when queries start at 0.
        let (mask, causal) = match ctx.mask {
            Mask::Packed(m) => (Some(m.shallow_clone()), false),
            Mask::Causal if t > 1 && start > 0 => {
                let rows = Tensor::arange_start(start, kv_len, (Kind::Int64, x.device())).unsqueeze(1);
                let cols = Tensor::arange(kv_len, (Kind::Int64, x.device())).unsqueeze(0);
                (Some(cols.le_tensor(&rows)), false)
            }
            Mask::Causal => (None, t > 1),
        };
        let gqa = s.n_query_groups != s.n_head;
        // (batch, heads, time, head), each group's key and value shared by its query heads
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, None, gqa);
        // Not in place: attention's backward needs its own output unchanged.
        let y = match &self.adapter {
            None => y,
            Some(a) => y + a.attend(&q, (&self.k, &self.v), s, self.index, run),
        };
        // (batch, heads, time, head) → (batch, time, heads × head)
        let y = y.transpose(1, 2).reshape([batch, t, s.n_head * s.head_size]);
        self.o.forward(&Input::new(&y, Site::AttentionOut, self.index), run)
    }
}

/// HF rotary ("rotate half") on the first `dims` dimensions of each head of `x` `(batch, heads, time, head)`.
fn apply_rope(x: &Tensor, rope: &Rope, dims: i64) -> Tensor {
    let head = x.size()[3];
    let (rot, pass) = (x.narrow(3, 0, dims), x.narrow(3, dims, head - dims));
    let half = dims / 2;
    let rotated = Tensor::cat(&[-rot.narrow(3, half, half), rot.narrow(3, 0, half)], -1);
    let out = &rot * &rope.cos + rotated * &rope.sin;
    if dims == head {
        out
    } else {
        Tensor::cat(&[out, pass], -1)
    }
}

impl Walk<'_> {
    /// [`Block::attention`] of layer `i`: the projections, rotary (which keeps nothing), the fused
    /// attention kernel, the adapter prompt when the layer has one, and the output projection.
    pub(super) fn attention(&mut self, i: usize, h: Val) -> Val {
        let rope = |w: &mut Self, v: Val| w.val(v.rows, v.width, v.elem_bytes, v.grad);
        let q = self.linear(h, Module::Linear(i, Proj::Q));
        let q = rope(self, q);
        let k = self.linear(h, Module::Linear(i, Proj::K));
        let k = rope(self, k);
        let v = self.linear(h, Module::Linear(i, Proj::V));
        let y = self.sdpa(q, k, v);
        let y = self.adapter_prompt(i, q, y);
        self.linear(y, Module::Linear(i, Proj::O))
    }

    /// Scaled dot-product attention through a fused kernel: it keeps q, k, v, its output and the
    /// softmax's log-sum-exp per query and head, never the time × time scores.
    pub(super) fn sdpa(&mut self, q: Val, k: Val, v: Val) -> Val {
        let grad = q.grad || k.grad || v.grad;
        let out = self.val(q.rows, q.width, q.elem_bytes, grad);
        if grad {
            for t in [q, k, v, out] {
                self.save(t);
            }
            let lse = self.val(q.rows, self.spec.n_head, 4, false);
            self.save(lse);
            if self.packed && k.rows == q.rows {
                let mask = self.val(q.rows, self.time, q.elem_bytes, false);
                self.save(mask);
            }
        }
        out
    }
}
