//! The model: one GPT with switches per family, loaded straight from a hub checkpoint directory
//! (`config.json` and safetensors). It only ever takes a directory: finding or downloading one is
//! [`source`](crate::source)'s job.
pub mod adapter;
mod attention;
pub mod block;
mod config_keys;
pub mod footprint;
pub mod gpt;
pub mod layout;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod quant;
mod read_config;
pub mod rope;
pub mod spec;
pub mod staged;
pub mod weight;
pub mod weights;

use std::path::Path;

use tch::{Device, Kind, Tensor};

pub use block::{Block, BlockCtx, KvCache};
pub use gpt::{Gpt, Part};
pub use layout::{Role, TensorSpec};
pub use weight::Weight;

use crate::error::Problems;
use layout::Param;

/// Loads the model in `dir` onto `device`, weights cast to `kind`.
pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Gpt, Problems> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Problems::one(format!(
            "{}: not found; is {} a model checkpoint directory?",
            config.display(),
            dir.display()
        )));
    }
    load_spec(dir, spec::ModelSpec::from_file(&config)?, kind, device, Held::Dense)
}

/// How [`load_spec`] holds the blocks' linear weights.
pub enum Held<'a> {
    Dense,
    /// Quantized as each is loaded (read to the host, quantized on the device, its dense form freed).
    Quantize(quant::Scheme),
    /// Already quantized (a cache of them), by ftexp name, taken out as used; their dense tensors in
    /// the checkpoint are never read.
    Stored(&'a mut std::collections::HashMap<String, quant::Quantized>),
}

/// [`load`] with the spec its `config.json` gives, already read, the linear weights held as `held` says.
pub fn load_spec(dir: &Path, spec: spec::ModelSpec, kind: Kind, device: Device, held: Held) -> Result<Gpt, Problems> {
    let linear: Vec<TensorSpec> = layout::tensors(&spec, None).into_iter().filter(|t| gpt::quantizable(t.at)).collect();
    let stored: std::collections::HashSet<String> = match &held {
        Held::Stored(map) => linear.iter().filter(|t| map.contains_key(&t.name())).map(|t| t.name()).collect(),
        _ => Default::default(),
    };
    // A checkpoint tensor is skipped when every part of the model made from it is already stored.
    let mut needed = std::collections::HashSet::new();
    for t in layout::tensors(&spec, None) {
        if !stored.contains(&t.name()) {
            needed.insert(t.hub_name(&spec).expect("checkpoint tensors have hub names").name);
        }
    }
    let staging = if matches!(held, Held::Dense) { device } else { Device::Cpu };
    let progress = quantizing_progress(&held, linear.len() as u64, &spec);
    // Converting and moving the weights can run out of memory: a one-line error, not a panic.
    crate::error::guard(&dir.display().to_string(), || {
        let mut hub = weights::load(dir, &spec, kind, staging, &|name| needed.contains(name))?;
        let mut held = held;
        Ok(tch::no_grad(|| {
            Gpt::from_parts(spec.clone(), |t| {
                if let Held::Stored(map) = &mut held {
                    if let Some(q) = map.remove(&t.name()) {
                        return Part::Quantized(q);
                    }
                }
                let name = t.hub_name(&spec).expect("checkpoint tensors have hub names");
                let dense = match name.fused {
                    None => hub.remove(&name.name).expect("weights::load checked every tensor is present"),
                    Some((fusion, part)) => gpt::fused_part(&spec, fusion, &hub[&name.name], part),
                }
                .to_device(device);
                match &held {
                    Held::Quantize(scheme) if gpt::quantizable(t.at) => {
                        progress.inc(1);
                        Part::Quantized(quant::Quantized::new(&dense, *scheme))
                    }
                    _ => Part::Dense(dense),
                }
            })
        }))
    })?
    .inspect(|_| progress.finish_and_clear())
}

/// A progress bar on the terminal while a model of more than about a billion parameters is quantized.
fn quantizing_progress(held: &Held, layers: u64, spec: &spec::ModelSpec) -> indicatif::ProgressBar {
    let large = spec.hidden_size * spec.hidden_size * spec.n_layer * 12 > 1_000_000_000;
    if !matches!(held, Held::Quantize(_)) || !large {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(layers);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("quantizing the base {bar:30} {pos}/{len} weights, {eta} left")
    {
        bar.set_style(style);
    }
    bar
}

/// A model of `spec` with random weights: N(0, 0.02) matrices and embeddings, norms one, biases zero.
/// Seeded.
pub fn random(spec: spec::ModelSpec, seed: u64, kind: Kind, device: Device) -> Gpt {
    crate::native::rng::seeded(seed as i64, || {
        tch::no_grad(|| {
            Gpt::from_tensors(spec, |t| {
                let shape = t.shape.as_slice();
                let tensor = if t.at.param == Param::Bias {
                    Tensor::zeros(shape, (Kind::Float, device))
                } else if shape.len() == 1 {
                    Tensor::ones(shape, (Kind::Float, device))
                } else {
                    Tensor::randn(shape, (Kind::Float, device)) * 0.02
                };
                tensor.to_kind(kind)
            })
        })
    })
}
