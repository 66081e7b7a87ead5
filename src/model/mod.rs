//! The model: one GPT with switches per family, loaded straight from a hub checkpoint directory
//! (`config.json` and safetensors). It only ever takes a directory: finding or downloading one is
//! [`source`](crate::source)'s job.
pub mod adapter;
mod attention;
pub mod block;
pub mod footprint;
pub mod gpt;
pub mod layout;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod quant;
pub mod spec;
pub mod staged;
pub mod weight;
pub mod weights;

use std::path::Path;

use tch::{Device, Kind, Tensor};

pub use block::{Block, BlockCtx, KvCache};
pub use gpt::Gpt;
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
    load_spec(dir, spec::ModelSpec::from_file(&config)?, kind, device)
}

/// [`load`] with the spec its `config.json` gives, already read.
pub fn load_spec(dir: &Path, spec: spec::ModelSpec, kind: Kind, device: Device) -> Result<Gpt, Problems> {
    // Converting and moving the weights can run out of memory: a one-line error, not a panic.
    crate::error::guard(&dir.display().to_string(), || {
        let mut hub = weights::load(dir, &spec, kind, device)?;
        Ok(tch::no_grad(|| {
            Gpt::from_tensors(spec.clone(), |t| {
                let name = t.hub_name(&spec).expect("checkpoint tensors have hub names");
                match name.fused_part {
                    None => hub.remove(&name.name).expect("weights::load checked every tensor is present"),
                    Some(part) => gpt::fused_part(&spec, &hub[&name.name], part),
                }
            })
        }))
    })?
}

/// A model of `spec` with random weights: N(0, 0.02) matrices and embeddings, norms one, biases zero.
/// Seeded.
pub fn random(spec: spec::ModelSpec, seed: u64, kind: Kind, device: Device) -> Gpt {
    tch::manual_seed(seed as i64);
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
}
