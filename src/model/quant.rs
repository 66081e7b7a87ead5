//! A frozen weight held quantized (QLoRA's base): blockwise NF4 (4 bits, blocks of 64, an fp32
//! absmax per block), NF4 with its absmax quantized again to 8 bits (`nf4-dq`), or blockwise int8.
//! NF4's codes and absmax are bitsandbytes' `quantize_4bit(…, blocksize=64, quant_type="nf4")`:
//! each value divided by its block's absmax goes to the nearest of the 16 NF4 levels, two codes per
//! byte, the first in the high nibble. The weight is dequantized to the compute dtype where a layer
//! multiplies by it.
use tch::{Device, Kind, Tensor};

/// The 16 levels of NormalFloat4 (QLoRA, Dettmers et al. 2023), as bitsandbytes defines them.
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Values per NF4 (and int8) block.
pub const BLOCK: i64 = 64;
/// Absmax values per block of `nf4-dq`'s second quantization.
pub const ABSMAX_BLOCK: i64 = 256;

/// How a quantized weight stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Nf4,
    Nf4Dq,
    Int8,
}

impl Scheme {
    /// Stored bytes of a weight of `n` elements: codes and the scales of their blocks.
    pub fn bytes(self, n: u64) -> u64 {
        let blocks = n.div_ceil(BLOCK as u64);
        match self {
            Scheme::Nf4 => n.div_ceil(2) + 4 * blocks,
            Scheme::Nf4Dq => n.div_ceil(2) + blocks + 4 * blocks.div_ceil(ABSMAX_BLOCK as u64) + 4,
            Scheme::Int8 => n + 4 * blocks,
        }
    }
}

/// The absmax of each block, as stored.
#[derive(Debug)]
pub enum Scales {
    /// fp32, one per block.
    Plain(Tensor),
    /// `nf4-dq`: 8-bit codes into bitsandbytes' signed dynamic map (`map`, on the codes' device) of
    /// `absmax − offset`, with an fp32 absmax per [`ABSMAX_BLOCK`] codes.
    Double { codes: Tensor, absmax: Tensor, offset: f64, map: Tensor },
}

#[derive(Debug)]
pub struct Quantized {
    pub scheme: Scheme,
    /// NF4: two 4-bit codes per byte (uint8); int8: one signed code per value.
    pub codes: Tensor,
    pub scales: Scales,
    /// The dense weight's shape and dtype.
    pub shape: Vec<i64>,
    pub kind: Kind,
    /// NF4's levels on the codes' device (made once: every forward pass decodes with them).
    levels: Tensor,
}

/// Values of `x` (flat, fp32) in blocks of `block`, the last padded with zeros: `(blocks, block)`.
fn blocks(x: &Tensor, block: i64) -> Tensor {
    let n = x.numel() as i64;
    let padded = (n + block - 1) / block * block;
    let x = if padded == n { x.shallow_clone() } else { x.constant_pad_nd([0, padded - n]) };
    x.view([-1, block])
}

