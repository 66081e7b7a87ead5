//! The model: one GPT with switches per family, loaded straight from a hub checkpoint directory
//! (`config.json`, safetensors, `tokenizer.json`).
pub mod gpt;
pub mod spec;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

pub use gpt::{Gpt, KvCache};
pub use tokenizer::Tokenizer;

use crate::error::Problems;

/// The tensor kind that holds weights for a precision setting.
pub fn weight_kind(precision: &str) -> tch::Kind {
    match precision {
        "bf16-true" | "bf16-mixed" => tch::Kind::BFloat16,
        "16-true" => tch::Kind::Half,
        _ => tch::Kind::Float,
    }
}

/// Loads the model in `dir` onto `device`, weights cast to `kind`.
pub fn load(dir: &Path, kind: tch::Kind, device: tch::Device) -> Result<Gpt, Problems> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Problems::one(format!(
            "{}: not found; is {} a model checkpoint directory?",
            config.display(),
            dir.display()
        )));
    }
    let spec = spec::ModelSpec::from_file(&config)?;
    let weights = weights::load(dir, &spec, kind, device)?;
    Ok(tch::no_grad(|| Gpt::from_weights(spec, weights)))
}
