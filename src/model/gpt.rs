//! One GPT for every supported family: the switches in [`ModelSpec`] pick the norm, the MLP, the
//! residual layout, rotary details and biases. Which tensors exist, and their names, come from
//! [`layout`](super::layout); the embedding, the blocks ([`Block::forward`]), the final norm and the
//! head hold them in plain structs and compute with them.
use tch::{Kind, Tensor};

use super::adapter::Adapter;
use super::block::{Block, BlockCtx, KvCache, Mask, Rope};
use super::footprint::{Val, Walk};
use super::layout::{self, At, Module, Param, Proj, TensorSpec};
use super::linear::{Ctx, Linear};
use super::lora::{Input, LoraScaling, RowSeeds, Site};
use super::norm::Norm;
use super::spec::ModelSpec;
use super::weight::Weight;

/// A checkpoint tensor as [`Gpt::from_parts`] receives it.
pub enum Part {
    Dense(Tensor),
    /// A block's linear weight, held quantized.
    Quantized(super::quant::Quantized),
}

/// Whether `at` is a weight [`Gpt::quantize`] quantizes: a block's linear layer's.
pub fn quantizable(at: At) -> bool {
    matches!(at.module, Module::Linear(..)) && at.param == Param::Weight
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
    /// The training micro-batch's per-row dropout seeds ([`RowSeeds`]); empty: the global generator.
    pub dropout_seeds: Vec<i64>,
}

impl Gpt {
    /// Builds the model of `spec` with each of its checkpoint tensors from `tensor`.
    pub fn from_tensors(spec: ModelSpec, mut tensor: impl FnMut(&TensorSpec) -> Tensor) -> Gpt {
        Gpt::from_parts(spec, |t| Part::Dense(tensor(t)))
    }

    /// [`Gpt::from_tensors`] where a block's linear weight may come quantized: each is in place before
    /// the next is asked for, so a quantized model never holds all of its dense weights at once.
    pub fn from_parts(spec: ModelSpec, mut part: impl FnMut(&TensorSpec) -> Part) -> Gpt {
        let layout = layout::tensors(&spec, None);
        let mut model = Gpt {
            embed: Tensor::new(),
            blocks: (0..spec.n_layer as usize).map(|i| Block::empty(&spec, i)).collect(),
            final_norm: Norm::empty(&spec),
            head: Linear::empty(),
            layout: Vec::new(),
            inv_freq: Tensor::new(),
            compute_kind: Kind::Float,
            training: false,
            lora: LoraScaling::default(),
            dropout_seeds: Vec::new(),
            spec,
        };
        for t in &layout {
            match (part(t), t.at.module) {
                (Part::Quantized(q), Module::Linear(i, proj)) if t.at.param == Param::Weight => {
                    model.blocks[i].linear(proj).weight = Weight::Quantized(q);
                }
                (Part::Quantized(_), _) => unreachable!("only a block's linear weight is held quantized"),
                (Part::Dense(tensor), _) => *model.slot(t.at) = tensor,
            }
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
            if !self.is_quantized(t.at) {
                f(&t.name(), self.slot(t.at));
            }
        }
        self.layout = layout;
    }

    /// Whether the tensor at `at` is a quantized weight (which [`Gpt::visit`] leaves out: it has no
    /// dense tensor to visit).
    pub fn is_quantized(&self, at: At) -> bool {
        let Module::Linear(i, proj) = at.module else { return false };
        at.param == Param::Weight && self.blocks[i].linear_ref(proj).is_some_and(|l| l.weight.is_quantized())
    }

