//! Rotary position embeddings of one kind of layer, as transformers 5.24 computes them
//! (`modeling_rope_utils.py` and the models' rotary modules): the settings parsed from a config.json's
//! values, the inverse frequencies computed with the same fp32 tensor operations in the same order, so
//! they agree to float rounding.
use std::f64::consts::PI;

use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

const SUPPORTED: &str = "default, linear, dynamic, yarn, longrope (or su), llama3";

/// Rotary scaling of one kind of layer, as config.json gives it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    Default,
    /// Frequencies divided by `factor`.
    Linear {
        factor: f64,
    },
    /// NTK-aware: past `max_position_embeddings` the base grows with the sequence.
    Dynamic {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        /// Round the correction range out to whole dimensions (transformers' default).
        truncate: bool,
        /// Resolved: as given, else from `factor` (and `mscale` / `mscale_all_dim` when both are set).
        attention_factor: f64,
    },
    /// Phi-3's: `long_factor` past `original_max_position_embeddings`, `short_factor` up to it.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        /// Resolved: as given, else from `factor` (else max / original max position embeddings).
        attention_factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RopeSpec {
    pub theta: f64,
    /// Rotary dimensions of a head, even.
    pub dims: i64,
    pub scaling: RopeScaling,
    pub max_position_embeddings: i64,
}

/// Parses the rotary settings from a config.json's values. `params`: the rope dictionary
/// (transformers ≥ 5 `rope_parameters` object, or the classic `rope_scaling` object merged with the
/// top-level `rope_theta`, see [`rope_dictionary`]; Value::Null when there is none), `theta` the base
/// already resolved by the caller, `dims` the rotary dimensions, `max_position_embeddings` the config's.
///
/// The kind is `rope_type`, else the legacy `type`, else default; "su" is Phi-3's old name of longrope.
/// An absent `original_max_position_embeddings` is `max_position_embeddings`, as transformers'
/// `standardize_rope_params` sets it.
pub fn parse(params: &Value, theta: f64, dims: i64, max_position_embeddings: i64) -> Result<RopeSpec, String> {
    let empty = Map::new();
    let map = match params {
        Value::Null => &empty,
        Value::Object(map) => map,
        other => return Err(format!("rope parameters must be an object, got {other}")),
    };
    if let Some((key, _)) = map.iter().find(|(_, v)| v.is_object()) {
        return Err(format!("rope parameters are nested by layer type (`{key}`); give one layer type's parameters"));
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(format!("rope_theta must be a finite positive number, got {theta}"));
    }
    if dims < 0 || dims % 2 != 0 {
        return Err(format!("rotary dimensions must be even and not negative, got {dims}"));
    }
    if max_position_embeddings <= 0 {
        return Err(format!("max_position_embeddings must be positive, got {max_position_embeddings}"));
    }
    let p = Params(map);
    let max = max_position_embeddings as f64;
    let scaling = match kind(&p)? {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: p.positive("factor")? },
        "dynamic" if dims == 2 => return Err("dynamic rope scaling needs more than 2 rotary dimensions".into()),
        "dynamic" => RopeScaling::Dynamic { factor: p.positive("factor")? },
        "yarn" => yarn(&p, max)?,
        "longrope" | "su" => longrope(&p, dims, max)?,
        "llama3" => llama3(&p, max)?,
        other => return Err(format!("rope type \"{other}\" is not supported; supported: {SUPPORTED}")),
    };
    Ok(RopeSpec { theta, dims, scaling, max_position_embeddings })
}