/// The index of the nearest of the sorted `levels` for each value of `normed` (the lower one at a
/// tie, as an argmin over the distances picks), without a `(values × levels)` temporary.
fn nearest(normed: &Tensor, levels: &Tensor) -> Tensor {
    let n = levels.size()[0];
    let midpoints = (levels.narrow(0, 0, n - 1) + levels.narrow(0, 1, n - 1)) / 2.0;
    normed.contiguous().bucketize(&midpoints, false, false)
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`): 256 sorted values,
/// in fp32 as torch computes them.
pub fn dynamic_map(device: Device) -> Tensor {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7 {
        let boundaries = Tensor::linspace(0.1, 1.0, 2i64.pow(i) + 1, (Kind::Float, Device::Cpu));
        let n = boundaries.size()[0];
        let means = (boundaries.narrow(0, 0, n - 1) + boundaries.narrow(0, 1, n - 1)) / 2.0;
        let scale = 10f64.powi(i as i32 - 6);
        data.extend(Vec::<f32>::try_from(&means * scale).expect("fp32 values"));
        data.extend(Vec::<f32>::try_from(&means * -scale).expect("fp32 values"));
    }
    data.extend([0.0, 1.0]);
    data.sort_by(f32::total_cmp);
    Tensor::from_slice(&data).to_device(device)
}

impl Quantized {
    /// `w` quantized with `scheme` (computed in fp32 on `w`'s device).
    pub fn new(w: &Tensor, scheme: Scheme) -> Quantized {
        let (shape, kind) = (w.size(), w.kind());
        let values = blocks(&w.to_kind(Kind::Float).flatten(0, -1), BLOCK);
        let absmax = values.abs().amax([1], false);
        // An all-zero block divides by one: its codes stay zero.
        let safe = absmax.where_scalarother(&absmax.gt(0.0), 1.0).unsqueeze(1);
        let n = w.numel() as i64;
        let levels = Tensor::from_slice(&NF4_LEVELS).to_device(w.device());
        let codes = match scheme {
            Scheme::Int8 => (&values / &safe * 127.0).round().to_kind(Kind::Int8).flatten(0, -1).narrow(0, 0, n),
            Scheme::Nf4 | Scheme::Nf4Dq => {
                let idx = nearest(&(&values / &safe), &levels).flatten(0, -1).narrow(0, 0, n).to_kind(Kind::Uint8);
                let idx = if n % 2 == 1 { idx.constant_pad_nd([0, 1]) } else { idx };
                let pairs = idx.view([-1, 2]);
                pairs.select(1, 0).bitwise_left_shift_tensor_scalar(4).bitwise_or_tensor(&pairs.select(1, 1))
            }
        };
        let scales = match scheme {
            Scheme::Nf4Dq => double_quantize(&absmax),
            _ => Scales::Plain(absmax),
        };
        Quantized { scheme, codes, scales, shape, kind, levels }
    }

    /// The absmax of each block, in fp32.
    pub fn absmax(&self) -> Tensor {
        match &self.scales {
            Scales::Plain(a) => a.shallow_clone(),
            Scales::Double { codes, absmax, offset, map } => {
                let values = map.index_select(0, &codes.to_kind(Kind::Int64));
                let per = absmax.repeat_interleave_self_int(ABSMAX_BLOCK, Some(0), None::<i64>);
                values * per.narrow(0, 0, codes.size()[0]) + *offset
            }
        }
    }

    /// The weight in `kind`, with the stored shape.
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        let n: i64 = self.shape.iter().product();
        let absmax = self.absmax().unsqueeze(1);
        let values = match self.scheme {
            Scheme::Int8 => blocks(&self.codes.to_kind(Kind::Float), BLOCK) / 127.0,
            Scheme::Nf4 | Scheme::Nf4Dq => {
                let high = self.codes.bitwise_right_shift_tensor_scalar(4);
                let low = self.codes.bitwise_and(15);
                let idx = Tensor::stack(&[high, low], 1).flatten(0, -1).to_kind(Kind::Int64);
                blocks(&self.levels.index_select(0, &idx), BLOCK)
            }
        };
        (values * absmax).flatten(0, -1).narrow(0, 0, n).view(&*self.shape).to_kind(kind)
    }

    /// The tensors that hold this weight, by suffix (`codes`, `absmax`; `nf4-dq`: also `absmax.absmax`
    /// and `absmax.offset`), to store it.
    pub fn stored(&self) -> Vec<(&'static str, Tensor)> {
        let mut out = vec![("codes", self.codes.shallow_clone())];
        match &self.scales {
            Scales::Plain(a) => out.push(("absmax", a.shallow_clone())),
            Scales::Double { codes, absmax, offset, .. } => {
                out.push(("absmax", codes.shallow_clone()));
                out.push(("absmax.absmax", absmax.shallow_clone()));
                out.push(("absmax.offset", Tensor::from_slice(&[*offset])));
            }
        }
        out
    }

    /// A weight of `shape` and `kind` from the tensors [`Quantized::stored`] gave, checked against
    /// `scheme` and moved to `device`; `Err` says which tensor is missing or wrong.
    pub fn from_stored(
        scheme: Scheme,
        mut part: impl FnMut(&str) -> Option<Tensor>,
        shape: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Quantized, String> {
        let n: i64 = shape.iter().product();
        let blocks = (n + BLOCK - 1) / BLOCK;
        let mut take = |name: &str, want_kind: Kind, len: i64| match part(name) {
            Some(t) if t.kind() == want_kind && t.size() == [len] => Ok(t.to_device(device)),
            Some(t) => Err(format!("{name} is {:?} {:?}, not {want_kind:?} [{len}]", t.kind(), t.size())),
            None => Err(format!("{name} is missing")),
        };
        let codes = match scheme {
            Scheme::Int8 => take("codes", Kind::Int8, n)?,
            Scheme::Nf4 | Scheme::Nf4Dq => take("codes", Kind::Uint8, (n + 1) / 2)?,
        };
        let scales = match scheme {
            Scheme::Nf4Dq => {
                let codes = take("absmax", Kind::Uint8, blocks)?;
                let absmax = take("absmax.absmax", Kind::Float, (blocks + ABSMAX_BLOCK - 1) / ABSMAX_BLOCK)?;
                let offset = take("absmax.offset", Kind::Double, 1)?.double_value(&[0]);
                Scales::Double { codes, absmax, offset, map: dynamic_map(device) }
            }
            _ => Scales::Plain(take("absmax", Kind::Float, blocks)?),
        };
        let levels = Tensor::from_slice(&NF4_LEVELS).to_device(device);
        Ok(Quantized { scheme, codes, scales, shape: shape.to_vec(), kind, levels })
    }

    /// Bytes this weight holds.
    pub fn stored_bytes(&self) -> u64 {
        self.scheme.bytes(self.shape.iter().product::<i64>() as u64)
    }
}

/// `absmax − mean`, in blocks of [`ABSMAX_BLOCK`], each divided by its own absmax and sent to the
/// nearest value of the dynamic map.
fn double_quantize(absmax: &Tensor) -> Scales {
    let offset = absmax.mean(Kind::Float).double_value(&[]);
    let n = absmax.size()[0];
    let shifted = blocks(&(absmax - offset), ABSMAX_BLOCK);
    let second = shifted.abs().amax([1], false);
    let safe = second.where_scalarother(&second.gt(0.0), 1.0).unsqueeze(1);
    let map = dynamic_map(absmax.device());
    let codes = nearest(&(&shifted * safe.reciprocal()), &map).flatten(0, -1).narrow(0, 0, n).to_kind(Kind::Uint8);
    Scales::Double { codes, absmax: second, offset, map }
}
