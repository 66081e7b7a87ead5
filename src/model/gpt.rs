//! One GPT for every supported family: the switches in [`ModelSpec`] pick the norm, the MLP, the
//! residual layout, rotary details and biases.
use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::spec::{Mlp, ModelSpec, Norm as NormKind, Qkv};

#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// LoRA: `dropout(x)·Aᵀ·Bᵀ·scale` added to the output.
    pub lora: Option<Lora>,
    /// Adapter v2: the output becomes `scale ⊙ (Wx + b + bias)`, scale ones and bias zeros at first.
    pub adapter_v2: Option<AdapterV2>,
}

#[derive(Debug)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

#[derive(Debug)]
pub struct AdapterV2 {
    pub scale: Tensor,
    pub bias: Tensor,
}

/// `t` in the kind of `like` (trainable weights may be kept in fp32 under a 16-bit compute kind).
fn cast(t: &Tensor, like: &Tensor) -> Tensor {
    if t.kind() == like.kind() {
        t.shallow_clone()
    } else {
        t.to_kind(like.kind())
    }
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias, lora: None, adapter_v2: None }
    }

    pub fn forward(&self, x: &Tensor, training: bool) -> Tensor {
        let bias = self.bias.as_ref().map(|b| cast(b, x));
        let y = x.linear(&cast(&self.weight, x), bias.as_ref());
        let y = match &self.lora {
            Some(l) => {
                let xd = if training && l.dropout > 0.0 { x.dropout(l.dropout, true) } else { x.shallow_clone() };
                y + xd.linear::<&Tensor>(&cast(&l.a, x), None).linear::<&Tensor>(&cast(&l.b, x), None) * l.scale
            }
            None => y,
        };
        match &self.adapter_v2 {
            Some(a) => (y + cast(&a.bias, x)) * cast(&a.scale, x),
            None => y,
        }
    }

    /// The weight's tensors by name suffix, for checkpoints and the optimizer.
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&format!("{prefix}.weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&format!("{prefix}.bias"), b);
        }
        if let Some(l) = &mut self.lora {
            f(&format!("{prefix}.lora_a"), &mut l.a);
            f(&format!("{prefix}.lora_b"), &mut l.b);
        }
        if let Some(a) = &mut self.adapter_v2 {
            f(&format!("{prefix}.adapter_scale"), &mut a.scale);
            f(&format!("{prefix}.adapter_bias"), &mut a.bias);
        }
    }
}

#[derive(Debug)]
pub struct Norm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub kind: NormKind,
    pub eps: f64,
}

impl Norm {
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

    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&format!("{prefix}.weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&format!("{prefix}.bias"), b);
        }
    }
}

/// LLaMA-Adapter: learned prompt vectors whose keys and values (from the layer's own projections,
/// without rotary) are attended by a separate softmax and added through a zero-initialised gate per head.
#[derive(Debug)]
pub struct Adapter {
    /// `(prompt_length, hidden)`.
    pub prefix: Tensor,
    /// `(1, heads, 1, 1)`.
    pub gate: Tensor,
}

#[derive(Debug)]
pub struct Block {
    pub norm1: Norm,
    /// The MLP's own norm; `None` when attention and MLP share `norm1` (Falcon 7B).
    pub norm2: Option<Norm>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// fc, proj (GELU) or gate, up, down (SwiGLU).
    pub mlp: Vec<Linear>,
    pub adapter: Option<Adapter>,
}

/// Keys and values of past positions, preallocated for `capacity` positions.
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
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

/// Rotary embedding angles for a run of positions, shared by every layer of one forward pass.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

pub struct Gpt {
    pub spec: ModelSpec,
    pub embed: Tensor,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// The output head; its weight is the embedding itself when the checkpoint ties them.
    pub head: Linear,
    inv_freq: Tensor,
    /// The kind activations are computed in.
    pub compute_kind: Kind,
    /// Dropout is active only while training.
    pub training: bool,
}

