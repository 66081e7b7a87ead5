//! Using a run: its model loaded with the trained tensors of a checkpoint, and its data splits
//! evaluated (loss, perplexity, exact match), the results kept in its run.json for `ftexp report`.
pub mod ask;
mod measures;
mod objective;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use measures::{exact_match, loss_sums, mean_loss, perplexity, ExactMatch, Perplexity};
pub use objective::{supervised_loss, Objective};

use crate::config::{Config, DeviceSetting};
use crate::data::Split;
use crate::device::Placement;
use crate::error::Problems;
use crate::experiment::{checkpoint, utc_now, Evaluation, Experiment};
use crate::methods;
use crate::model::Gpt;
use crate::tokenizer::Tokenizer;

/// A finished (or running) experiment loaded for use: its config, and its base model with the method
/// applied and the trained tensors of `checkpoints/final` (or `step-<step>`) loaded — or, with `base`,
/// the untouched base model (every method computes the base model before its first step). `config` is
/// the run's own, also when `unquantized` built its model on the dense base.
pub struct LoadedRun {
    pub config: Config,
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    pub checkpoint: Option<PathBuf>,
    pub base_dir: PathBuf,
    pub tokenizer_dir: PathBuf,
    /// The base's `config.json`.
    pub config_json: serde_json::Value,
    /// The cache key of the data the run prepared, as its run.json records it.
    pub data_key: Option<String>,
}

/// How to load a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// The checkpoint of this step (or the best one) instead of the final one.
    pub step: Option<checkpoint::Pick>,
    /// The base model alone.
    pub base: bool,
    /// Another device than the one the run trained on.
    pub device: Option<DeviceSetting>,
    /// Use the run's base even when its files changed since the run was trained on it.
    pub allow_changed_base: bool,
    /// The base's weights as its files hold them even when the run quantized them (`model.quantize`):
    /// the trained tensors on the original base, as a PEFT export of the run computes on it.
    pub unquantized: bool,
}

/// Loads the run in `dir`, on exactly the base it was trained on.
pub fn load_run(dir: &Path, o: LoadOptions) -> Result<LoadedRun, Problems> {
    let exp = Experiment::open(dir)?;
    let mut config = crate::config::resolve(&exp.dir.join("config.toml"), &[])?.config;
    if let Some(d) = o.device.filter(|d| *d != DeviceSetting::Auto) {
        config.model.device = d;
    }
    let info = exp.read_run_info()?;
    let base_dir = methods::recorded_base(&info, config.model.init, o.allow_changed_base)?;
    let mut built = if o.unquantized {
        let mut dense = config.clone();
        dense.model.quantize = crate::config::Quantize::None;
        methods::build_on(&dense, base_dir.as_deref())?
    } else {
        methods::build_on(&config, base_dir.as_deref())?
    };
    let (step, base) = (o.step, o.base);
    let checkpoint = if base {
        None
    } else {
        let ckpt = checkpoint_dir(&exp.dir, step)?;
        methods::load_trained(&built.trainable, &ckpt)?;
        Some(ckpt)
    };
    built.model.training = false;
    let tokenizer = Tokenizer::from_dir(&built.tokenizer_dir)?;
    Ok(LoadedRun {
        config,
        model: built.model,
        tokenizer,
        checkpoint,
        base_dir: built.base_dir,
        tokenizer_dir: built.tokenizer_dir,
        config_json: built.config_json,
        data_key: info.data.map(|d| d.cache_key),
    })
}

/// What an evaluation of `run` calls the model it evaluated, and its key in run.json's evaluations.
fn record_names(run: &LoadedRun, req: &EvalRequest) -> (String, String) {
    let dense = req.load.unquantized && methods::quant_scheme(run.config.model.quantize).is_some();
    let mut model = match (&run.checkpoint, req.load.base) {
        (_, true) => "base model".to_string(),
        (Some(c), false) => c.display().to_string(),
        (None, false) => String::new(),
    };
    if dense {
        model.push_str(" on the unquantized base");
    }
    let key =
        format!("{}{}{}", req.split, if req.load.base { "_base" } else { "" }, if dense { "_unquantized" } else { "" });
    (model, key)
}

