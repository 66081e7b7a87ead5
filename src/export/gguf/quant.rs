//! The number formats a GGUF export writes, encoded as ggml stores them: f32 (type 0), f16 (1), bf16
//! (30) and q8_0 (8: blocks of 32 values, each block an f16 scale `d = max|x| / 127` followed by the
//! 32 values `round(x / d)` as int8, as llama.cpp's reference `quantize_row_q8_0_ref` computes them).
use tch::{Kind, Tensor};

/// The number formats `--quant` takes.
pub const QUANTS: [&str; 3] = ["f16", "bf16", "q8_0"];

/// A ggml tensor type ftexp writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

/// Values per q8_0 block.
pub const Q8_0_BLOCK: usize = 32;

impl GgmlType {
    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 8,
            GgmlType::Bf16 => 30,
        }
    }

    /// `general.file_type`: llama.cpp's `LLAMA_FTYPE_MOSTLY_*` of a file whose matrices are this type.
    pub fn file_type(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 7,
            GgmlType::Bf16 => 32,
        }
    }

    /// The `--quant` name of a matrix format, or a one-line refusal naming the supported ones.
    pub fn parse(quant: &str) -> Result<GgmlType, String> {
        match quant {
            "f16" => Ok(GgmlType::F16),
            "bf16" => Ok(GgmlType::Bf16),
            "q8_0" => Ok(GgmlType::Q8_0),
            other => Err(format!(
                "--quant {other}: not a GGUF format ftexp writes; use one of {} (k-quants such as q4_k_m: quantize the f16 file with llama.cpp's llama-quantize)",
                QUANTS.join(", ")
            )),
        }
    }
}

/// `t` (any shape, any float kind) encoded as `ty`, row-major. q8_0 needs a last dimension that is a
/// multiple of 32 (the caller falls back to f16 otherwise, as llama.cpp's converter does).
pub fn encode(t: &Tensor, ty: GgmlType) -> Vec<u8> {
    let flat = t.detach().to_device(tch::Device::Cpu).contiguous().view(-1);
    match ty {
        GgmlType::F32 => floats(&flat).iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => halves(&flat.to_kind(Kind::Float).to_kind(Kind::Half)),
        GgmlType::Bf16 => halves(&flat.to_kind(Kind::Float).to_kind(Kind::BFloat16)),
        GgmlType::Q8_0 => q8_0(&floats(&flat)),
    }
}

fn floats(flat: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(flat.to_kind(Kind::Float)).expect("a float tensor converts to f32 values")
}

/// The bits of a 16-bit float tensor, little-endian.
fn halves(t: &Tensor) -> Vec<u8> {
    let bits = Vec::<i16>::try_from(t.view_dtype(Kind::Int16)).expect("16-bit values read as int16");
    bits.iter().flat_map(|b| b.to_le_bytes()).collect()
}

/// The f16 bits of each value, rounded to nearest even (as ggml's `GGML_FP32_TO_FP16`).
fn to_f16_bits(values: &[f32]) -> Vec<u8> {
    halves(&Tensor::from_slice(values).to_kind(Kind::Half))
}

/// q8_0 blocks of `x` (its length a multiple of 32): per block the f16 scale, then 32 int8 values.
pub fn q8_0(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(Q8_0_BLOCK), "q8_0 rows are whole blocks");
    let scales: Vec<f32> = x.chunks(Q8_0_BLOCK).map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).collect();
    let scale_bits = to_f16_bits(&scales);
    let mut out = Vec::with_capacity(x.len() / Q8_0_BLOCK * (Q8_0_BLOCK + 2));
    for (i, block) in x.chunks(Q8_0_BLOCK).enumerate() {
        let d = scales[i];
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&scale_bits[2 * i..2 * i + 2]);
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}