impl Gpt {
    /// Builds the model from the checkpoint's weights (by hub name), splitting fused q/k/v matrices.
    pub fn from_weights(spec: ModelSpec, mut w: HashMap<String, Tensor>) -> Gpt {
        let names = spec.names();
        let mut take = |name: &str| w.remove(name).unwrap_or_else(|| panic!("weight {name} was checked present"));
        let linear = |take: &mut dyn FnMut(&str) -> Tensor, name: &str, bias: bool| {
            Linear::new(take(&format!("{name}.weight")), bias.then(|| take(&format!("{name}.bias"))))
        };
        let norm = |take: &mut dyn FnMut(&str) -> Tensor, name: &str| Norm {
            weight: take(&format!("{name}.weight")),
            bias: (spec.norm == NormKind::LayerNorm).then(|| take(&format!("{name}.bias"))),
            kind: spec.norm,
            eps: spec.norm_eps,
        };
        let embed = take(names.embed);
        let mut blocks = Vec::new();
        for i in 0..spec.n_layer {
            let p = format!("{}.{i}", names.layers);
            let norm1 = norm(&mut take, &format!("{p}.{}", names.norm1));
            let norm2 = spec.second_norm(&names).map(|n| norm(&mut take, &format!("{p}.{n}")));
            let (q, k, v) = match names.qkv {
                Qkv::Split(qn, kn, vn) => (
                    linear(&mut take, &format!("{p}.{qn}"), spec.qkv_bias),
                    linear(&mut take, &format!("{p}.{kn}"), spec.qkv_bias),
                    linear(&mut take, &format!("{p}.{vn}"), spec.qkv_bias),
                ),
                Qkv::Fused(n) => split_fused(&spec, linear(&mut take, &format!("{p}.{n}"), spec.qkv_bias)),
            };
            let o = linear(&mut take, &format!("{p}.{}", names.attn_out), spec.proj_bias);
            let n_mlp = if spec.mlp == Mlp::SwiGlu { 3 } else { 2 };
            let mlp =
                names.mlp[..n_mlp].iter().map(|m| linear(&mut take, &format!("{p}.{m}"), spec.proj_bias)).collect();
            blocks.push(Block { norm1, norm2, q, k, v, o, mlp, adapter: None });
        }
        let final_norm = norm(&mut take, names.final_norm);
        let head = Linear::new(if spec.tie_embeddings { embed.shallow_clone() } else { take(names.head) }, None);
        let inv_freq = inverse_frequencies(&spec).to_device(embed.device());
        let compute_kind = embed.kind();
        Gpt { spec, embed, blocks, final_norm, head, inv_freq, compute_kind, training: false }
    }

