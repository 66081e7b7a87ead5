//! One GPT for every supported family: the switches in [`ModelSpec`] pick the norm, the MLP, the
//! residual layout, rotary details and biases. Which tensors exist, and their names, come from
//! [`layout`](super::layout); the embedding, the blocks ([`Block::forward`]), the final norm and the
//! head hold them in plain structs and compute with them.
use tch::{Kind, Tensor};

use super::adapter::Adapter;
use super::block::{Block, BlockCtx, KvCache, Mask, Rope, Ropes};
use super::footprint::{Val, Walk};
use super::layout::{self, At, Fusion, Module, Param, Proj, TensorSpec};
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
    /// The rotary inverse frequencies and the factor on cos and sin, of every layer and of the
    /// sliding layers where they differ ([`ModelSpec::rope_local`]), when they do not depend on the
    /// length (computed once).
    rope_freqs: Vec<(Tensor, f64)>,
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
            blocks: (0..spec.n_layer as usize).map(Block::empty).collect(),
            final_norm: Norm::empty(&spec),
            head: Linear::empty(),
            layout: Vec::new(),
            rope_freqs: Vec::new(),
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
        let device = model.embed.device();
        let ropes = std::iter::once(&model.spec.rope).chain(model.spec.rope_local.as_ref());
        model.rope_freqs = ropes
            .map(|r| {
                let (inv, factor) = r.inverse_frequencies(0);
                (inv.to_device(device), factor)
            })
            .collect();
        model.compute_kind = model.embed.kind();
        model.retie();
        model
    }

    /// The tensor at `at`, created empty when its module has none yet.
    pub fn slot(&mut self, at: At) -> &mut Tensor {
        match at.module {
            Module::Embed => &mut self.embed,
            Module::Norm1(i)
            | Module::Norm2(i)
            | Module::PostAttnNorm(i)
            | Module::PostMlpNorm(i)
            | Module::QNorm(i)
            | Module::KNorm(i) => self.blocks[i].norm_slot(at.module, &self.spec).slot(at.param),
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
            let tensor = match (hub.fused, t.at.module) {
                (None, _) => self.slot(t.at).shallow_clone(),
                (Some((fusion, 0)), Module::Linear(i, _)) => {
                    let projs: &[Proj] =
                        if fusion == Fusion::GateUp { &[Proj::Gate, Proj::Up] } else { &[Proj::Q, Proj::K, Proj::V] };
                    let parts: Vec<Tensor> = projs
                        .iter()
                        .map(|&proj| {
                            self.slot(At { module: Module::Linear(i, proj), param: t.at.param }).shallow_clone()
                        })
                        .collect();
                    fuse(&spec, fusion, &parts)
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
    pub fn rope(&self, start: i64, len: i64) -> Ropes {
        let positions = Tensor::arange_start(start, start + len, (Kind::Float, self.device()));
        self.angles(&positions, start + len)
    }

    /// The angles of `positions` (any shape; the angles add a last axis) in a forward pass whose
    /// largest position is `seq_len - 1`.
    fn angles(&self, positions: &Tensor, seq_len: i64) -> Ropes {
        let angles = |which: usize| {
            let rope = if which == 0 { &self.spec.rope } else { self.spec.rope_local.as_ref().expect("a local rope") };
            let (inv, factor) = if rope.depends_on_length() {
                let (inv, factor) = rope.inverse_frequencies(seq_len);
                (inv.to_device(self.device()), factor)
            } else {
                (self.rope_freqs[which].0.shallow_clone(), self.rope_freqs[which].1)
            };
            let freqs = positions.unsqueeze(-1) * inv; // (…, dims / 2)
            let angles = Tensor::cat(&[&freqs, &freqs], -1);
            let (cos, sin) = if factor == 1.0 {
                (angles.cos(), angles.sin())
            } else {
                (angles.cos() * factor, angles.sin() * factor)
            };
            Rope { cos: cos.to_kind(self.compute_kind), sin: sin.to_kind(self.compute_kind) }
        };
        Ropes { global: angles(0), local: self.spec.rope_local.as_ref().map(|_| angles(1)) }
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
    pub(super) fn packed_rope_mask(&self, ids: &Tensor, positions: &Tensor, segments: &Tensor) -> (Ropes, Tensor) {
        let length_dependent =
            self.spec.rope.depends_on_length() || self.spec.rope_local.as_ref().is_some_and(|r| r.depends_on_length());
        let seq_len = if length_dependent { positions.max().int64_value(&[]) + 1 } else { 0 };
        let heads = |r: Rope| Rope { cos: r.cos.unsqueeze(1), sin: r.sin.unsqueeze(1) }; // (batch, 1, time, dims)
        let ropes = self.angles(&positions.to_kind(Kind::Float), seq_len);
        let rope = Ropes { global: heads(ropes.global), local: ropes.local.map(heads) };
        let t = ids.size()[1];
        let same = segments.unsqueeze(2).eq_tensor(&segments.unsqueeze(1)); // (batch, time, time)
        let causal = Tensor::ones([t, t], (Kind::Bool, ids.device())).tril(0);
        (rope, same.logical_and(&causal).unsqueeze(1)) // (batch, 1, time, time)
    }

    /// A training forward's context from position 0: causal, or the packed rows' `mask`.
    pub(super) fn training_ctx<'a>(&'a self, rope: &'a Ropes, mask: Option<&'a Tensor>) -> BlockCtx<'a> {
        let mask = mask.map_or(Mask::Causal, Mask::Packed);
        BlockCtx { spec: &self.spec, rope, mask, cache: None, start: 0, run: self.ctx() }
    }

    /// The embedding of `ids` in the compute dtype; times √hidden_size, rounded to the embedding's
    /// dtype as transformers rounds it, where the family scales it (Gemma).
    pub(super) fn embed_ids(&self, ids: &Tensor) -> Tensor {
        let x = Tensor::embedding(&self.embed, ids, -1, false, false);
        let x = if self.spec.scale_embeddings {
            let scale = Tensor::from((self.spec.hidden_size as f64).sqrt() as f32).to_kind(x.kind());
            x * scale.double_value(&[])
        } else {
            x
        };
        x.to_kind(self.compute_kind)
    }

    /// `cap · tanh(logits / cap)` where the family caps its logits (Gemma 2).
    fn capped(&self, logits: Tensor) -> Tensor {
        match self.spec.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
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
            Some(m) => self.capped(self.head.forward(&Input::masked(hidden, m), self.ctx())),
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
        self.capped(self.head.forward(&Input::new(hidden, Site::Head, 0), self.ctx()))
    }

    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        self.logits(&self.hidden(ids, cache))
    }
}

/// Part `part` (0 q, 1 k, 2 v; or 0 gate, 1 up) of a fused weight or bias. Interleaved q/k/v rows
/// are grouped per key/value group, each group holding its query heads, then its key, then its value;
/// the others are the parts' rows one after the other.
pub fn fused_part(spec: &ModelSpec, fusion: Fusion, fused: &Tensor, part: usize) -> Tensor {
    let trailing: Vec<i64> = fused.size()[1..].to_vec();
    if fusion != Fusion::QkvInterleaved {
        let rows = fusion.part_rows(spec);
        let start: i64 = rows[..part].iter().sum();
        return fused.narrow(0, start, rows[part]).contiguous();
    }
    let (groups, hs) = (spec.n_query_groups, spec.head_size);
    let per_group = spec.n_head / groups;
    // (rows, …) → (groups, per_group + 2, head, …)
    let grouped = fused.view(&*[&[groups, per_group + 2, hs][..], &trailing].concat());
    let (from, n, rows) = match part {
        0 => (0, per_group, spec.n_head * hs),
        1 => (per_group, 1, groups * hs),
        _ => (per_group + 1, 1, groups * hs),
    };
    grouped.narrow(1, from, n).reshape(&*[&[rows][..], &trailing].concat()).contiguous()
}

/// The inverse of [`fused_part`]: `parts` (q, k, v; or gate, up) as the checkpoint's one tensor.
pub fn fuse(spec: &ModelSpec, fusion: Fusion, parts: &[Tensor]) -> Tensor {
    if fusion != Fusion::QkvInterleaved {
        return Tensor::cat(parts, 0);
    }
    let (q, k, v) = (&parts[0], &parts[1], &parts[2]);
    let (groups, hs) = (spec.n_query_groups, spec.head_size);
    let per_group = spec.n_head / groups;
    let trailing: Vec<i64> = q.size()[1..].to_vec();
    let shape = |n: i64| [&[groups, n, hs][..], &trailing].concat();
    let rows = groups * (per_group + 2) * hs;
    // (groups, per_group | 1 | 1, head, …) joined on the second axis, then flattened to (rows, …)
    Tensor::cat(&[q.view(&*shape(per_group)), k.view(&*shape(1)), v.view(&*shape(1))], 1)
        .reshape(&*[&[rows][..], &trailing].concat())
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
