//! How much memory a training run needs, before anything is allocated: the weights, gradients and
//! AdamW moments from the layout table, and the activations of one micro-batch by walking the model's
//! forward pass symbolically and counting each tensor autograd keeps for the backward pass, once.
//!
//! The walk follows `model::gpt` op by op with the same switches (norm, MLP, residual layout, biases,
//! LoRA, adapters) and libtorch's rules for what an op saves: a linear layer keeps its input only when
//! its weight trains; an elementwise product keeps each factor only when the other needs a gradient;
//! nothing is recorded at all for an op none of whose inputs needs one.
use std::collections::HashMap;

use serde::Serialize;

use super::is_trainable;
use crate::config::MethodConfig;
use crate::device::Placement;
use crate::model::layout::{self, At, Module, Param, Proj};
use crate::model::spec::{Mlp, ModelSpec, Norm};

/// The expected peak memory of a training step, by part, in bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryPlan {
    pub micro_batch_size: u64,
    /// Positions per row: `data.max_seq_length` (the longest a micro-batch can be).
    pub seq_len: u64,
    /// The base model's frozen weights in their dtype, and the trainable tensors in theirs (fp32 under
    /// `bf16-mixed`).
    pub weights: u64,
    /// One gradient per trainable tensor, in its dtype.
    pub gradients: u64,
    /// AdamW's two fp32 moments per trainable tensor.
    pub optimizer: u64,
    /// What autograd keeps of one micro-batch for the backward pass, all layers together.
    pub activations: u64,
    /// The same, layer by layer (the embedding and the final norm are counted with the LM head).
    pub activations_per_layer: Vec<u64>,
    /// Scores over the vocabulary for every supervised position, their log-softmax and gradients, at
    /// their peak at the start of the backward pass.
    pub lm_head: u64,
    /// Temporaries on top of the rest at the peak: gradients in flight inside one layer's backward
    /// pass, or, when larger, AdamW's temporaries during its update (the activations freed by then).
    pub working: u64,
    /// What the runtime takes beside tensors: the CUDA context on a GPU (outside the caching
    /// allocator), the CPU libraries' scratch space on the CPU.
    pub overhead: u64,
    /// The sum of the parts.
    pub total: u64,
}

impl MemoryPlan {
    /// What training adds on top of the loaded model as a measurement sees it: on the CPU, the growth
    /// of resident memory (all but the weights); on CUDA, the caching allocator's peak above the
    /// weights (which does not count the context).
    pub fn training_bytes(&self, cuda: bool) -> u64 {
        let runtime = if cuda { self.overhead } else { 0 };
        self.total - self.weights - runtime
    }
}

/// Memory the CUDA context and its kernels take on a GPU, outside the caching allocator.
const CUDA_RUNTIME: u64 = 600 << 20;
/// What the CPU libraries (OpenMP, oneDNN) allocate for themselves on the first step, as measured.
const CPU_SCRATCH: u64 = 24 << 20;

/// The micro-batch a plan is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub rows: u64,
    /// Positions per row.
    pub len: u64,
    /// Positions the LM head scores; `None`: every one (the worst case).
    pub scored: Option<u64>,
    /// Packed rows (`data.packing`): attention is masked per sample.
    pub packed: bool,
}

impl Shape {
    /// The largest micro-batch of `rows` a run of `c` can meet: full-length rows, every position scored.
    pub fn worst(c: &crate::config::Config, rows: u64) -> Shape {
        Shape { rows, len: c.data.max_seq_length, scored: None, packed: c.data.packing }
    }
}

/// The expected peak memory of training `spec` with `m` on `placement` with micro-batches of `shape`.
pub fn estimate(spec: &ModelSpec, m: &MethodConfig, placement: &Placement, shape: Shape) -> MemoryPlan {
    let tensors = Tensors::of(spec, m, placement);
    let mut walk = Walk::new(spec, &tensors, placement, m, (shape.rows as i64, shape.len as i64));
    walk.supervised = shape.scored.map_or(shape.rows as i64 * shape.len as i64, |s| s as i64);
    walk.packed = shape.packed;
    let (activations_per_layer, lm_head) = walk.forward_backward();
    let activations = activations_per_layer.iter().sum::<u64>() + walk.outside_layers;
    let weights = tensors.bytes(|_| true);
    let gradients = tensors.bytes(|t| t.trainable);
    let optimizer = 2 * 4 * tensors.trainable_elems();
    // libtorch's fused AdamW updates fp32 tensors in place; a 16-bit one takes separate operations
    // holding about four fp32 temporaries of its size, when the activations of the last micro-batch
    // are already freed.
    let update = 4 * 4 * tensors.largest_16_bit_trainable();
    let working = walk.working().max(update.saturating_sub(activations + lm_head));
    let overhead = if placement.device.is_cuda() { CUDA_RUNTIME } else { CPU_SCRATCH };
    let total = weights + gradients + optimizer + activations + lm_head + working + overhead;
    MemoryPlan {
        micro_batch_size: shape.rows,
        seq_len: shape.len,
        weights,
        gradients,
        optimizer,
        activations,
        activations_per_layer,
        lm_head,
        working,
        overhead,
        total,
    }
}