    /// Every tensor of the model by its ftexp name (`layers.3.q.lora_a`), including method tensors.
    /// A tied head is visited once, as `embed`.
    pub fn visit(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f("embed", &mut self.embed);
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("layers.{i}");
            b.norm1.visit(&format!("{p}.norm1"), f);
            if let Some(n) = &mut b.norm2 {
                n.visit(&format!("{p}.norm2"), f);
            }
            for (name, lin) in [("q", &mut b.q), ("k", &mut b.k), ("v", &mut b.v), ("o", &mut b.o)] {
                lin.visit(&format!("{p}.{name}"), f);
            }
            for (j, lin) in b.mlp.iter_mut().enumerate() {
                lin.visit(&format!("{p}.mlp.{j}"), f);
            }
            if let Some(a) = &mut b.adapter {
                f(&format!("{p}.adapter_prefix"), &mut a.prefix);
                f(&format!("{p}.adapter_gate"), &mut a.gate);
            }
        }
        self.final_norm.visit("final_norm", f);
        let tied = self.spec.tie_embeddings;
        self.head.visit("head", &mut |name, t| {
            if !(tied && name == "head.weight") {
                f(name, t)
            }
        });
    }

    /// The base weights under their hub names (fused q/k/v layouts rebuilt), for exporting a fully
    /// fine-tuned or pretrained model as a checkpoint. Method tensors are not included.
    pub fn hf_weights(&self) -> Vec<(String, Tensor)> {
        let s = &self.spec;
        let names = s.names();
        let mut out = vec![(names.embed.to_string(), self.embed.shallow_clone())];
        let linear = |out: &mut Vec<(String, Tensor)>, name: String, l: &Linear| {
            out.push((format!("{name}.weight"), l.weight.shallow_clone()));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b.shallow_clone()));
            }
        };
        let norm = |out: &mut Vec<(String, Tensor)>, name: String, n: &Norm| {
            out.push((format!("{name}.weight"), n.weight.shallow_clone()));
            if let Some(b) = &n.bias {
                out.push((format!("{name}.bias"), b.shallow_clone()));
            }
        };
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("{}.{i}", names.layers);
            norm(&mut out, format!("{p}.{}", names.norm1), &b.norm1);
            if let (Some(n), Some(name)) = (&b.norm2, s.second_norm(&names)) {
                norm(&mut out, format!("{p}.{name}"), n);
            }
            match names.qkv {
                Qkv::Split(qn, kn, vn) => {
                    linear(&mut out, format!("{p}.{qn}"), &b.q);
                    linear(&mut out, format!("{p}.{kn}"), &b.k);
                    linear(&mut out, format!("{p}.{vn}"), &b.v);
                }
                Qkv::Fused(n) => linear(&mut out, format!("{p}.{n}"), &fuse(s, &b.q, &b.k, &b.v)),
            }
            linear(&mut out, format!("{p}.{}", names.attn_out), &b.o);
            for (m, l) in names.mlp.iter().zip(&b.mlp) {
                linear(&mut out, format!("{p}.{m}"), l);
            }
        }
        norm(&mut out, names.final_norm.into(), &self.final_norm);
        if !s.tie_embeddings {
            out.push((names.head.to_string(), self.head.weight.shallow_clone()));
        }
        out
    }

    /// Points a tied head at the (possibly replaced) embedding again.
    pub fn retie(&mut self) {
        if self.spec.tie_embeddings {
            self.head.weight = self.embed.shallow_clone();
        }
    }

    pub fn device(&self) -> tch::Device {
        self.embed.device()
    }

    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    /// Rotary angles for positions `start .. start + len`, in fp32 as transformers computes them.
    pub fn rope(&self, start: i64, len: i64) -> Rope {
        let positions = Tensor::arange_start(start, start + len, (Kind::Float, self.device()));
        let freqs = positions.outer(&self.inv_freq);
        let angles = Tensor::cat(&[&freqs, &freqs], -1);
        Rope { cos: angles.cos().to_kind(self.kind()), sin: angles.sin().to_kind(self.kind()) }
    }

    /// Final-norm hidden states `(batch, time, hidden)` for `ids` `(batch, time)`, continuing `cache`.
    pub fn hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let start = cache.as_ref().map_or(0, |c| c.len);
        let t = ids.size()[1];
        let rope = self.rope(start, t);
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false).to_kind(self.compute_kind);
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = self.block_forward(block, &x, &rope, start, layer_cache);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.final_norm.forward(&x)
    }

    /// Token scores for hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        self.head.forward(hidden, self.training)
    }

    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        self.logits(&self.hidden(ids, cache))
    }

    fn block_forward(
        &self,
        b: &Block,
        x: &Tensor,
        rope: &Rope,
        start: i64,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let h1 = b.norm1.forward(x);
        let attn = self.attention(b, &h1, rope, start, cache);
        if self.spec.parallel_residual {
            let mlp = match &b.norm2 {
                Some(n) => self.mlp(b, &n.forward(x)),
                None => self.mlp(b, &h1),
            };
            x + attn + mlp
        } else {
            let x = x + attn;
            let h2 = b.norm2.as_ref().expect("sequential blocks have two norms").forward(&x);
            &x + self.mlp(b, &h2)
        }
    }

    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        rope: &Rope,
        start: i64,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let s = &self.spec;
        let (batch, t) = (x.size()[0], x.size()[1]);
        let heads =
            |lin: &Linear, n: i64| lin.forward(x, self.training).view([batch, t, n, s.head_size]).transpose(1, 2);
        let q = apply_rope(&heads(&b.q, s.n_head), rope, s.rope_dims);
        let k = apply_rope(&heads(&b.k, s.n_query_groups), rope, s.rope_dims);
        let v = heads(&b.v, s.n_query_groups);
        let (k, v) = match cache {
            Some((c, layer)) => {
                c.keys[layer].narrow(2, start, t).copy_(&k);
                c.values[layer].narrow(2, start, t).copy_(&v);
                (c.keys[layer].narrow(2, 0, start + t), c.values[layer].narrow(2, 0, start + t))
            }
            None => (k, v),
        };
        let kv_len = start + t;
        // SDPA's is_causal aligns the mask top-left, which is only right when queries start at 0.
        let mask = (t > 1 && start > 0).then(|| {
            let rows = Tensor::arange_start(start, kv_len, (Kind::Int64, x.device())).unsqueeze(1);
            let cols = Tensor::arange(kv_len, (Kind::Int64, x.device())).unsqueeze(0);
            cols.le_tensor(&rows)
        });
        let gqa = s.n_query_groups != s.n_head;
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, t > 1 && start == 0, None, gqa);
        // Not in place: attention's backward needs its own output unchanged.
        let y = match &b.adapter {
            None => y,
            Some(a) => {
                let prefix = cast(&a.prefix, x).unsqueeze(0);
                let p = prefix.size()[1];
                let project = |lin: &Linear| {
                    lin.forward(&prefix, self.training)
                        .view([1, p, s.n_query_groups, s.head_size])
                        .transpose(1, 2)
                        .expand([batch, s.n_query_groups, p, s.head_size], false)
                };
                let ay = Tensor::scaled_dot_product_attention::<Tensor>(
                    &q,
                    &project(&b.k),
                    &project(&b.v),
                    None,
                    0.0,
                    false,
                    None,
                    gqa,
                );
                y + cast(&a.gate, x) * ay
            }
        };
        b.o.forward(&y.transpose(1, 2).reshape([batch, t, s.n_head * s.head_size]), self.training)
    }

    fn mlp(&self, b: &Block, x: &Tensor) -> Tensor {
        let f = |i: usize, x: &Tensor| b.mlp[i].forward(x, self.training);
        match self.spec.mlp {
            Mlp::Gelu => f(1, &f(0, x).gelu("none")),
            Mlp::GeluTanh => f(1, &f(0, x).gelu("tanh")),
            Mlp::SwiGlu => f(2, &(f(0, x).silu() * f(1, x))),
        }
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

/// Fused q/k/v rows are grouped per key/value group: the group's query heads, then its key, then its value.
fn split_fused(spec: &ModelSpec, fused: Linear) -> (Linear, Linear, Linear) {
    let (groups, hs) = (spec.n_query_groups, spec.head_size);
    let per_group = spec.n_head / groups;
    let split = |t: &Tensor| {
        let trailing: Vec<i64> = t.size()[1..].to_vec();
        let grouped = t.view(&*[&[groups, per_group + 2, hs][..], &trailing].concat());
        let part = |from: i64, n: i64, rows: i64| {
            grouped.narrow(1, from, n).reshape(&*[&[rows][..], &trailing].concat()).contiguous()
        };
        (part(0, per_group, spec.n_head * hs), part(per_group, 1, groups * hs), part(per_group + 1, 1, groups * hs))
    };
    let (wq, wk, wv) = split(&fused.weight);
    let (bq, bk, bv) = match fused.bias.as_ref().map(split) {
        Some((q, k, v)) => (Some(q), Some(k), Some(v)),
        None => (None, None, None),
    };
    (Linear::new(wq, bq), Linear::new(wk, bk), Linear::new(wv, bv))
}

/// The inverse of [`split_fused`]: per key/value group, its query heads, its key, its value.
fn fuse(spec: &ModelSpec, q: &Linear, k: &Linear, v: &Linear) -> Linear {
    let (groups, hs) = (spec.n_query_groups, spec.head_size);
    let per_group = spec.n_head / groups;
    let join = |q: &Tensor, k: &Tensor, v: &Tensor| {
        let trailing: Vec<i64> = q.size()[1..].to_vec();
        let shape = |n: i64| [&[groups, n, hs][..], &trailing].concat();
        let rows = groups * (per_group + 2) * hs;
        Tensor::cat(&[q.view(&*shape(per_group)), k.view(&*shape(1)), v.view(&*shape(1))], 1)
            .reshape(&*[&[rows][..], &trailing].concat())
    };
    let bias = match (&q.bias, &k.bias, &v.bias) {
        (Some(a), Some(b), Some(c)) => Some(join(a, b, c)),
        _ => None,
    };
    Linear::new(join(&q.weight, &k.weight, &v.weight), bias)
}

/// 1 / theta^(2i/d) in fp32, with Llama 3 frequency scaling when the checkpoint asks for it.
fn inverse_frequencies(spec: &ModelSpec) -> Tensor {
    let d = spec.rope_dims;
    let exponents = Tensor::arange_start_step(0, d, 2, (Kind::Int64, tch::Device::Cpu)).to_kind(Kind::Float) / d as f64;
    let inv = Tensor::from(spec.rope_theta as f32).pow(&exponents).reciprocal();
    let Some(s) = spec.rope_llama3 else { return inv };
    let values: Vec<f32> = Vec::try_from(&inv).expect("a float vector");
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let scaled: Vec<f32> = values
        .iter()
        .map(|&f| {
            let f = f as f64;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let g = if wavelen > low_wavelen { f / s.factor } else { f };
            if wavelen < high_wavelen || wavelen > low_wavelen {
                g as f32
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                ((1.0 - smooth) * g / s.factor + smooth * g) as f32
            }
        })
        .collect();
    Tensor::from_slice(&scaled)
}
