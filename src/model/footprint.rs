//! What autograd keeps of one training step, counted without running it: the model's forward pass
//! walked symbolically, each module's rule written beside its own forward (`Norm::footprint` in
//! norm.rs, `Block::footprint` in block.rs, …) with libtorch's rules for what an op saves: a linear
//! layer keeps its input only when its weight trains; an elementwise product keeps each factor only
//! when the other needs a gradient; nothing is recorded for an op none of whose inputs needs one.
//! This file holds the walk's bookkeeping; `methods::memory` turns its counts into a memory plan.
use std::collections::HashMap;

use tch::Kind;

use super::layout::{self, At, Module, Param, Role};
use super::quant::Scheme;
use super::spec::ModelSpec;
use crate::config::MethodConfig;

/// Bytes per element of the kinds a model holds: fp32, or a 16-bit float.
pub fn kind_bytes(kind: Kind) -> u64 {
    if kind == Kind::Float {
        4
    } else {
        2
    }
}

/// Memory the LM head's scores may take per chunk: about 256 MiB with their fp32 log-softmax and
/// gradients.
pub const HEAD_CHUNK_BYTES: i64 = 256 << 20;

/// Positions per LM head chunk at vocabulary `vocab` in a compute dtype of `compute_bytes`: the scores
/// (plus their fp32 copy under a 16-bit dtype), their log-softmax and the two gradients stay within
/// [`HEAD_CHUNK_BYTES`].
pub fn head_chunk(vocab: i64, compute_bytes: i64) -> i64 {
    head_chunk_within(vocab, compute_bytes, HEAD_CHUNK_BYTES)
}

/// [`head_chunk`] for chunks of at most `bytes` instead of [`HEAD_CHUNK_BYTES`] (`ftexp bench
/// --head-chunk-bytes`; `i64::MAX`: one chunk).
pub fn head_chunk_within(vocab: i64, compute_bytes: i64, bytes: i64) -> i64 {
    let per_position = vocab * (3 * 4 + if compute_bytes == 4 { 0 } else { compute_bytes });
    (bytes / per_position.max(1)).max(1)
}

pub struct TensorInfo {
    pub elems: u64,
    pub elem_bytes: u64,
    pub trainable: bool,
    /// Held quantized ([`super::quant`]): `stored` bytes, dequantized where used.
    pub quantized: bool,
    /// Bytes it holds.
    pub stored: u64,
}

/// The model's tensors (method included) by address, with their dtype's size and whether they train.
pub struct Tensors(HashMap<At, TensorInfo>);

impl Tensors {
    /// The tensors of `spec` with method `m`: those whose role `trains` in `trainable_kind`, the others
    /// in `weight_kind`, the frozen weights of the blocks' linear layers quantized by `quantized`.
    pub fn of(
        spec: &ModelSpec,
        m: &MethodConfig,
        trains: impl Fn(Role) -> bool,
        (weight_kind, trainable_kind): (Kind, Kind),
        quantized: Option<Scheme>,
    ) -> Tensors {
        let map = layout::tensors(spec, Some(m))
            .into_iter()
            .map(|t| {
                let trainable = trains(t.role());
                let kind = if trainable { trainable_kind } else { weight_kind };
                let (elems, elem_bytes) = (t.numel() as u64, kind_bytes(kind));
                let linear = matches!(t.at.module, Module::Linear(..)) && t.at.param == Param::Weight;
                let scheme = quantized.filter(|_| linear && !trainable);
                let stored = scheme.map_or(elems * elem_bytes, |s| s.bytes(elems));
                (t.at, TensorInfo { elems, elem_bytes, trainable, quantized: scheme.is_some(), stored })
            })
            .collect();
        Tensors(map)
    }

    pub fn bytes(&self, which: impl Fn(&TensorInfo) -> bool) -> u64 {
        self.0.values().filter(|t| which(t)).map(|t| t.stored).sum()
    }

    pub fn trainable_elems(&self) -> u64 {
        self.0.values().filter(|t| t.trainable).map(|t| t.elems).sum()
    }

    pub fn largest_16_bit_trainable(&self) -> u64 {
        self.0.values().filter(|t| t.trainable && t.elem_bytes == 2).map(|t| t.elems).max().unwrap_or(0)
    }

    pub(super) fn get(&self, module: Module, param: Param) -> Option<&TensorInfo> {
        self.0.get(&At { module, param })
    }

    pub(super) fn trains(&self, module: Module, param: Param) -> bool {
        self.get(module, param).is_some_and(|t| t.trainable)
    }
}

