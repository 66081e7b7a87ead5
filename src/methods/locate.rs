//! Where a config's base model and tokenizer are, and the architecture its `config.json` gives: found
//! once, by the plan, and handed to the build; a run named as the base exported on first use.
use std::path::{Path, PathBuf};

use super::build::{build_located, load_trained, recorded_base, Built};
use super::located::Located;
use crate::config::{Config, Init, MethodKind, ModelConfig, ModelType};
use crate::device::Placement;
use crate::error::Problems;
use crate::model::spec::ModelSpec;
use crate::source::{self, BaseModel};
use crate::tokenizer::Tokenizer;

/// Finds the base of `m`: the `recorded` directory of a run that is resumed or rerun, else the one
/// `model.checkpoint` names, downloaded (or exported from a run) first when `allow_download`.
pub fn locate(m: &ModelConfig, allow_download: bool, recorded: Option<&Path>) -> Result<Located, Problems> {
    if m.init == Init::Random {
        let (json, tokenizer_dir) = random_architecture(m, allow_download)?;
        let spec = ModelSpec::from_json_allowing(&json, m.allow_unknown_config_keys)
            .map_err(|e| Problems::one(format!("[model.architecture]: {e}")))?;
        return Ok(Located { base_dir: tokenizer_dir.clone(), tokenizer_dir, config_json: json, spec });
    }
    let base_dir = match recorded {
        Some(dir) => dir.to_path_buf(),
        None if allow_download => locate_base(m)?,
        None => BaseModel::parse(m).locate(false)?,
    };
    let config = base_dir.join("config.json");
    if !config.is_file() {
        return Err(Problems::one(match recorded.is_some() || allow_download {
            true => format!("{}: not found; is {} a model checkpoint directory?", config.display(), base_dir.display()),
            false => crate::hub::not_downloaded_hint(&m.checkpoint, &base_dir),
        }));
    }
    let (spec, config_json) = ModelSpec::read(&config, m.allow_unknown_config_keys)?;
    let tokenizer_dir = match (&m.tokenizer, recorded) {
        (None, Some(dir)) => dir.to_path_buf(),
        _ => source::tokenizer_dir(m, allow_download)?,
    };
    Ok(Located { base_dir, tokenizer_dir, config_json, spec })
}

/// Loads the base model of `c` on its device (downloading it on first use) and applies the method.
pub fn build(c: &Config) -> Result<Built, Problems> {
    build_on(c, None)
}

/// [`build`] on the base in `base` when given (a run's recorded base), instead of the one
/// `model.checkpoint` names today.
pub fn build_on(c: &Config, base: Option<&Path>) -> Result<Built, Problems> {
    let placement = Placement::resolve(c.model.device, c.model.precision);
    let located = locate(&c.model, true, base)?;
    build_located(c, &located, placement)
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
        // Falcon's own names for them, above; a Falcon config.json has no other.
        obj.remove("num_key_value_heads");
        obj.remove("intermediate_size");
    }
    json
}
