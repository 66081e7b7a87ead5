//! A config's model, ready to train or use: the base located and loaded (or built with random weights)
//! on the config's device, the method applied, and its trainable tensors marked.
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::Trainable;
use crate::config::{Config, Init, MethodKind, ModelConfig, ModelType};
use crate::device::Placement;
use crate::error::Problems;
use crate::experiment::{checkpoint, provenance, RunInfo};
use crate::model::spec::ModelSpec;
use crate::model::{self, Gpt};
use crate::source::{self, BaseModel};
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

/// Loads the base model of `c` on its device (downloading it on first use) and applies the method.
pub fn build(c: &Config) -> Result<Built, Problems> {
    build_on(c, None)
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

/// [`build`] on the base in `base` when given (a run's recorded base), instead of the one
/// `model.checkpoint` names today.
pub fn build_on(c: &Config, base: Option<&Path>) -> Result<Built, Problems> {
    let placement = Placement::resolve(c.model.device, c.model.precision);
    placement.check_available().map_err(|why| {
        Problems::one(format!("model.device = \"{}\" but {why}; use --set model.device=cpu", c.model.device))
    })?;
    if let (tch::Device::Cpu, Some(limit)) = (placement.device, c.model.device_memory_bytes()) {
        crate::native::allocator::count_cpu_memory(Some(limit));
    }
    let kind = placement.weight_kind();
    let (mut model, base_dir, config_json, tokenizer_dir) = if c.model.init == Init::Random {
        let (json, tokenizer_dir) = random_architecture(&c.model, true)?;
        let spec = ModelSpec::from_json(&json).map_err(|e| Problems::one(format!("[model.architecture]: {e}")))?;
        super::check_memory(&spec, &c.method, &placement)
            .map_err(|e| Problems::one(format!("model.init = \"random\": {e}")))?;
        (model::random(spec, c.seed, kind, placement.device), tokenizer_dir.clone(), json, tokenizer_dir)
    } else {
        let dir = match base {
            Some(dir) => dir.to_path_buf(),
            None => locate_base(&c.model)?,
        };
        let config = dir.join("config.json");
        if let Ok(spec) = ModelSpec::from_file(&config) {
            super::check_memory(&spec, &c.method, &placement)
                .map_err(|e| Problems::one(format!("{}: {e}", config.display())))?;
        }
        let model = model::load(&dir, kind, placement.device)?;
        let json = std::fs::read_to_string(dir.join("config.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
        let tokenizer_dir = match (&c.model.tokenizer, base) {
            (None, Some(dir)) => dir.to_path_buf(),
            _ => source::tokenizer_dir(&c.model, true)?,
        };
        (model, dir, json.unwrap_or_default(), tokenizer_dir)
    };
    super::check_fits(&model.spec, &c.method)
        .map_err(|msg| Problems::one(format!("{msg} ({})", base_dir.display())))?;
    if c.model.init == Init::Pretrained {
        check_vocab(&Tokenizer::from_dir(&tokenizer_dir)?, &tokenizer_dir, &model.spec, &base_dir)?;
    }
    super::apply(&mut model, &c.method, c.seed, placement.trainable_kind());
    let trainable = super::trainable(&mut model, c.method.kind, placement.trainable_kind());
    Ok(Built { model, trainable, base_dir, tokenizer_dir, config_json, placement })
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

/// The base's directory; a completed LoRA run named as `experiment:<name>` that has not exported its
/// model yet (or a LoRA or `full` run named as `experiment:<name>@best`) exports it now, once, into its
/// own run directory.
pub fn locate_base(m: &ModelConfig) -> Result<PathBuf, Problems> {
    let base = BaseModel::parse(m);
    let missing = match base.locate(true) {
        Ok(dir) => return Ok(dir),
        Err(missing) => missing,
    };
    let Some(Ok(run_dir)) = base.experiment_run() else { return Err(missing) };
    let best = base.wants_best();
    let out = run_dir.join(source::exported_model(best));
    let Some(ckpt) = out.parent().filter(|c| c.is_dir()) else { return Err(missing) };
    let config = crate::config::resolve(&run_dir.join("config.toml"), &[])?.config;
    // `full` runs export their final model as they finish, but not their best one.
    let kind = config.method.kind;
    if kind != MethodKind::Lora && !(best && kind == MethodKind::Full) {
        return Err(missing);
    }
    let info = crate::experiment::Experiment::open(&run_dir)?.read_run_info()?;
    let mut built = build_on(&config, recorded_base(&info, config.model.init, false)?.as_deref())?;
    load_trained(&built.trainable, ckpt)?;
    let merged = if kind == MethodKind::Lora { " (LoRA merged)" } else { "" };
    eprintln!("exporting {}{merged} into {}, once, to use it as a base", ckpt.display(), out.display());
    let src = super::export::Source {
        config: &config,
        base_dir: &built.base_dir,
        tokenizer_dir: &built.tokenizer_dir,
        config_json: &built.config_json,
    };
    let format = crate::config::ExportFormat::Hf;
    let written = super::export::export(
        &mut built.model,
        &src,
        format,
        config.export.dtype,
        super::export::DEFAULT_SHARD_BYTES,
        &out,
    );
    // Another run chaining on it at the same time may have exported it first.
    match written {
        Ok(_) => Ok(out),
        Err(_) if out.join("config.json").is_file() => Ok(out),
        Err(e) => Err(e),
    }
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

/// The `config.json` of a model built with random weights (`init = "random"`), and the directory of its
/// tokenizer: from `[model.architecture]` and the tokenizer's vocabulary when `model_type` is set, else the
/// checkpoint's own `config.json` (no weights needed: enough to measure a 7B model's speed offline).
pub fn random_architecture(m: &ModelConfig, allow_download: bool) -> Result<(serde_json::Value, PathBuf), Problems> {
    if m.architecture.model_type.is_some() {
        let dir = source::tokenizer_dir(m, allow_download)?;
        return Ok((architecture_json(m, &Tokenizer::from_dir(&dir)?), dir));
    }
    let dir = BaseModel::parse(m).expected_dir();
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

/// The `config.json` of a model trained from scratch, from `[model.architecture]` and the tokenizer's
/// vocabulary.
fn architecture_json(m: &ModelConfig, tokenizer: &Tokenizer) -> serde_json::Value {
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
    if m.architecture.model_type == Some(ModelType::Falcon) {
        obj.insert("new_decoder_architecture".into(), true.into());
        obj.insert(
            "num_kv_heads".into(),
            obj.get("num_key_value_heads").cloned().unwrap_or(obj["num_attention_heads"].clone()),
        );
        obj.insert("ffn_hidden_size".into(), obj["intermediate_size"].clone());
    }
    json
}