/// A tensor of the symbolic forward pass: `rows × width` elements of `elem_bytes` each.
#[derive(Debug, Clone, Copy)]
pub(super) struct Val {
    pub id: usize,
    pub rows: i64,
    pub width: i64,
    pub elem_bytes: u64,
    /// Whether autograd tracks it (it depends on something that trains).
    pub grad: bool,
}

impl Val {
    pub fn bytes(&self) -> u64 {
        (self.rows * self.width) as u64 * self.elem_bytes
    }
}

/// The symbolic forward pass of one micro-batch of `batch` rows of `time` positions.
pub struct Walk<'a> {
    pub(super) spec: &'a ModelSpec,
    pub(super) tensors: &'a Tensors,
    pub(super) method: &'a MethodConfig,
    /// Bytes of the compute dtype and of the trainable tensors' dtype.
    pub(super) compute: u64,
    pub(super) trainable_bytes: u64,
    pub(super) batch: i64,
    pub(super) time: i64,
    next: usize,
    saved: HashMap<usize, u64>,
    /// Saved outside the blocks (the embedding's indices, the final norm, the head's inputs).
    pub outside_layers: u64,
    /// The LoRA dropout of each input, by its id.
    pub(super) dropped: HashMap<usize, Val>,
    /// The largest activation a layer's backward pass holds gradients of at once.
    pub(super) widest: u64,
    /// Positions the LM head scores.
    pub supervised: i64,
    /// Packed rows: every attention keeps its own copy of the (time × time) mask in the compute dtype.
    pub packed: bool,
    /// Activation checkpointing ([`crate::model::staged`]): the layers keep only their inputs.
    pub checkpointed: bool,
}

impl<'a> Walk<'a> {
    pub fn new(
        spec: &'a ModelSpec,
        tensors: &'a Tensors,
        method: &'a MethodConfig,
        (weight_kind, trainable_kind): (Kind, Kind),
        (batch, time): (i64, i64),
    ) -> Walk<'a> {
        Walk {
            spec,
            tensors,
            method,
            compute: kind_bytes(weight_kind),
            trainable_bytes: kind_bytes(trainable_kind),
            batch,
            time,
            next: 0,
            saved: HashMap::new(),
            outside_layers: 0,
            dropped: HashMap::new(),
            widest: 0,
            supervised: batch * time,
            packed: false,
            checkpointed: false,
        }
    }

    /// What the backward pass holds of the layers' activations (`per_layer`, as the walk counted them)
    /// and outside them at its start: all of them; or, checkpointed, every layer's input (the layers
    /// recomputed one at a time are [`Walk::recomputed`]).
    pub fn kept(&self, per_layer: &[u64]) -> u64 {
        if !self.checkpointed {
            return per_layer.iter().sum::<u64>() + self.outside_layers;
        }
        per_layer.len() as u64 * self.layer_input() + self.outside_layers
    }

    /// Checkpointed, what one layer's recomputation holds beside the kept inputs: its activations and
    /// its output's gradient beside its input's. Zero without checkpointing.
    pub fn recomputed(&self, per_layer: &[u64]) -> u64 {
        match self.checkpointed {
            true => per_layer.iter().max().copied().unwrap_or(0) + 2 * self.layer_input(),
            false => 0,
        }
    }

    fn layer_input(&self) -> u64 {
        (self.batch * self.time * self.spec.hidden_size) as u64 * self.compute
    }

    pub(super) fn val(&mut self, rows: i64, width: i64, elem_bytes: u64, grad: bool) -> Val {
        self.next += 1;
        Val { id: self.next, rows, width, elem_bytes, grad }
    }

    pub(super) fn save(&mut self, v: Val) {
        self.saved.insert(v.id, v.bytes());
    }

    pub(super) fn saved_bytes(&self) -> u64 {
        self.saved.values().sum()
    }

    pub(super) fn sum(&mut self, a: Val, b: Val) -> Val {
        self.val(a.rows, a.width, a.elem_bytes, a.grad || b.grad)
    }

    /// An elementwise product: each factor is kept when the other needs a gradient.
    pub(super) fn product(&mut self, a: Val, b: Val) -> Val {
        if a.grad {
            self.save(b);
        }
        if b.grad {
            self.save(a);
        }
        self.val(a.rows, a.width, a.elem_bytes, a.grad || b.grad)
    }

    /// The gradients of activations a layer's backward pass holds at once: about three of its widest.
    pub fn working(&self) -> u64 {
        3 * self.widest
    }
}