/// The rope dictionary transformers makes of a whole (flat) config.json, for [`parse`]: `rope_scaling`
/// when it is set, else `rope_parameters`; the top-level `rope_theta` and `partial_rotary_factor` fill
/// in what it lacks, and a top-level `original_max_position_embeddings` (Phi-3 keeps it there) replaces
/// the dictionary's for llama3, yarn and longrope, as `standardize_rope_params` gives it priority.
/// Null when there is nothing. A dictionary nested by layer type comes back unchanged.
pub fn rope_dictionary(config: &Value) -> Value {
    let set = |key: &str| config.get(key).filter(|v| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()));
    let mut map = match set("rope_scaling").or_else(|| set("rope_parameters")) {
        None => Map::new(),
        Some(Value::Object(map)) if !map.values().any(Value::is_object) => map.clone(),
        Some(other) => return other.clone(),
    };
    for key in ["rope_theta", "partial_rotary_factor"] {
        if let (Some(v), false) = (config.get(key).filter(|v| !v.is_null()), map.contains_key(key)) {
            map.insert(key.into(), v.clone());
        }
    }
    let named = |key: &str| map.get(key).and_then(Value::as_str);
    let kind = named("rope_type").or_else(|| named("type")).unwrap_or("default");
    if let Some(v) = config.get("original_max_position_embeddings").filter(|v| !v.is_null()) {
        if ["llama3", "yarn", "longrope", "su"].contains(&kind) {
            map.insert("original_max_position_embeddings".into(), v.clone());
        }
    }
    if map.is_empty() {
        Value::Null
    } else {
        Value::Object(map)
    }
}

