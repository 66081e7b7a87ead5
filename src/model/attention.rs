//! The attention half of a block: q, k and v projected (and normed, where the family norms them),
//! rotary applied, the KV cache continued, scaled dot-product attention (soft-capped where the family
//! caps its scores), with the adapter prompt's gated attention added, and the output projection; and
//! what it keeps for the backward pass.
use tch::{Kind, Tensor};

use super::block::{Block, BlockCtx, Mask, Rope};
use super::footprint::{Val, Walk};
use super::layout::{Module, Proj};
use super::linear::Linear;
use super::lora::{Input, Site};
use super::norm::Norm;
use super::spec::QkNorm;

impl Block {
    /// `(batch, time, hidden)` (normed) → `(batch, time, hidden)`.
    pub(super) fn attention(&self, x: &Tensor, ctx: &BlockCtx) -> Tensor {
        let (s, run) = (ctx.spec, ctx.run);
        let (batch, t) = (x.size()[0], x.size()[1]);
        // (batch, time, n × head) → (batch, n, time, head)
        let input = Input::new(x, Site::Attention, self.index);
        let heads = |lin: &Linear, n: i64, norm: &Option<Norm>| {
            let y = lin.forward(&input, run);
            let norm = |y: Tensor, at: QkNorm| match norm {
                Some(n) if s.qk_norm == Some(at) => n.forward(&y),
                _ => y,
            };
            let y = norm(y, QkNorm::Projection).view([batch, t, n, s.head_size]);
            norm(y, QkNorm::PerHead).transpose(1, 2)
        };
        let (rope, dims) = (ctx.rope.of(s, self.index), s.rope.dims);
        let q = apply_rope(&heads(&self.q, s.n_head, &self.q_norm), rope, dims); // (batch, heads, time, head)
        let k = apply_rope(&heads(&self.k, s.n_query_groups, &self.k_norm), rope, dims); // (batch, groups, time, head)
        let v = heads(&self.v, s.n_query_groups, &None); // (batch, groups, time, head)
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
        let (k, v, mask, causal) = visible(ctx, s.window(self.index), k, v, t);
        let gqa = s.n_query_groups != s.n_head;
        // (batch, heads, time, head), each group's key and value shared by its query heads
        let y = match s.attention_softcap {
            None => Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, s.attention_scale, gqa),
            Some(cap) => {
                let mask = if causal { Some(band(0, t, None, q.device())) } else { mask };
                let scale = s.attention_scale.unwrap_or((s.head_size as f64).powf(-0.5));
                soft_capped(&q, &k, &v, mask, scale, cap)
            }
        };
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

/// The keys and values the `t` queries of `ctx` see, and the mask that picks each query's (`None`:
/// all of them, or SDPA's own causal mask where the flag says so). A sliding `window` binds only once
/// there are more than `window` keys: then each query sees the last `window` positions up to its own.
fn visible(
    ctx: &BlockCtx,
    window: Option<i64>,
    k: Tensor,
    v: Tensor,
    t: i64,
) -> (Tensor, Tensor, Option<Tensor>, bool) {
    let (start, device) = (ctx.start, k.device());
    let kv_len = start + t;
    let window = window.filter(|&w| kv_len > w);
    match (&ctx.mask, window) {
        (Mask::Packed(m), None) => (k, v, Some(m.shallow_clone()), false),
        (Mask::Packed(m), Some(w)) => (k, v, Some(m.logical_and(&band(0, t, Some(w), device))), false),
        // One new query (generation): its window is the last `w` keys.
        (Mask::Causal, Some(w)) if t == 1 => (k.narrow(2, kv_len - w, w), v.narrow(2, kv_len - w, w), None, false),
        (Mask::Causal, Some(_)) => (k, v, Some(band(start, kv_len, window, device)), false),
        // SDPA's is_causal aligns the mask top-left, which is only right when queries start at 0.
        (Mask::Causal, None) if t > 1 && start > 0 => (k, v, Some(band(start, kv_len, None, device)), false),
        (Mask::Causal, None) => (k, v, None, t > 1),
    }
}

/// Attention with `cap · tanh(scores / cap)` scores (Gemma 2), as transformers' eager attention computes
/// it: each key/value group repeated for its query heads, the softmax in fp32.
fn soft_capped(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<Tensor>, scale: f64, cap: f64) -> Tensor {
    let repeat = q.size()[1] / k.size()[1];
    let (k, v) = (k.repeat_interleave_self_int(repeat, 1, None), v.repeat_interleave_self_int(repeat, 1, None));
    let scores = q.matmul(&k.transpose(-2, -1)) * scale;
    let scores = (scores / cap).tanh() * cap;
    let scores = match mask {
        Some(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
        None => scores,
    };
    scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
}

/// `(queries, keys)`: true where query position `start + i` may see key position `j`: `j` at most its
/// own, and within the last `window` positions when there is one.
fn band(start: i64, kv_len: i64, window: Option<i64>, device: tch::Device) -> Tensor {
    let rows = Tensor::arange_start(start, kv_len, (Kind::Int64, device)).unsqueeze(1);
    let cols = Tensor::arange(kv_len, (Kind::Int64, device)).unsqueeze(0);
    let causal = cols.le_tensor(&rows);
    match window {
        Some(w) => causal.logical_and(&cols.gt_tensor(&(rows - w))),
        None => causal,
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
        let q = self.qk_norm(q, Module::QNorm(i));
        let q = rope(self, q);
        let k = self.linear(h, Module::Linear(i, Proj::K));
        let k = self.qk_norm(k, Module::KNorm(i));
        let k = rope(self, k);
        let v = self.linear(h, Module::Linear(i, Proj::V));
        let windowed = self.spec.window(i).is_some_and(|w| self.time > w);
        let y = match self.spec.attention_softcap {
            None => self.sdpa(q, k, v, self.packed || windowed),
            Some(_) => self.soft_capped(q, k, v),
        };
        let y = self.adapter_prompt(i, q, y);
        self.linear(y, Module::Linear(i, Proj::O))
    }

    /// A q or k norm, where the family has one.
    fn qk_norm(&mut self, x: Val, module: Module) -> Val {
        if self.spec.qk_norm.is_some() {
            self.norm(x, module)
        } else {
            x
        }
    }

    /// [`soft_capped`] attention: the repeated keys and values, the scores before and after the cap
    /// and their softmax (time × time per head), each kept for the backward pass.
    fn soft_capped(&mut self, q: Val, k: Val, v: Val) -> Val {
        let grad = q.grad || k.grad || v.grad;
        let out = self.val(q.rows, q.width, q.elem_bytes, grad);
        if grad {
            let repeated = self.val(k.rows, q.width, k.elem_bytes, true);
            let scores = self.val(q.rows, self.spec.n_head * self.time, q.elem_bytes, true);
            let probs = self.val(q.rows, self.spec.n_head * self.time, 4, true);
            for t in [q, repeated, repeated, scores, scores, probs, probs] {
                self.save(t);
            }
            self.widest = self.widest.max(probs.bytes());
        }
        out
    }

    /// Scaled dot-product attention through a fused kernel: it keeps q, k, v, its output and the
    /// softmax's log-sum-exp per query and head, never the time × time scores; with a `masked`
    /// attention (packed rows, a sliding window shorter than the rows), its own copy of the mask.
    pub(super) fn sdpa(&mut self, q: Val, k: Val, v: Val, masked: bool) -> Val {
        let grad = q.grad || k.grad || v.grad;
        let out = self.val(q.rows, q.width, q.elem_bytes, grad);
        if grad {
            for t in [q, k, v, out] {
                self.save(t);
            }
            let lse = self.val(q.rows, self.spec.n_head, 4, false);
            self.save(lse);
            if masked && k.rows == q.rows {
                let mask = self.val(q.rows, self.time, q.elem_bytes, false);
                self.save(mask);
            }
        }
        out
    }
}
