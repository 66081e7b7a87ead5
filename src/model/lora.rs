//! LoRA: a low-rank update `B·A` beside a frozen linear layer, scaled by `alpha / r`. A starts
//! Kaiming-uniform and B at zero, so before the first step the layer computes exactly the base's output.
use std::cell::OnceCell;

use tch::{Device, Kind, Tensor};

use super::footprint::{Val, Walk};
use super::layout::Param;
use super::weight::cast;

#[derive(Debug)]
pub struct Lora {
    /// `(r, in)`.
    pub a: Tensor,
    /// `(out, r)`.
    pub b: Tensor,
}

impl Lora {
    pub fn empty() -> Lora {
        Lora { a: Tensor::new(), b: Tensor::new() }
    }
}

/// The scale and dropout every LoRA branch of a model shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraScaling {
    /// `lora_alpha / lora_r`.
    pub scale: f64,
    pub dropout: f64,
}

impl Default for LoraScaling {
    fn default() -> Self {
        LoraScaling { scale: 1.0, dropout: 0.0 }
    }
}

/// Where in the model a LoRA branch reads its input: each site of each block draws its own dropout
/// mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The normed input of q, k and v.
    Attention,
    /// The input of the attention's output projection.
    AttentionOut,
    /// The adapter prompt, projected by k and v.
    Prompt,
    /// The normed input of the MLP's gate and up.
    Mlp,
    /// The input of the MLP's down projection.
    MlpOut,
    /// The LM head's input.
    Head,
}

impl Site {
    /// The site `self` of block `block` as one number (the head's block is ignored).
    fn slot(self, block: usize) -> u64 {
        match self {
            Site::Head => u64::MAX,
            site => block as u64 * 8 + site as u64,
        }
    }
}

/// The dropout seeds of a training micro-batch: one per row, drawn from the run's seed and the run-wide
/// number of the row's (first) sample. The mask a sample gets then depends on the sample and the run
/// alone, never on the rank or the micro-batch slot that computes it: a run on one process, on
/// several, and one resumed onto another count draw the same masks. A row's mask is a prefix of a
/// seeded stream (libtorch's CPU Bernoulli draws by flat position), so its real positions keep the
/// same mask whatever padding the micro-batch adds.
#[derive(Debug, Clone, Copy)]
pub struct RowSeeds<'a>(pub &'a [i64]);

/// A row's dropout seed: the run's `seed` and the sample number `n`, mixed (SplitMix64).
pub fn row_seed(seed: u64, n: u64) -> i64 {
    mix(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An input that several layers read (q, k and v; an MLP's gate and up). Its LoRA dropout is drawn
/// once and shared by every LoRA branch that reads it, as litgpt's fused QKV LoRA does: on the CPU the
/// random mask costs more than the branch's products, and one mask per input halves that for q and v.
pub struct Input<'a> {
    pub x: &'a Tensor,
    site: Site,
    block: usize,
    dropped: OnceCell<Tensor>,
}

impl<'a> Input<'a> {
    /// The input `x` of the LoRA branches at `site` of block `block`.
    pub fn new(x: &'a Tensor, site: Site, block: usize) -> Input<'a> {
        Input { x, site, block, dropped: OnceCell::new() }
    }

    /// An input whose dropout `mask` ([`Input::mask_of`]) was drawn beforehand: a chunk of the LM
    /// head's positions, masked as the whole would be.
    pub fn masked(x: &'a Tensor, mask: &Tensor) -> Input<'a> {
        Input { x, site: Site::Head, block: 0, dropped: OnceCell::from(x * mask) }
    }

    /// The dropout mask this input's LoRA branches would draw, when they draw one.
    pub fn mask_of(&self, s: LoraScaling, training: bool, rows: Option<RowSeeds>) -> Option<Tensor> {
        let seeds = rows.filter(|_| training && s.dropout > 0.0)?;
        Some(tch::no_grad(|| self.mask(s.dropout, seeds)))
    }

    fn dropped(&self, s: LoraScaling, training: bool, rows: Option<RowSeeds>) -> &Tensor {
        self.dropped.get_or_init(|| match (training && s.dropout > 0.0, rows) {
            (false, _) => self.x.shallow_clone(),
            (true, None) => self.x.dropout(s.dropout, true),
            (true, Some(seeds)) => self.x * tch::no_grad(|| self.mask(s.dropout, seeds)),
        })
    }

    /// Inverted dropout's mask (kept positions `1 / (1 − p)`, dropped ones 0), each row drawn from its
    /// own seed and this input's site. An input whose rows are not the micro-batch's (the adapter
    /// prompt; the head's supervised positions) is drawn whole from the first row's seed.
    fn mask(&self, p: f64, seeds: RowSeeds) -> Tensor {
        let keep = 1.0 - p;
        let mut mask = self.x.empty_like();
        let slot = self.site.slot(self.block);
        let seed = |row: i64| mix(row as u64 ^ slot.wrapping_mul(0xD6E8_FEB8_6659_FD93)) as i64;
        let per_row = self.x.dim() >= 2 && self.x.size()[0] == seeds.0.len() as i64 && self.site != Site::Head;
        if per_row {
            crate::native::rng::seeded_each(seeds.0.iter().map(|&row| seed(row)), |i| {
                let _ = mask.get(i as i64).bernoulli_float_(keep);
            });
        } else {
            crate::native::rng::seeded(seed(seeds.0.first().copied().unwrap_or(0)), || {
                let _ = mask.bernoulli_float_(keep);
            });
        }
        mask / keep
    }
}

/// `dropout(x)·Aᵀ·Bᵀ·scale`, in the kind of `x`.
pub fn delta(lora: &Lora, input: &Input, s: LoraScaling, training: bool, rows: Option<RowSeeds>) -> Tensor {
    let x = input.dropped(s, training, rows);
    // (…, in) → (…, r) → (…, out)
    x.linear::<&Tensor>(&cast(&lora.a, x), None).linear::<&Tensor>(&cast(&lora.b, x), None) * s.scale
}

/// A fresh LoRA tensor in fp32 (draws from the global generator for A).
pub fn init(param: Param, shape: &[i64], device: Device) -> Tensor {
    match param {
        Param::LoraA => {
            let bound = 1.0 / (shape[1] as f64).sqrt();
            Tensor::rand(shape, (Kind::Float, device)) * (2.0 * bound) - bound
        }
        _ => Tensor::zeros(shape, (Kind::Float, device)),
    }
}

impl Walk<'_> {
    /// A LoRA branch of rank `r` beside a linear layer of input `x` and output `y`: the dropped input
    /// (its mask once per input, shared by the branches that read it, as [`Input`] does) and `x·Aᵀ`.
    pub(super) fn lora(&mut self, x: Val, y: Val, r: i64) -> Val {
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
}
