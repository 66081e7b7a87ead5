//! How much memory a training run needs, before anything is allocated: the weights, gradients and
//! AdamW moments from the layout table, and the activations of one micro-batch from the model's own
//! rules of what each module keeps for the backward pass ([`crate::model::footprint`], each rule
//! beside its module's forward).
use serde::Serialize;

use super::is_trainable;
use crate::config::MethodConfig;
use crate::device::Placement;
use crate::model::footprint::{Tensors, Walk};
use crate::model::spec::ModelSpec;

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
    /// pass (checkpointed: with the layer recomputed, beyond the LM head's scores, freed by then),
    /// or, when larger, AdamW's temporaries during its update (the activations freed by then).
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
    /// Activation checkpointing: each layer keeps only its input, and one layer's activations are
    /// recomputed at a time.
    pub checkpointed: bool,
    /// The frozen base's quantization (`model.quantize`).
    pub quantized: Option<crate::model::quant::Scheme>,
}

impl Shape {
    /// The largest micro-batch of `rows` a run of `c` can meet: full-length rows, every position scored.
    pub fn worst(c: &crate::config::Config, rows: u64) -> Shape {
        Shape {
            rows,
            len: c.data.max_seq_length,
            scored: None,
            packed: c.data.packing,
            checkpointed: false,
            quantized: None,
        }
    }
}

/// The expected peak memory of training `spec` with `m` on `placement` with micro-batches of `shape`.
pub fn estimate(spec: &ModelSpec, m: &MethodConfig, placement: &Placement, shape: Shape) -> MemoryPlan {
    let kinds = (placement.weight_kind(), placement.trainable_kind());
    let tensors = Tensors::of(spec, m, |role| is_trainable(m.kind, role), kinds, shape.quantized);
    let mut walk = Walk::new(spec, &tensors, m, kinds, (shape.rows as i64, shape.len as i64));
    walk.supervised = shape.scored.map_or(shape.rows as i64 * shape.len as i64, |s| s as i64);
    walk.packed = shape.packed;
    walk.checkpointed = shape.checkpointed;
    let (activations_per_layer, lm_head) = walk.forward_backward();
    let activations = walk.kept(&activations_per_layer);
    let weights = tensors.bytes(|_| true);
    let gradients = tensors.bytes(|t| t.trainable);
    let optimizer = 2 * 4 * tensors.trainable_elems();
    // libtorch's fused AdamW updates fp32 tensors in place; a 16-bit one takes separate operations
    // holding about four fp32 temporaries of its size, when the activations of the last micro-batch
    // are already freed.
    let update = 4 * 4 * tensors.largest_16_bit_trainable();
    // Checkpointed, the head's scores are freed before the first layer is recomputed: the two phases
    // of the backward pass peak apart, and the larger one counts.
    let backward =
        (walk.recomputed(&activations_per_layer) + walk.working()).saturating_sub(match shape.checkpointed {
            true => lm_head,
            false => 0,
        });
    let working = backward.max(update.saturating_sub(activations + lm_head));
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

/// The largest micro-batch (of shapes `like`) that divides `batch_size / world` and whose planned peak fits in
/// [`AUTO_SHARE`] of `device_memory` (the largest of all when the memory is unknown; 1 when none fits).
pub fn choose_micro_batch(
    spec: &ModelSpec,
    c: &crate::config::Config,
    placement: &Placement,
    world: u64,
    device_memory: Option<u64>,
    like: Shape,
) -> AutoChoice {
    let per_device = (c.train.batch_size / world.max(1)).max(1);
    let budget = device_memory.map(|b| (b as f64 * AUTO_SHARE) as u64);
    let mut weighed = Vec::new();
    for micro in (1..=per_device).rev().filter(|m| per_device.is_multiple_of(*m)) {
        let shape = Shape { rows: micro, ..like };
        let total = estimate(spec, &c.method, placement, shape).total;
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