    /// Each block's linear layers' weights quantized with `scheme`, one layer at a time (the dense
    /// weight freed as its quantized form replaces it); the embedding and the LM head stay dense.
    pub fn quantize(&mut self, scheme: super::quant::Scheme) {
        tch::no_grad(|| {
            for block in &mut self.blocks {
                for proj in Proj::ALL {
                    let Some(lin) = block.linear_opt(proj) else { continue };
                    if let Weight::Dense(w) = &lin.weight {
                        lin.weight = Weight::Quantized(super::quant::Quantized::new(w, scheme));
                    }
                }
            }
        });
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
            self.head.weight = self.embed.shallow_clone().into();
        }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        let rows = (!self.dropout_seeds.is_empty()).then_some(RowSeeds(&self.dropout_seeds));
        Ctx { training: self.training, lora: self.lora, rows }
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
    pub fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        let start = cache.as_ref().map_or(0, |c| c.len);
        let t = ids.size()[1];
        let rope = self.rope(start, t);
        let cache_ref = cache.as_deref();
        let ctx =
            BlockCtx { spec: &self.spec, rope: &rope, mask: Mask::Causal, cache: cache_ref, start, run: self.ctx() };
        let x = self.blocks_forward(ids, &ctx);
        if let Some(c) = cache {
            c.len += t;
        }
        x
    }

    /// Final-norm hidden states of packed rows: several samples per row, `positions` `(batch, time)`
    /// restarting at 0 with each sample, and attention confined to the positions of the same
    /// `segments` value (causal within each sample), so each sample is computed as if alone.
    pub fn hidden_packed(&self, ids: &Tensor, positions: &Tensor, segments: &Tensor) -> Tensor {
        let (rope, mask) = self.packed_rope_mask(ids, positions, segments);
        let ctx = self.training_ctx(&rope, Some(&mask));
        self.blocks_forward(ids, &ctx)
    }

    /// The rotary angles and attention mask of packed rows ([`Gpt::hidden_packed`]).
    pub(super) fn packed_rope_mask(&self, ids: &Tensor, positions: &Tensor, segments: &Tensor) -> (Rope, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq; // (batch, time, dims / 2)
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // (batch, 1, time, dims)
        let rope = Rope { cos: angles.cos().to_kind(self.compute_kind), sin: angles.sin().to_kind(self.compute_kind) };
        let t = ids.size()[1];
        let same = segments.unsqueeze(2).eq_tensor(&segments.unsqueeze(1)); // (batch, time, time)
        let causal = Tensor::ones([t, t], (Kind::Bool, ids.device())).tril(0);
        (rope, same.logical_and(&causal).unsqueeze(1)) // (batch, 1, time, time)
    }

    /// A training forward's context from position 0: causal, or the packed rows' `mask`.
    pub(super) fn training_ctx<'a>(&'a self, rope: &'a Rope, mask: Option<&'a Tensor>) -> BlockCtx<'a> {
        let mask = mask.map_or(Mask::Causal, Mask::Packed);
        BlockCtx { spec: &self.spec, rope, mask, cache: None, start: 0, run: self.ctx() }
    }

    /// The embedding of `ids` in the compute dtype.
    pub(super) fn embed_ids(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed, ids, -1, false, false).to_kind(self.compute_kind)
    }

    /// The embedding of `ids`, every block, then the final norm.
    fn blocks_forward(&self, ids: &Tensor, ctx: &BlockCtx) -> Tensor {
        let mut x = self.embed_ids(ids);
        for block in &self.blocks {
            x = block.forward(&x, ctx);
        }
        self.final_norm.forward(&x)
    }

    /// [`Gpt::logits`] of a slice of the LM head's positions, with its slice of the whole's dropout
    /// mask ([`Gpt::head_mask`]).
    pub(super) fn logits_masked(&self, hidden: &Tensor, mask: Option<&Tensor>) -> Tensor {
        match mask {
            Some(m) => self.head.forward(&Input::masked(hidden, m), self.ctx()),
            None => self.logits(hidden),
        }
    }

    /// The LoRA dropout mask of the LM head's input `hidden`, when its LoRA branch draws one.
    pub(super) fn head_mask(&self, hidden: &Tensor) -> Option<Tensor> {
        let ctx = self.ctx();
        self.head.lora.as_ref()?;
        Input::new(hidden, Site::Head, 0).mask_of(ctx.lora, ctx.training, ctx.rows)
    }

    /// Token scores for hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        self.head.forward(&Input::new(hidden, Site::Head, 0), self.ctx())
    }

    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        self.logits(&self.hidden(ids, cache))
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

impl Walk<'_> {
    /// [`Gpt::hidden`] and the loss, for the micro-batch of the walk: what each layer keeps, and the LM
    /// head's peak.
    pub fn forward_backward(&mut self) -> (Vec<u64>, u64) {
        let rows = self.batch * self.time;
        let embed_trains = self.tensors.trains(Module::Embed, Param::Weight);
        if embed_trains {
            self.outside_layers += rows as u64 * 8; // the token ids, for the embedding's gradient
        }
        let mut x = self.val(rows, self.spec.hidden_size, self.compute, embed_trains);
        let mut per_layer = Vec::new();
        for i in 0..self.spec.n_layer as usize {
            let before = self.saved_bytes();
            x = self.block(i, x);
            per_layer.push(self.saved_bytes() - before);
        }
        let before = self.saved_bytes();
        let h = self.norm(x, Module::FinalNorm);
        let lm_head = self.head(h);
        self.outside_layers += self.saved_bytes() - before;
        (per_layer, lm_head)
    }

    /// The head on the supervised positions and the loss; returns the bytes its scores and their
    /// gradients hold at the start of the backward pass.
    fn head(&mut self, h: Val) -> u64 {
        // A run scores at most one chunk of positions at a time (`footprint::head_chunk`), so what the
        // head keeps for its backward pass (adapter v2's scaled scores, say) is one chunk's.
        let chunk = super::footprint::head_chunk(self.spec.vocab_size, self.compute as i64);
        let picked = self.val(self.supervised.min(chunk), h.width, h.elem_bytes, h.grad); // index_select keeps only the index
        let logits = self.linear(picked, Module::Head);
        if logits.grad {
            self.outside_layers += self.supervised as u64 * 8;
        }
        // log-softmax keeps its fp32 output; its gradient and its input's are fp32 of the same size,
        // and a 16-bit model adds the scores' gradient in their own dtype.
        let scores = (logits.rows * logits.width) as u64;
        let cast = if self.compute == 4 { 0 } else { scores * self.compute };
        // From the second step on, a trained head's new weight gradient is computed beside the one kept
        // (before it is added in) while the scores' gradient is still alive.
        let new_gradient = match self.tensors.get(Module::Head, Param::Weight) {
            Some(w) if w.trainable => w.elems * w.elem_bytes + 4 * scores,
            _ => 0,
        };
        (3 * 4 * scores).max(new_gradient) + cast
    }
}