/// The directory of checkpoint `pick` of the run in `run_dir` (`None`: the final one), or an error
/// naming the checkpoints it has.
pub fn checkpoint_dir(run_dir: &Path, pick: Option<checkpoint::Pick>) -> Result<PathBuf, Problems> {
    let name = pick.map_or("final".to_string(), checkpoint::Pick::dir_name);
    let ckpt = run_dir.join("checkpoints").join(&name);
    if ckpt.join(checkpoint::STATE).is_file() {
        return Ok(ckpt);
    }
    if pick == Some(checkpoint::Pick::Best) {
        return Err(Problems::one(format!(
            "{}: has no best checkpoint; runs keep one with train.save_best = true (or train.early_stopping set)",
            run_dir.display()
        )));
    }
    let have: Vec<String> = checkpoint::list_all(run_dir)
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    Err(Problems::one(format!(
        "{}: no checkpoint {name}; this run has: {}",
        run_dir.display(),
        if have.is_empty() { "none".into() } else { have.join(", ") }
    )))
}

/// What `ftexp eval RUN` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunEval {
    pub run: PathBuf,
    /// The checkpoint evaluated, or `base model`.
    pub model: String,
    pub split: String,
    pub samples: usize,
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    pub exact_match: Option<ExactMatch>,
}

/// What to evaluate of a run.
pub struct EvalRequest {
    pub split: Split,
    /// Also the exact-match rate of greedy answers.
    pub generate: bool,
    pub load: LoadOptions,
}

/// Evaluates a split of the run in `dir` and records the result in its run.json (under the split's
/// name, `<split>_base` for the base model, and `_unquantized` after either for a quantized run's
/// model built on its dense base).
pub fn evaluate_run(dir: &Path, req: &EvalRequest) -> Result<RunEval, Problems> {
    let mut run = load_run(dir, req.load)?;
    let data = crate::data::prepare_for_run(&run.config, run.data_key.as_deref())?;
    let samples = data.split(req.split);
    if samples.is_empty() {
        return Err(Problems::one(format!("{}: the {} split is empty", dir.display(), req.split)));
    }
    data.check_ids(run.model.spec.vocab_size)?;
    let micro = run.config.train.micro_batch_size.max(1) as usize;
    let (loss, em) = crate::error::guard(&format!("evaluating {}", dir.display()), || {
        let loss = mean_loss(&mut run.model, samples, micro, None);
        (loss, req.generate.then(|| exact_match(&run.model, &run.tokenizer, samples, 3)))
    })?;
    let (model, key) = record_names(&run, req);
    let record = Evaluation {
        model: model.clone(),
        samples: samples.len(),
        loss,
        perplexity: loss.map(f64::exp),
        exact_match: em.as_ref().map(|e| e.rate),
        time: utc_now(),
    };
    Experiment::open(dir)?.update(|i| {
        i.evaluations.insert(key, record);
    })?;
    Ok(RunEval {
        run: dir.to_path_buf(),
        model,
        split: req.split.to_string(),
        samples: samples.len(),
        loss,
        perplexity: loss.map(f64::exp),
        exact_match: em,
    })
}

/// A base checkpoint directory's model and tokenizer, placed on `placement`.
pub fn load_checkpoint(dir: &Path, placement: Placement) -> Result<(Gpt, Tokenizer), Problems> {
    let tokenizer = Tokenizer::from_dir(dir)?;
    let model = crate::model::load(dir, placement.weight_kind(), placement.device)?;
    methods::check_vocab(&tokenizer, dir, &model.spec, dir)?;
    Ok((model, tokenizer))
}

/// The perplexity of `model` on the UTF-8 text file `path`, read as one sequence of at most
/// `max_tokens` tokens (the model's context length by default).
pub fn text_perplexity(
    model: &Gpt,
    tokenizer: &Tokenizer,
    path: &Path,
    max_tokens: Option<usize>,
) -> Result<Perplexity, Problems> {
    let body =
        std::fs::read_to_string(path).map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))?;
    let mut ids = tokenizer.encode(&body, true)?;
    ids.truncate(max_tokens.unwrap_or(model.spec.max_position_embeddings as usize));
    if ids.len() < 2 {
        crate::bail_user!("{}: needs at least 2 tokens to measure next-token loss", path.display());
    }
    Ok(perplexity(model, &ids))
}
