//! A config's model, ready to train or use: the base located and loaded (or built with random weights)
//! on the config's device, the method applied, and its trainable tensors marked.
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::located::Located;
use super::Trainable;
use crate::config::{Config, Init};
use crate::device::Placement;
use crate::error::Problems;
use crate::experiment::{checkpoint, provenance, RunInfo};
use crate::model::spec::ModelSpec;
use crate::model::{self, Gpt};
use crate::tokenizer::Tokenizer;

pub struct Built {
    pub model: Gpt,
    pub trainable: Vec<Trainable>,
    /// Where the base came from (the tokenizer's directory for a model trained from scratch).
    pub base_dir: PathBuf,
    pub tokenizer_dir: PathBuf,
    /// The base's `config.json`, written again with an exported model.
    pub config_json: serde_json::Value,
    pub placement: Placement,
}

/// The base directory a run recorded, its files checked against the record (unless
/// `allow_changed`); `None` for a run trained from scratch or recorded without one.
pub fn recorded_base(info: &RunInfo, init: Init, allow_changed: bool) -> Result<Option<PathBuf>, Problems> {
    let Some(base) = info.base.as_ref().filter(|_| init == Init::Pretrained) else { return Ok(None) };
    if !allow_changed {
        provenance::verify(&base.dir, &base.files)?;
    }
    Ok(Some(base.dir.clone()))
}

/// The model of `c` on `placement`, on the base the plan `located`.
pub fn build_located(c: &Config, located: &Located, placement: Placement) -> Result<Built, Problems> {
    placement.check_available().map_err(|why| {
        Problems::one(format!("model.device = \"{}\" but {why}; use --set model.device=cpu", c.model.device))
    })?;
    if let (tch::Device::Cpu, Some(limit)) = (placement.device, c.model.device_memory_bytes()) {
        crate::native::allocator::count_cpu_memory(Some(limit));
    }
    let (kind, spec, base_dir) = (placement.weight_kind(), located.spec.clone(), &located.base_dir);
    let random = c.model.init == Init::Random;
    super::check_memory(&spec, &c.method, &placement).map_err(|e| match random {
        true => Problems::one(format!("model.init = \"random\": {e}")),
        false => Problems::one(format!("{}: {e}", base_dir.join("config.json").display())),
    })?;
    let scheme = quant_scheme(c.model.quantize);
    let mut model = match (random, scheme) {
        (true, _) => model::random(spec, c.seed, kind, placement.device),
        (false, None) => model::load_spec(base_dir, spec, kind, placement.device, model::Held::Dense)?,
        (false, Some(scheme)) => {
            super::quantized::load(base_dir, spec, kind, placement.device, scheme, c.model.quantize_cache)?
        }
    };
    super::check_fits(&model.spec, &c.method)
        .map_err(|msg| Problems::one(format!("{msg} ({})", base_dir.display())))?;
    if !random {
        check_vocab(&Tokenizer::from_dir(&located.tokenizer_dir)?, &located.tokenizer_dir, &model.spec, base_dir)?;
    }
    super::apply(&mut model, &c.method, c.seed, placement.trainable_kind());
    let trainable = super::trainable(&mut model, c.method.kind, placement.trainable_kind());
    // A random base is made dense, then quantized (nothing to cache).
    if let (true, Some(scheme)) = (random, scheme) {
        model.quantize(scheme);
    }
    Ok(Built {
        model,
        trainable,
        base_dir: base_dir.clone(),
        tokenizer_dir: located.tokenizer_dir.clone(),
        config_json: located.config_json.clone(),
        placement,
    })
}

/// The model's quantization scheme for `model.quantize`; `None`: dense.
pub fn quant_scheme(q: crate::config::Quantize) -> Option<crate::model::quant::Scheme> {
    use crate::config::Quantize;
    use crate::model::quant::Scheme;
    match q {
        // "auto" is resolved by the plan before anything is built.
        Quantize::None | Quantize::Auto => None,
        Quantize::Nf4 => Some(Scheme::Nf4),
        Quantize::Nf4Dq => Some(Scheme::Nf4Dq),
        Quantize::Int8 => Some(Scheme::Int8),
    }
}

/// The name a tensor had in checkpoints written before MLP layers had named fields: their linears were
/// numbered in order, gate, up, down for SwiGLU MLPs (`swiglu`) and up, down otherwise.
pub fn legacy_name(name: &str, swiglu: bool) -> Option<String> {
    let order: &[&str] = if swiglu { &["gate", "up", "down"] } else { &["up", "down"] };
    order.iter().enumerate().find_map(|(i, part)| {
        let new = format!(".mlp.{part}.");
        name.contains(&new).then(|| name.replace(&new, &format!(".mlp.{i}.")))
    })
}

/// Whether these tensors belong to a SwiGLU model (only SwiGLU MLPs have a gate).
pub fn is_swiglu<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    names.into_iter().any(|n| n.contains(".mlp.gate."))
}

/// `Err` naming both files when the tokenizer in `tokenizer_dir` makes ids the model in `model_dir` has no
/// embedding for.
pub fn check_vocab(
    tokenizer: &Tokenizer,
    tokenizer_dir: &Path,
    spec: &ModelSpec,
    model_dir: &Path,
) -> Result<(), Problems> {
    if tokenizer.vocab_size() as i64 > spec.vocab_size {
        return Err(Problems::one(format!(
            "{} has {} tokens, but {}'s vocab_size is {}: this tokenizer does not belong to this model; use the model's own tokenizer (model.tokenizer)",
            tokenizer_dir.join("tokenizer.json").display(),
            tokenizer.vocab_size(),
            model_dir.join("config.json").display(),
            spec.vocab_size
        )));
    }
    Ok(())
}

/// Copies the tensors of a checkpoint's `trained.safetensors` into `trainable`.
pub fn load_trained(trainable: &[Trainable], dir: &Path) -> Result<(), Problems> {
    let saved: std::collections::HashMap<String, Tensor> =
        checkpoint::read_tensors(&dir.join(checkpoint::TRAINED))?.into_iter().collect();
    let swiglu = is_swiglu(trainable.iter().map(|t| t.name.as_str()));
    tch::no_grad(|| {
        for t in trainable {
            let old = legacy_name(&t.name, swiglu);
            let src = saved.get(&t.name).or_else(|| saved.get(old.as_ref()?)).ok_or_else(|| {
                Problems::one(format!("{}: has no tensor {}; was it made with another method?", dir.display(), t.name))
            })?;
            if src.size() != t.tensor.size() {
                return Err(Problems::one(format!(
                    "{}: tensor {} has shape {:?}, the model {:?}",
                    dir.display(),
                    t.name,
                    src.size(),
                    t.tensor.size()
                )));
            }
            t.tensor.shallow_clone().copy_(src);
        }
        Ok(())
    })
}