/// Bytes per element of the kinds a model holds: fp32, or a 16-bit float.
fn kind_bytes(kind: tch::Kind) -> u64 {
    if kind == tch::Kind::Float {
        4
    } else {
        2
    }
}

struct TensorInfo {
    elems: u64,
    elem_bytes: u64,
    trainable: bool,
}

/// The model's tensors (method included) by address, with their dtype's size and whether they train.
struct Tensors(HashMap<At, TensorInfo>);

impl Tensors {
    fn of(spec: &ModelSpec, m: &MethodConfig, placement: &Placement) -> Tensors {
        let map = layout::tensors(spec, Some(m))
            .into_iter()
            .map(|t| {
                let trainable = is_trainable(m.kind, t.role());
                let kind = if trainable { placement.trainable_kind() } else { placement.weight_kind() };
                (t.at, TensorInfo { elems: t.numel() as u64, elem_bytes: kind_bytes(kind), trainable })
            })
            .collect();
        Tensors(map)
    }

    fn bytes(&self, which: impl Fn(&TensorInfo) -> bool) -> u64 {
        self.0.values().filter(|t| which(t)).map(|t| t.elems * t.elem_bytes).sum()
    }

    fn trainable_elems(&self) -> u64 {
        self.0.values().filter(|t| t.trainable).map(|t| t.elems).sum()
    }

    fn largest_16_bit_trainable(&self) -> u64 {
        self.0.values().filter(|t| t.trainable && t.elem_bytes == 2).map(|t| t.elems).max().unwrap_or(0)
    }

    fn get(&self, module: Module, param: Param) -> Option<&TensorInfo> {
        self.0.get(&At { module, param })
    }

    fn trains(&self, module: Module, param: Param) -> bool {
        self.get(module, param).is_some_and(|t| t.trainable)
    }
}

/// A tensor of the symbolic forward pass: `rows × width` elements of `elem_bytes` each.
#[derive(Debug, Clone, Copy)]
struct Val {
    id: usize,
    rows: i64,
    width: i64,
    elem_bytes: u64,
    /// Whether autograd tracks it (it depends on something that trains).
    grad: bool,
}

impl Val {
    fn bytes(&self) -> u64 {
        (self.rows * self.width) as u64 * self.elem_bytes
    }
}

/// The symbolic forward pass of one micro-batch.
struct Walk<'a> {
    spec: &'a ModelSpec,
    tensors: &'a Tensors,
    method: &'a MethodConfig,
    /// Bytes of the compute dtype and of the trainable tensors' dtype.
    compute: u64,
    trainable_bytes: u64,
    batch: i64,
    time: i64,
    next: usize,
    saved: HashMap<usize, u64>,
    /// Saved outside the blocks (the embedding's indices).
    outside_layers: u64,
    /// The LoRA dropout of each input, by its id.
    dropped: HashMap<usize, Val>,
    /// The largest activation a layer's backward pass holds gradients of at once.
    widest: u64,
    /// Positions the LM head scores.
    supervised: i64,
    /// Packed rows: every attention keeps its own copy of the (time × time) mask in the compute dtype.
    packed: bool,
}

