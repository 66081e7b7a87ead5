//! One GPT for every supported family: the switches in [`ModelSpec`] pick the norm, the MLP, the
//! residual layout, rotary details and biases. Which tensors exist, and their names, come from
//! [`layout`](super::layout); this file holds them in plain structs and computes with them.
use tch::{Kind, Tensor};

use super::adapter::{Adapter, AdapterV2};
use super::layout::{self, At, Module, Param, Proj, TensorSpec};
use super::lora::{self, Input, Lora, LoraScaling};
use super::spec::{Mlp as MlpKind, ModelSpec, Norm as NormKind};

/// `t` in the kind of `like` (trainable weights may be kept in fp32 under a 16-bit compute kind).
pub(super) fn cast(t: &Tensor, like: &Tensor) -> Tensor {
    if t.kind() == like.kind() {
        t.shallow_clone()
    } else {
        t.to_kind(like.kind())
    }
}

/// How a forward pass runs: training (dropout on) or not, and the model's LoRA scaling.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub training: bool,
    pub lora: LoraScaling,
}

#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    pub adapter_v2: Option<AdapterV2>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias, lora: None, adapter_v2: None }
    }

    fn empty() -> Linear {
        Linear::new(Tensor::new(), None)
    }

    pub fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        self.forward_input(&Input::new(x), ctx)
    }

    /// [`Linear::forward`] of an input other layers read too (sharing its LoRA dropout).
    pub fn forward_input(&self, input: &Input, ctx: Ctx) -> Tensor {
        let x = input.x;
        let bias = self.bias.as_ref().map(|b| cast(b, x));
        let y = x.linear(&cast(&self.weight, x), bias.as_ref());
        let y = match &self.lora {
            Some(l) => y + lora::delta(l, input, ctx.lora, ctx.training),
            None => y,
        };
        match &self.adapter_v2 {
            Some(a) => a.apply(y),
            None => y,
        }
    }

    /// The tensor `param`, created empty when the layer has none yet.
    fn slot(&mut self, param: Param) -> &mut Tensor {
        match param {
            Param::Weight => &mut self.weight,
            Param::Bias => self.bias.get_or_insert_with(Tensor::new),
            Param::LoraA => &mut self.lora.get_or_insert_with(Lora::empty).a,
            Param::LoraB => &mut self.lora.get_or_insert_with(Lora::empty).b,
            Param::AdapterScale => &mut self.adapter_v2.get_or_insert_with(AdapterV2::empty).scale,
            Param::AdapterBias => &mut self.adapter_v2.get_or_insert_with(AdapterV2::empty).bias,
            Param::AdapterPrefix | Param::AdapterGate => unreachable!("a linear layer has no {param:?}"),
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
    fn empty(spec: &ModelSpec) -> Norm {
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

    fn slot(&mut self, param: Param) -> &mut Tensor {
        match param {
            Param::Weight => &mut self.weight,
            Param::Bias => self.bias.get_or_insert_with(Tensor::new),
            _ => unreachable!("a norm has no {param:?}"),
        }
    }
}

/// The feed-forward layers of a block: `down(act(up(x)))`, or `down(silu(gate(x)) · up(x))` for SwiGLU.
#[derive(Debug)]
pub struct Mlp {
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
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
    pub mlp: Mlp,
    pub adapter: Option<Adapter>,
}

impl Block {
    fn empty(spec: &ModelSpec) -> Block {
        Block {
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

    fn linear(&mut self, proj: Proj) -> &mut Linear {
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
    /// The tensors this model holds (the checkpoint's, and those of the method applied to it).
    pub layout: Vec<TensorSpec>,
    inv_freq: Tensor,
    /// The kind activations are computed in.
    pub compute_kind: Kind,
    /// Dropout is active only while training.
    pub training: bool,
    pub lora: LoraScaling,
}

impl Gpt {
    /// Builds the model of `spec` with each of its checkpoint tensors from `tensor`.
    pub fn from_tensors(spec: ModelSpec, mut tensor: impl FnMut(&TensorSpec) -> Tensor) -> Gpt {
        let layout = layout::tensors(&spec, None);
        let mut model = Gpt {
            embed: Tensor::new(),
            blocks: (0..spec.n_layer).map(|_| Block::empty(&spec)).collect(),
            final_norm: Norm::empty(&spec),
            head: Linear::empty(),
            layout: Vec::new(),
            inv_freq: Tensor::new(),
            compute_kind: Kind::Float,
            training: false,
            lora: LoraScaling::default(),
            spec,
        };
        for t in &layout {
            *model.slot(t.at) = tensor(t);
        }
        model.layout = layout;
        model.inv_freq = inverse_frequencies(&model.spec).to_device(model.embed.device());
        model.compute_kind = model.embed.kind();
        model.retie();
        model
    }

    /// The tensor at `at`, created empty when its module has none yet.
    pub fn slot(&mut self, at: At) -> &mut Tensor {
        match at.module {
            Module::Embed => &mut self.embed,
            Module::Norm1(i) => self.blocks[i].norm1.slot(at.param),
            Module::Norm2(i) => {
                let norm = &mut self.blocks[i].norm2;
                norm.get_or_insert_with(|| Norm::empty(&self.spec)).slot(at.param)
            }
            Module::Linear(i, proj) => self.blocks[i].linear(proj).slot(at.param),
            Module::Adapter(i) => {
                let adapter = self.blocks[i].adapter.get_or_insert_with(Adapter::empty);
                match at.param {
                    Param::AdapterPrefix => &mut adapter.prefix,
                    Param::AdapterGate => &mut adapter.gate,
                    other => unreachable!("an adapter prompt has no {other:?}"),
                }
            }
            Module::FinalNorm => self.final_norm.slot(at.param),
            Module::Head => self.head.slot(at.param),
        }
    }

    /// Every tensor of the model by its ftexp name (`layers.3.q.lora_a`), in the layout's order. A tied
    /// head is visited once, as `embed`.
    pub fn visit(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        let layout = std::mem::take(&mut self.layout);
        for t in &layout {
            f(&t.name(), self.slot(t.at));
        }
        self.layout = layout;
    }

    /// The checkpoint's tensors under their hub names (fused q/k/v rebuilt), for exporting a fully
    /// fine-tuned or pretrained model. Method tensors are not included.
    pub fn hub_weights(&mut self) -> Vec<(String, Tensor)> {
        let spec = self.spec.clone();
        let mut out = Vec::new();
        for t in layout::tensors(&spec, None) {
            let Some(hub) = t.hub_name(&spec) else { continue };
            let tensor = match (hub.fused_part, t.at.module) {
                (None, _) => self.slot(t.at).shallow_clone(),
                (Some(0), Module::Linear(i, _)) => {
                    let part = |model: &mut Gpt, proj| {
                        model.slot(At { module: Module::Linear(i, proj), param: t.at.param }).shallow_clone()
                    };
                    let (q, k, v) = (part(self, Proj::Q), part(self, Proj::K), part(self, Proj::V));
                    fuse(&spec, &q, &k, &v)
                }
                _ => continue,
            };
            out.push((hub.name, tensor));
        }
        out
    }

    /// Removes every method tensor (after they were folded into the weights), leaving the base layout.
    pub fn strip_method(&mut self) {
        let linears = self.blocks.iter_mut().flat_map(|b| {
            b.adapter = None;
            [&mut b.q, &mut b.k, &mut b.v, &mut b.o, &mut b.mlp.up, &mut b.mlp.down]
                .into_iter()
                .chain(b.mlp.gate.as_mut())
        });
        for lin in linears.chain([&mut self.head]) {
            (lin.lora, lin.adapter_v2) = (None, None);
        }
        self.layout = layout::tensors(&self.spec, None);
        self.lora = LoraScaling::default();
    }

    /// Points a tied head at the (possibly replaced) embedding again.
    pub fn retie(&mut self) {
        if self.spec.tie_embeddings {
            self.head.weight = self.embed.shallow_clone();
        }
    }

    pub fn ctx(&self) -> Ctx {
        Ctx { training: self.training, lora: self.lora }
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
        Rope { cos: angles.cos().to_kind(self.compute_kind), sin: angles.sin().to_kind(self.compute_kind) }
    }

    /// Final-norm hidden states `(batch, time, hidden)` for `ids` `(batch, time)`, continuing `cache`.
    pub fn hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let start = cache.as_ref().map_or(0, |c| c.len);
        let t = ids.size()[1];
        let rope = self.rope(start, t);
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false).to_kind(self.compute_kind);
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = self.block_forward(block, &x, &rope, start, layer_cache, None);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.final_norm.forward(&x)
    }

    /// Final-norm hidden states of packed rows: several samples per row, `positions` `(batch, time)`
    /// restarting at 0 with each sample, and attention confined to the positions of the same
    /// `segments` value (causal within each sample), so each sample is computed as if alone.
    pub fn hidden_packed(&self, ids: &Tensor, positions: &Tensor, segments: &Tensor) -> Tensor {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq; // (batch, time, dims / 2)
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // (batch, 1, time, dims)
        let rope = Rope { cos: angles.cos().to_kind(self.compute_kind), sin: angles.sin().to_kind(self.compute_kind) };
        let t = ids.size()[1];
        let same = segments.unsqueeze(2).eq_tensor(&segments.unsqueeze(1)); // (batch, time, time)
        let causal = Tensor::ones([t, t], (Kind::Bool, ids.device())).tril(0);
        let mask = same.logical_and(&causal).unsqueeze(1); // (batch, 1, time, time)
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false).to_kind(self.compute_kind);
        for block in &self.blocks {
            x = self.block_forward(block, &x, &rope, 0, None, Some(&mask));
        }
        self.final_norm.forward(&x)
    }

    /// Token scores for hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        self.head.forward(hidden, self.ctx())
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
        packed: Option<&Tensor>,
    ) -> Tensor {
        let h1 = b.norm1.forward(x);
        let attn = self.attention(b, &h1, rope, start, cache, packed);
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
        packed: Option<&Tensor>,
    ) -> Tensor {
        let s = &self.spec;
        let (batch, t) = (x.size()[0], x.size()[1]);
        // (batch, time, n × head) → (batch, n, time, head)
        let input = Input::new(x);
        let heads = |lin: &Linear, n: i64| {
            lin.forward_input(&input, self.ctx()).view([batch, t, n, s.head_size]).transpose(1, 2)
        };
        let q = apply_rope(&heads(&b.q, s.n_head), rope, s.rope_dims); // (batch, heads, time, head)
        let k = apply_rope(&heads(&b.k, s.n_query_groups), rope, s.rope_dims); // (batch, groups, time, head)
        let v = heads(&b.v, s.n_query_groups); // (batch, groups, time, head)
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
        let mask = match packed {
            Some(m) => Some(m.shallow_clone()),
            None => (t > 1 && start > 0).then(|| {
                let rows = Tensor::arange_start(start, kv_len, (Kind::Int64, x.device())).unsqueeze(1);
                let cols = Tensor::arange(kv_len, (Kind::Int64, x.device())).unsqueeze(0);
                cols.le_tensor(&rows)
            }),
        };
        let causal = t > 1 && start == 0 && packed.is_none();
        let gqa = s.n_query_groups != s.n_head;
        // (batch, heads, time, head), each group's key and value shared by its query heads
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, None, gqa);
        // Not in place: attention's backward needs its own output unchanged.
        let y = match &b.adapter {
            None => y,
            Some(a) => y + a.attend(&q, &b.k, &b.v, s, self.ctx()),
        };
        // (batch, heads, time, head) → (batch, time, heads × head)
        b.o.forward(&y.transpose(1, 2).reshape([batch, t, s.n_head * s.head_size]), self.ctx())
    }

    fn mlp(&self, b: &Block, x: &Tensor) -> Tensor {
        let (m, ctx, input) = (&b.mlp, self.ctx(), Input::new(x));
        let hidden = match (self.spec.mlp, &m.gate) {
            (MlpKind::SwiGlu, Some(gate)) => gate.forward_input(&input, ctx).silu() * m.up.forward_input(&input, ctx),
            (MlpKind::GeluTanh, _) => m.up.forward(x, ctx).gelu("tanh"),
            _ => m.up.forward(x, ctx).gelu("none"),
        };
        m.down.forward(&hidden, ctx)
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

/// Part `part` (0 q, 1 k, 2 v) of a fused q/k/v weight or bias: its rows are grouped per key/value
/// group, each group holding its query heads, then its key, then its value.
pub fn fused_part(spec: &ModelSpec, fused: &Tensor, part: usize) -> Tensor {
    let (groups, hs) = (spec.n_query_groups, spec.head_size);
    let per_group = spec.n_head / groups;
    let trailing: Vec<i64> = fused.size()[1..].to_vec();
    // (rows, …) → (groups, per_group + 2, head, …)
    let grouped = fused.view(&*[&[groups, per_group + 2, hs][..], &trailing].concat());
    let (from, n, rows) = match part {
        0 => (0, per_group, spec.n_head * hs),
        1 => (per_group, 1, groups * hs),
        _ => (per_group + 1, 1, groups * hs),
    };
    grouped.narrow(1, from, n).reshape(&*[&[rows][..], &trailing].concat()).contiguous()
}

/// The inverse of [`fused_part`]: per key/value group, its query heads, its key, its value.
pub fn fuse(spec: &ModelSpec, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (groups, hs) = (spec.n_query_groups, spec.head_size);
    let per_group = spec.n_head / groups;
    let trailing: Vec<i64> = q.size()[1..].to_vec();
    let shape = |n: i64| [&[groups, n, hs][..], &trailing].concat();
    let rows = groups * (per_group + 2) * hs;
    // (groups, per_group | 1 | 1, head, …) joined on the second axis, then flattened to (rows, …)
    Tensor::cat(&[q.view(&*shape(per_group)), k.view(&*shape(1)), v.view(&*shape(1))], 1)
        .reshape(&*[&[rows][..], &trailing].concat())
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