impl RopeSpec {
    /// (inverse frequencies: fp32 CPU tensor of dims/2 values, attention factor that multiplies cos and sin)
    /// for a forward pass whose largest position is `seq_len - 1`.
    ///
    /// Dynamic is stateless here: up to `max_position_embeddings` the frequencies of that length (the
    /// plain ones, up to rounding), past it the NTK base for `seq_len`, computed in fp32 as transformers'
    /// forward does. transformers' module instead keeps the longer frequencies once it has seen a longer
    /// sequence, until one shorter than `max_position_embeddings` resets them, so after a long pass a
    /// pass of length in (max_position_embeddings, longest seen) differs from this.
    pub fn inverse_frequencies(&self, seq_len: i64) -> (Tensor, f64) {
        match &self.scaling {
            RopeScaling::Default => (self.plain(self.theta), 1.0),
            RopeScaling::Linear { factor } => (self.plain(self.theta).divide_scalar(*factor), 1.0),
            RopeScaling::Dynamic { factor } => (self.dynamic(*factor, seq_len), 1.0),
            RopeScaling::Yarn { attention_factor, .. } => (self.yarn(), *attention_factor),
            RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, attention_factor } => {
                let long = seq_len as f64 > *original_max_position_embeddings;
                let factors: Vec<f32> =
                    if long { long_factor } else { short_factor }.iter().map(|&f| f as f32).collect();
                let scaled = Tensor::from_slice(&factors) * Tensor::pow_scalar(self.theta, &self.exponents());
                (scaled.reciprocal(), *attention_factor)
            }
            RopeScaling::Llama3 { .. } => (self.llama3(), 1.0),
        }
    }

    /// Whether the frequencies depend on `seq_len` (dynamic, longrope).
    pub fn depends_on_length(&self) -> bool {
        matches!(self.scaling, RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. })
    }

    /// arange(0, dims, 2) / dims in fp32.
    fn exponents(&self) -> Tensor {
        Tensor::arange_start_step(0, self.dims, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            .divide_scalar(self.dims)
    }

    /// 1 / base^(2i/dims).
    fn plain(&self, base: f64) -> Tensor {
        Tensor::pow_scalar(base, &self.exponents()).reciprocal()
    }

    fn dynamic(&self, factor: f64, seq_len: i64) -> Tensor {
        let (dims, max) = (self.dims as f64, self.max_position_embeddings);
        if seq_len <= max {
            // The module's frequencies from its construction: the formula at max_position_embeddings,
            // in Python floats.
            let max = max as f64;
            return self.plain(self.theta * ((factor * max / max) - (factor - 1.0)).powf(dims / (dims - 2.0)));
        }
        // The forward passes seq_len as an int64 tensor: the base is computed in fp32.
        let base = Tensor::from(seq_len)
            .multiply_scalar(factor)
            .divide_scalar(max)
            .subtract_scalar(factor - 1.0)
            .pow_tensor_scalar(dims / (dims - 2.0))
            .multiply_scalar(self.theta);
        base.pow(&self.exponents()).reciprocal()
    }

    fn yarn(&self) -> Tensor {
        let RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, truncate, .. } =
            self.scaling
        else {
            unreachable!("yarn frequencies of a yarn spec")
        };
        let pos_freqs = Tensor::pow_scalar(self.theta, &self.exponents());
        let extrapolation = pos_freqs.reciprocal();
        let interpolation = pos_freqs.multiply_scalar(factor).reciprocal();
        let (low, high) = self.correction_range(beta_fast, beta_slow, original_max_position_embeddings, truncate);
        let high = if low == high { high + 0.001 } else { high };
        let ramp = Tensor::arange(self.dims / 2, (Kind::Float, Device::Cpu))
            .subtract_scalar(low)
            .divide_scalar(high - low)
            .clamp(0.0, 1.0);
        let extrapolation_factor = ramp.rsub_scalar(1.0);
        interpolation * extrapolation_factor.rsub_scalar(1.0) + extrapolation * extrapolation_factor
    }

    /// The dimensions between which yarn blends interpolation into extrapolation, in Python floats.
    fn correction_range(&self, beta_fast: f64, beta_slow: f64, original_max: f64, truncate: bool) -> (f64, f64) {
        let dims = self.dims as f64;
        let at = |rotations: f64| (dims * (original_max / (rotations * 2.0 * PI)).ln()) / (2.0 * self.theta.ln());
        let (low, high) = (at(beta_fast), at(beta_slow));
        let (low, high) = if truncate { (low.floor(), high.ceil()) } else { (low, high) };
        (low.max(0.0), high.min(dims - 1.0))
    }

    fn llama3(&self) -> Tensor {
        let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } =
            self.scaling
        else {
            unreachable!("llama3 frequencies of a llama3 spec")
        };
        let inv_freq = self.plain(self.theta);
        let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
        let wavelen = inv_freq.reciprocal().multiply_scalar(2.0 * PI);
        let scaled = inv_freq.divide_scalar(factor).where_self(&wavelen.gt(low_wavelen), &inv_freq);
        let smooth = wavelen
            .reciprocal()
            .multiply_scalar(old)
            .subtract_scalar(low_freq_factor)
            .divide_scalar(high_freq_factor - low_freq_factor);
        let smoothed = (smooth.rsub_scalar(1.0) * &scaled).divide_scalar(factor) + &smooth * &scaled;
        let medium = wavelen.lt(high_wavelen).logical_not().logical_and(&wavelen.gt(low_wavelen).logical_not());
        smoothed.where_self(&medium, &scaled)
    }
}

/// `rope_type`, else the legacy `type`, else "default".
fn kind<'a>(p: &Params<'a>) -> Result<&'a str, String> {
    for key in ["rope_type", "type"] {
        match p.0.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => return Ok(s),
            Some(other) => return Err(format!("rope scaling `{key}` must be a string, got {other}")),
        }
    }
    Ok("default")
}

fn yarn(p: &Params, max: f64) -> Result<RopeScaling, String> {
    let original = p.positive_or("original_max_position_embeddings", max)?;
    // transformers requires the key; a null factor is the ratio of the two lengths.
    if !p.0.contains_key("factor") {
        return Err("rope scaling `factor` is missing".into());
    }
    let factor = p.positive_or("factor", max / original)?;
    let mscale = |key: &str| p.number(key).map(|m| m.filter(|&m| m != 0.0));
    let attention_factor = match (p.positive_opt("attention_factor")?, mscale("mscale")?, mscale("mscale_all_dim")?) {
        (Some(given), _, _) => given,
        (None, Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
        (None, _, _) => yarn_mscale(factor, 1.0),
    };
    if !(attention_factor.is_finite() && attention_factor > 0.0) {
        return Err(format!("rope scaling `mscale` and `mscale_all_dim` give the attention factor {attention_factor}"));
    }
    // Python truthiness: a null `truncate` is false, an absent one true.
    let truncate = match p.0.get("truncate") {
        None => true,
        Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("rope scaling `truncate` must be true or false, got {other}")),
    };
    Ok(RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast: p.beta("beta_fast", 32.0)?,
        beta_slow: p.beta("beta_slow", 1.0)?,
        truncate,
        attention_factor,
    })
}

fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

fn longrope(p: &Params, dims: i64, max: f64) -> Result<RopeScaling, String> {
    let original = p.positive_or("original_max_position_embeddings", max)?;
    let factor = p.positive_or("factor", max / original)?;
    let attention_factor = match p.positive_opt("attention_factor")? {
        Some(given) => given,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / original.ln()).sqrt(),
    };
    if !attention_factor.is_finite() {
        return Err(format!("rope scaling `original_max_position_embeddings` {original} gives no attention factor"));
    }
    Ok(RopeScaling::LongRope {
        short_factor: p.factors("short_factor", dims)?,
        long_factor: p.factors("long_factor", dims)?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

fn llama3(p: &Params, max: f64) -> Result<RopeScaling, String> {
    let (low_freq_factor, high_freq_factor) = (p.positive("low_freq_factor")?, p.positive("high_freq_factor")?);
    if high_freq_factor <= low_freq_factor {
        return Err(format!(
            "rope scaling `high_freq_factor` ({high_freq_factor}) must exceed `low_freq_factor` ({low_freq_factor})"
        ));
    }
    Ok(RopeScaling::Llama3 {
        factor: p.positive("factor")?,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: p.positive_or("original_max_position_embeddings", max)?,
    })
}

/// A rope dictionary's values, read with one-line errors.
struct Params<'a>(&'a Map<String, Value>);

impl Params<'_> {
    /// The number at `key`; absent and null are None.
    fn number(&self, key: &str) -> Result<Option<f64>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("rope scaling `{key}` must be a number, got {v}")),
        }
    }

    fn positive_opt(&self, key: &str) -> Result<Option<f64>, String> {
        match self.number(key)? {
            Some(x) if !(x.is_finite() && x > 0.0) => {
                Err(format!("rope scaling `{key}` must be a finite positive number, got {x}"))
            }
            x => Ok(x),
        }
    }

    fn positive(&self, key: &str) -> Result<f64, String> {
        self.positive_opt(key)?.ok_or_else(|| format!("rope scaling `{key}` is missing"))
    }

    fn positive_or(&self, key: &str, default: f64) -> Result<f64, String> {
        Ok(self.positive_opt(key)?.unwrap_or(default))
    }

    /// yarn's beta_fast / beta_slow: `default` when absent, null or zero (transformers' `get(key) or default`).
    fn beta(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.number(key)? {
            None | Some(0.0) => Ok(default),
            Some(_) => self.positive(key),
        }
    }

    /// longrope's per-frequency factors: dims/2 finite positive numbers.
    fn factors(&self, key: &str, dims: i64) -> Result<Vec<f64>, String> {
        let list = match self.0.get(key) {
            None | Some(Value::Null) => return Err(format!("rope scaling `{key}` is missing")),
            Some(Value::Array(list)) => list,
            Some(other) => return Err(format!("rope scaling `{key}` must be a list of numbers, got {other}")),
        };
        if list.len() as i64 != dims / 2 {
            return Err(format!(
                "rope scaling `{key}` has {} values; {dims} rotary dimensions need {}",
                list.len(),
                dims / 2
            ));
        }
        list.iter()
            .map(|v| match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(format!("rope scaling `{key}` must hold finite positive numbers, got {v}")),
            })
            .collect()
    }
}