impl<'a> Walk<'a> {
    fn new(
        spec: &'a ModelSpec,
        tensors: &'a Tensors,
        placement: &Placement,
        method: &'a MethodConfig,
        (batch, time): (i64, i64),
    ) -> Walk<'a> {
        Walk {
            spec,
            tensors,
            method,
            compute: kind_bytes(placement.weight_kind()),
            trainable_bytes: kind_bytes(placement.trainable_kind()),
            batch,
            time,
            next: 0,
            saved: HashMap::new(),
            outside_layers: 0,
            dropped: HashMap::new(),
            widest: 0,
            supervised: batch * time,
            packed: false,
        }
    }

    fn val(&mut self, rows: i64, width: i64, elem_bytes: u64, grad: bool) -> Val {
        self.next += 1;
        Val { id: self.next, rows, width, elem_bytes, grad }
    }

    fn save(&mut self, v: Val) {
        self.saved.insert(v.id, v.bytes());
    }

    fn saved_bytes(&self) -> u64 {
        self.saved.values().sum()
    }

    /// Activations kept per layer, and the LM head's peak.
    fn forward_backward(&mut self) -> (Vec<u64>, u64) {
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
        let picked = self.val(self.supervised, h.width, h.elem_bytes, h.grad); // index_select keeps only the index
        let logits = self.linear(picked, Module::Head);
        if logits.grad {
            self.outside_layers += picked.rows as u64 * 8;
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

    fn block(&mut self, i: usize, x: Val) -> Val {
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

    fn sum(&mut self, a: Val, b: Val) -> Val {
        self.val(a.rows, a.width, a.elem_bytes, a.grad || b.grad)
    }

    fn norm(&mut self, x: Val, module: Module) -> Val {
        let weight_trains = self.tensors.trains(module, Param::Weight);
        let grad = x.grad || weight_trains;
        match self.spec.norm {
            Norm::LayerNorm => {
                if grad {
                    self.save(x);
                    let stats = self.val(x.rows, 2, 4, true); // mean and 1/std
                    self.save(stats);
                }
            }
            Norm::RmsNorm => {
                let xf = if x.elem_bytes == 4 { x } else { self.val(x.rows, x.width, 4, x.grad) };
                if xf.grad {
                    self.save(xf);
                    let inv_rms = self.val(x.rows, 1, 4, true);
                    self.save(inv_rms);
                }
                let normed = self.val(x.rows, x.width, x.elem_bytes, xf.grad); // back in the compute dtype
                if weight_trains {
                    self.save(normed);
                }
            }
        }
        self.val(x.rows, x.width, x.elem_bytes, grad)
    }

    /// A linear layer of the layout at `module`, with its LoRA branch and adapter-v2 scale when it has them.
    fn linear(&mut self, x: Val, module: Module) -> Val {
        let t = self.tensors;
        let weight = t.get(module, Param::Weight).or_else(|| t.get(Module::Embed, Param::Weight));
        let weight = weight.expect("every linear layer has a weight (a tied head uses the embedding)");
        let out_width = (weight.elems / x.width as u64) as i64;
        let weight_trains = weight.trainable;
        if weight_trains {
            self.save(x);
            if x.grad && weight.elem_bytes != self.compute {
                // The fp32 weight cast to the compute dtype for the product, kept for the input's gradient.
                let cast = self.val(out_width, x.width, self.compute, true);
                self.save(cast);
            }
        }
        let bias_trains = t.trains(module, Param::Bias);
        let mut y = self.val(x.rows, out_width, self.compute, x.grad || weight_trains || bias_trains);
        if let Some(a) = t.get(module, Param::LoraA) {
            y = self.lora(x, y, a.elems as i64 / x.width);
        }
        if t.get(module, Param::AdapterScale).is_some() {
            let shifted = self.val(y.rows, y.width, y.elem_bytes, true); // y + bias, kept by the scale
            self.save(shifted);
            y = self.val(y.rows, y.width, y.elem_bytes, true);
        }
        y
    }

    fn lora(&mut self, x: Val, y: Val, r: i64) -> Val {
        // One dropout of an input for every LoRA branch reading it (q, k and v share theirs).
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

    fn attention(&mut self, i: usize, h: Val) -> Val {
        let s = self.spec;
        let rope = |w: &mut Self, v: Val| w.val(v.rows, v.width, v.elem_bytes, v.grad);
        let q = self.linear(h, Module::Linear(i, Proj::Q));
        let q = rope(self, q);
        let k = self.linear(h, Module::Linear(i, Proj::K));
        let k = rope(self, k);
        let v = self.linear(h, Module::Linear(i, Proj::V));
        let mut y = self.sdpa(q, k, v);
        if self.tensors.get(Module::Adapter(i), Param::AdapterPrefix).is_some() {
            let p = self.method.adapter_prompt_length as i64;
            let prefix = self.val(p, s.hidden_size, self.trainable_bytes, true);
            let pk = self.linear(prefix, Module::Linear(i, Proj::K));
            let pv = self.linear(prefix, Module::Linear(i, Proj::V));
            let prompt = self.sdpa(q, pk, pv);
            self.save(prompt); // kept by the gate's product
            let gated = self.val(y.rows, y.width, y.elem_bytes, true);
            // The sum is laid out head by head: flattening it back to (time, hidden) copies it.
            self.sum(y, gated);
            y = self.val(y.rows, y.width, y.elem_bytes, true);
        }
        self.linear(y, Module::Linear(i, Proj::O))
    }

    /// Scaled dot-product attention through a fused kernel: it keeps q, k, v, its output and the
    /// softmax's log-sum-exp per query and head, never the time × time scores.
    fn sdpa(&mut self, q: Val, k: Val, v: Val) -> Val {
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

    fn mlp(&mut self, i: usize, h: Val) -> Val {
        let up = self.linear(h, Module::Linear(i, Proj::Up));
        let hidden = match self.spec.mlp {
            Mlp::SwiGlu => {
                let gate = self.linear(h, Module::Linear(i, Proj::Gate));
                if gate.grad {
                    self.save(gate); // silu's input
                }
                let act = self.val(gate.rows, gate.width, gate.elem_bytes, gate.grad);
                self.product(act, up)
            }
            Mlp::Gelu | Mlp::GeluTanh => {
                if up.grad {
                    self.save(up);
                }
                self.val(up.rows, up.width, up.elem_bytes, up.grad)
            }
        };
        self.widest = self.widest.max(hidden.bytes());
        self.linear(hidden, Module::Linear(i, Proj::Down))
    }

    /// An elementwise product: each factor is kept when the other needs a gradient.
    fn product(&mut self, a: Val, b: Val) -> Val {
        if a.grad {
            self.save(b);
        }
        if b.grad {
            self.save(a);
        }
        self.val(a.rows, a.width, a.elem_bytes, a.grad || b.grad)
    }

    /// The gradients of activations a layer's backward pass holds at once: about three of its widest.
    fn working(&self) -> u64 {
        3 * self.widest
    }
}

/// The share of a device's memory `micro_batch_size = "auto"` plans to fill, leaving room for what the
/// plan does not see (allocator fragmentation, library buffers).
pub const AUTO_SHARE: f64 = 0.9;

/// How `micro_batch_size = "auto"` resolved: the micro-batch chosen and, largest first, the sizes
/// the plan weighed with their expected peak in bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AutoChoice {
    pub chosen: u64,
    /// 90% of the device's memory, when it is known.
    pub budget: Option<u64>,
    pub weighed: Vec<(u64, u64)>,
    /// Whether even the smallest micro-batch is expected to exceed the budget.
    pub over_budget: bool,
}

/// The memory of the device a run is planned for: `model.device_memory`, else the GPU's own (from
/// nvidia-smi) or the machine's on the CPU.
pub fn device_memory(model: &crate::config::ModelConfig, placement: &Placement) -> Option<u64> {
    model.device_memory_bytes().or_else(|| placement.memory_bytes())
}

/// The largest micro-batch that divides `batch_size / world` and whose planned peak fits in
/// [`AUTO_SHARE`] of `device_memory` (the largest of all when the memory is unknown; 1 when none fits).
pub fn choose_micro_batch(
    spec: &ModelSpec,
    c: &crate::config::Config,
    placement: &Placement,
    world: u64,
    device_memory: Option<u64>,
) -> AutoChoice {
    let per_device = (c.train.batch_size / world.max(1)).max(1);
    let budget = device_memory.map(|b| (b as f64 * AUTO_SHARE) as u64);
    let mut weighed = Vec::new();
    for micro in (1..=per_device).rev().filter(|m| per_device.is_multiple_of(*m)) {
        let total = estimate(spec, &c.method, placement, Shape::worst(c, micro)).total;
        weighed.push((micro, total));
        if budget.is_none_or(|b| total <= b) {
            return AutoChoice { chosen: micro, budget, weighed, over_budget: false };
        }
    }
    AutoChoice { chosen: 1, budget, weighed, over_budget: true }
}

/// `1.23 GiB`, `456.7 MiB`.
pub fn mib_text(n: u64) -> String {
    let mib = n as f64 / 1048576.0;
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}
