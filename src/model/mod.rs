//! The model: one GPT with switches per family, loaded straight from a hub checkpoint directory
//! (`config.json`, safetensors, `tokenizer.json`).
pub mod gpt;
pub mod spec;
pub mod tokenizer;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

pub use gpt::{Gpt, KvCache};
pub use tokenizer::Tokenizer;

use crate::config::schema::ModelConfig;
use crate::error::Problems;

/// The tensor kind that holds weights for a precision setting.
pub fn weight_kind(precision: &str) -> tch::Kind {
    match precision {
        "bf16-true" | "bf16-mixed" => tch::Kind::BFloat16,
        "16-true" => tch::Kind::Half,
        _ => tch::Kind::Float,
    }
}

/// The directory holding the base model's files: a local directory, a hub repo (downloaded on first
/// use), or `experiment:<name>[/v<N>]` — the weights a finished `full` run exported.
pub fn base_dir(m: &ModelConfig) -> Result<PathBuf, Problems> {
    let Some(run) = m.checkpoint.strip_prefix("experiment:") else {
        return crate::hub::ensure_local(&m.checkpoint, m.revision.as_deref());
    };
    let root = Path::new(crate::experiment::EXPERIMENTS_DIR);
    let (name, version) = match run.split_once('/') {
        Some((n, v)) => (n, v.strip_prefix('v').and_then(|v| v.parse::<u32>().ok())),
        None => (run, None),
    };
    let parent = root.join(name);
    let completed = |v: &u32| {
        let dir = parent.join(format!("v{v}"));
        crate::experiment::Experiment::open(&dir).and_then(|e| e.read_run_info()).is_ok_and(|i| i.status == "completed")
    };
    let version = match version {
        Some(v) => v,
        None => match crate::experiment::versions(&parent).into_iter().rev().find(completed) {
            Some(v) => v,
            None => {
                return Err(Problems::one(format!(
                    "model.checkpoint = \"{}\": no completed run of \"{name}\" under {}; run it first",
                    m.checkpoint,
                    parent.display()
                )))
            }
        },
    };
    let dir = parent.join(format!("v{version}/checkpoints/final/model"));
    if !dir.join("config.json").is_file() {
        return Err(Problems::one(format!(
            "model.checkpoint = \"{}\": {} has no exported model; only completed `full` runs can be the base of another run",
            m.checkpoint,
            parent.join(format!("v{version}")).display()
        )));
    }
    Ok(dir)
}

/// The directory of the tokenizer to use: `model.tokenizer`, else the base model's.
pub fn tokenizer_dir(m: &ModelConfig) -> Result<PathBuf, Problems> {
    match &m.tokenizer {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => base_dir(m),
    }
}

/// The `config.json` of a model trained from scratch, from `[model.architecture]` and the tokenizer's
/// vocabulary.
pub fn architecture_json(m: &ModelConfig, tokenizer: &Tokenizer) -> serde_json::Value {
    let mut json = serde_json::to_value(&m.architecture).expect("architecture serializes");
    let obj = json.as_object_mut().expect("an object");
    obj.insert("vocab_size".into(), tokenizer.vocab_size().into());
    if let Some(eos) = tokenizer.eos_ids.first() {
        obj.insert("eos_token_id".into(), (*eos).into());
    }
    if let Some(bos) = tokenizer.bos_id {
        obj.insert("bos_token_id".into(), bos.into());
    }
    if !obj.contains_key("intermediate_size") {
        let h = obj.get("hidden_size").and_then(|v| v.as_u64()).unwrap_or(0);
        obj.insert("intermediate_size".into(), (4 * h).into());
    }
    if obj.get("model_type").and_then(|v| v.as_str()) == Some("falcon") {
        obj.insert("new_decoder_architecture".into(), true.into());
        obj.insert(
            "num_kv_heads".into(),
            obj.get("num_key_value_heads").cloned().unwrap_or(obj["num_attention_heads"].clone()),
        );
        obj.insert("ffn_hidden_size".into(), obj["intermediate_size"].clone());
    }
    json
}

/// The `config.json` of a model built with random weights (`init = "random"`), and the directory of its
/// tokenizer: from `[model.architecture]` and the tokenizer's vocabulary when `model_type` is set, else the
/// checkpoint's own `config.json` (no weights needed: enough to measure a 7B model's speed offline).
pub fn random_architecture(m: &ModelConfig) -> Result<(serde_json::Value, PathBuf), Problems> {
    if m.architecture.model_type.is_some() {
        let dir = tokenizer_dir(m)?;
        return Ok((architecture_json(m, &Tokenizer::from_dir(&dir)?), dir));
    }
    let dir = crate::hub::local_dir(&m.checkpoint);
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|_| {
        Problems::one(format!(
            "{}: not found; `model.init = \"random\"` takes the shapes from it (run `ftexp download {}` or copy the hub's config.json there) or from [model.architecture]",
            config.display(),
            m.checkpoint
        ))
    })?;
    let json = serde_json::from_str(&text).map_err(|e| Problems::one(format!("{}: {e}", config.display())))?;
    Ok((json, m.tokenizer.as_ref().map_or(dir, PathBuf::from)))
}

/// Random weights for `spec`: N(0, 0.02) matrices and embeddings, norms one, biases zero. Seeded.
pub fn random_weights(
    spec: &spec::ModelSpec,
    seed: u64,
    kind: tch::Kind,
    device: tch::Device,
) -> HashMap<String, Tensor> {
    tch::manual_seed(seed as i64);
    spec.weights()
        .into_iter()
        .map(|(name, shape)| {
            let t = if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), (tch::Kind::Float, device))
            } else if shape.len() == 1 {
                Tensor::ones(shape.as_slice(), (tch::Kind::Float, device))
            } else {
                Tensor::randn(shape.as_slice(), (tch::Kind::Float, device)) * 0.02
            };
            (name, t.to_kind(kind))
        })
        .collect()
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
