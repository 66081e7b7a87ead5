//! The training loop: micro-batches with gradient accumulation, AdamW with warm-up and a schedule,
//! evaluation and checkpoints at the configured steps, and a run directory that can be resumed.
pub mod batches;
pub mod bench;
pub mod optimizer;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::config::Config;
use crate::data::Sample;
use crate::error::Problems;
use crate::experiment::checkpoint::{self, TrainerState};
use crate::experiment::metrics::{Metrics, Row};
use crate::experiment::{self, Experiment};
use crate::model::Gpt;
use crate::{methods, plan};
use batches::Order;
use optimizer::{learning_rate, AdamW};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM finish the current step, save a checkpoint and mark the run interrupted.
fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// The model of a config, with its method applied and its trainable tensors marked.
pub struct Prepared {
    pub model: Gpt,
    pub trainable: Vec<(String, Tensor)>,
    /// Where the base came from (the tokenizer's directory for a model trained from scratch).
    pub base_dir: PathBuf,
    pub tokenizer_dir: PathBuf,
    /// The base's `config.json`, written again with an exported model.
    pub config_json: serde_json::Value,
    pub precision: String,
}

/// Loads the base model of `c` on its device and applies the method.
pub fn build_model(c: &Config) -> Result<Prepared, Problems> {
    let (device, precision) = plan::resolve_device(&c.model.device, &c.model.precision);
    if device.is_cuda() && !tch::Cuda::is_available() {
        return Err(Problems::one(format!(
            "model.device = \"{}\" but no CUDA device is available on this machine; use --set model.device=cpu",
            c.model.device
        )));
    }
    let compute = crate::model::weight_kind(&precision);
    let (mut model, base_dir, config_json, tokenizer_dir) = if c.model.init == "random" {
        let (json, tokenizer_dir) = crate::model::random_architecture(&c.model)?;
        let spec = crate::model::spec::ModelSpec::from_json(&json)
            .map_err(|e| Problems::one(format!("[model.architecture]: {e}")))?;
        let weights = crate::model::random_weights(&spec, c.seed, compute, device);
        (tch::no_grad(|| Gpt::from_weights(spec, weights)), tokenizer_dir.clone(), json, tokenizer_dir)
    } else {
        let dir = crate::model::base_dir(&c.model)?;
        let model = crate::model::load(&dir, compute, device)?;
        let json = std::fs::read_to_string(dir.join("config.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
        (model, dir, json.unwrap_or_default(), crate::model::tokenizer_dir(&c.model)?)
    };
    let m = &c.method;
    if m.kind.starts_with("adapter") && m.adapter_start_layer as i64 >= model.spec.n_layer {
        return Err(Problems::one(format!(
            "method.adapter_start_layer = {} but {} has {} layers (0 to {}), so no layer would get an adapter; lower it",
            m.adapter_start_layer,
            base_dir.display(),
            model.spec.n_layer,
            model.spec.n_layer - 1
        )));
    }
    if m.kind == "lora"
        && !(m.lora_query || m.lora_key || m.lora_value || m.lora_projection || m.lora_mlp || m.lora_head)
    {
        return Err(Problems::one("method.kind = \"lora\" but every lora_* target is false; enable at least one, e.g. method.lora_query = true"));
    }
    let trainable_kind = if precision == "bf16-mixed" { Kind::Float } else { compute };
    methods::apply(&mut model, &c.method, c.seed, trainable_kind);
    let trainable = methods::trainable(&mut model, &c.method.kind, trainable_kind);
    Ok(Prepared { model, trainable, base_dir, tokenizer_dir, config_json, precision })
}

/// Copies the tensors of a checkpoint's `trained.safetensors` into `trainable`.
pub fn load_trained(trainable: &[(String, Tensor)], dir: &Path) -> Result<(), Problems> {
    let saved: std::collections::HashMap<String, Tensor> =
        checkpoint::read_tensors(&dir.join(checkpoint::TRAINED))?.into_iter().collect();
    tch::no_grad(|| {
        for (name, t) in trainable {
            let src = saved.get(name).ok_or_else(|| {
                Problems::one(format!("{}: has no tensor {name}; was it made with another method?", dir.display()))
            })?;
            if src.size() != t.size() {
                return Err(Problems::one(format!(
                    "{}: tensor {name} has shape {:?}, the model {:?}",
                    dir.display(),
                    src.size(),
                    t.size()
                )));
            }
            let mut t = t.shallow_clone();
            t.copy_(src);
        }
        Ok(())
    })
}

/// A finished (or running) experiment loaded for use: its config, and its base model with the method
/// applied and the trained tensors of `checkpoints/final` (or `step-<step>`) loaded — or, with `base`,
/// the untouched base model (every method computes the base model before its first step).
pub struct LoadedRun {
    pub config: Config,
    pub model: Gpt,
    pub tokenizer: crate::model::Tokenizer,
    pub checkpoint: Option<PathBuf>,
}

pub fn load_run(dir: &Path, step: Option<u64>, base: bool, device: Option<&str>) -> Result<LoadedRun, Problems> {
    let exp = Experiment::open(dir)?;
    let mut config = crate::config::resolve(&exp.dir.join("config.toml"), &[])?.config;
    if let Some(d) = device.filter(|d| *d != "auto") {
        config.model.device = d.to_string();
    }
    let mut built = build_model(&config)?;
    let checkpoint = if base {
        None
    } else {
        let name = step.map_or("final".to_string(), checkpoint::dir_name);
        let ckpt = exp.dir.join("checkpoints").join(&name);
        if !ckpt.join(checkpoint::STATE).is_file() {
            let have: Vec<String> = checkpoint::list(&exp.dir)
                .iter()
                .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
                .collect();
            return Err(Problems::one(format!(
                "{}: no checkpoint {name}; this run has: {}",
                exp.dir.display(),
                if have.is_empty() { "none".into() } else { have.join(", ") }
            )));
        }
        load_trained(&built.trainable, &ckpt)?;
        Some(ckpt)
    };
    built.model.training = false;
    let tokenizer = crate::model::Tokenizer::from_dir(&built.tokenizer_dir)?;
    Ok(LoadedRun { config, model: built.model, tokenizer, checkpoint })
}

/// Mean loss over supervised tokens of `samples` in micro-batches of `micro`, at most `max_batches`.
pub fn mean_loss(model: &mut Gpt, samples: &[Sample], micro: usize, max_batches: Option<usize>) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let was = std::mem::replace(&mut model.training, false);
    let (mut sum, mut count) = (Tensor::zeros([], (Kind::Float, model.device())), 0i64);
    tch::no_grad(|| {
        for chunk in samples.chunks(micro).take(max_batches.unwrap_or(usize::MAX)) {
            let refs: Vec<&Sample> = chunk.iter().collect();
            let batch = batches::make(&refs, model.device());
            sum += supervised_loss(model, &batch, tch::Reduction::Sum);
            count += batch.supervised;
        }
    });
    model.training = was;
    (count > 0).then(|| sum.double_value(&[]) / count as f64)
}

/// Dropout masks depend on the run's seed and the step alone, so a resumed run (and `ftexp bench`)
/// draws the same ones.
pub fn seed_step(seed: u64, step: u64) {
    tch::manual_seed((seed as i64).wrapping_mul(1_000_003).wrapping_add(step as i64));
}

/// Forward and backward passes over the micro-batches of one optimizer step, their gradients added up;
/// returns the step's mean loss per supervised token, left on the device (reading it is a host sync).
pub fn accumulate_gradients(model: &mut Gpt, step_batches: &[batches::Batch]) -> Tensor {
    model.training = true;
    let supervised: i64 = step_batches.iter().map(|b| b.supervised).sum::<i64>().max(1);
    let mut step_loss = Tensor::zeros([], (Kind::Float, model.device()));
    for batch in step_batches {
        let loss = supervised_loss(model, batch, tch::Reduction::Sum) / supervised as f64;
        loss.backward();
        step_loss += loss.detach();
    }
    step_loss
}

/// Cross entropy of the supervised positions only: the LM head never sees prompt or padding positions.
fn supervised_loss(model: &Gpt, batch: &batches::Batch, reduction: tch::Reduction) -> Tensor {
    let hidden = model.hidden(&batch.inputs, None);
    let width = hidden.size()[2];
    let picked = hidden.view([-1, width]).index_select(0, &batch.positions);
    let logits = model.logits(&picked).to_kind(Kind::Float);
    logits.cross_entropy_loss::<Tensor>(&batch.targets, None, reduction, -100, 0.0)
}

fn sha256(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(format!("{:x}", hasher.finalize()))
}

fn base_hashes(dir: &Path) -> serde_json::Value {
    let mut files = serde_json::Map::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") || n.ends_with(".safetensors"))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for n in names {
        if let Some(h) = sha256(&dir.join(&n)) {
            files.insert(n, h.into());
        }
    }
    files.into()
}

/// Peak resident memory of this process in MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// How to start: a new version, or continuing a run directory from its newest checkpoint.
pub enum Start {
    New { experiments_root: PathBuf },
    Resume { run_dir: PathBuf },
}

/// Runs the experiment; returns its directory. Errors leave the run marked `failed`.
pub fn run(config: &Config, start: Start) -> anyhow::Result<PathBuf> {
    let c = config;
    if c.train.devices > 1 {
        crate::bail_user!(
            "train.devices = {}: training on several devices is not supported yet; set train.devices = 1",
            c.train.devices
        );
    }
    if c.model.init == "random" && c.method.kind != "full" {
        crate::bail_user!(
            "method.kind is \"{}\" but model.init = \"random\": a randomly initialised model must train every weight; use method.kind = \"full\" (`ftexp bench` measures other methods on random weights)",
            c.method.kind
        );
    }
    let data = crate::data::prepare_for(c)?;
    let train = data.split("train");
    if train.is_empty() {
        crate::bail_user!("{}: no training samples left after preparation; see `ftexp prepare`", c.data.path);
    }
    let mut built = build_model(c)?;
    let mut opt = AdamW::new(&built.trainable, methods::decays);
    let (exp, state) = match start {
        Start::New { experiments_root } => {
            let exp = experiment::allocate(&experiments_root, &c.name)?;
            exp.start(c, &plan::device_name(built.model.device()))?;
            (exp, TrainerState { method: c.method.kind.clone(), ..TrainerState::default() })
        }
        Start::Resume { run_dir } => {
            let exp = Experiment::open(&run_dir)?;
            let Some(ckpt) = checkpoint::list(&run_dir).pop() else {
                crate::bail_user!("{}: has no complete checkpoint to resume from; start a new run", run_dir.display());
            };
            load_trained(&built.trainable, &ckpt)?;
            opt.load_state(checkpoint::read_tensors(&ckpt.join(checkpoint::OPTIMIZER))?)
                .map_err(|e| Problems::one(format!("{}: {e}", ckpt.display())))?;
            let state = checkpoint::read_state(&ckpt)?;
            exp.update(|i| {
                i.status = "running".into();
                i.end_time = None;
                i.extra.insert("resumed_from".into(), ckpt.display().to_string().into());
            })?;
            println!("resuming {} from {} (step {})", exp.dir.display(), ckpt.display(), state.step);
            (exp, state)
        }
    };
    let counts = methods::count(&built.model.spec, &c.method);
    exp.update(|i| {
        let sizes: serde_json::Map<String, serde_json::Value> =
            data.stats.iter().map(|(k, s)| (k.clone(), s.samples.into())).collect();
        i.extra.insert("precision".into(), built.precision.clone().into());
        i.extra.insert(
            "data".into(),
            serde_json::json!({"path": c.data.path, "cache_key": data.key, "split_sizes": sizes}),
        );
        i.extra.insert(
            "base".into(),
            serde_json::json!({"checkpoint": c.model.checkpoint, "dir": built.base_dir, "files": base_hashes(&built.base_dir)}),
        );
        i.extra.insert("parameters".into(), serde_json::json!(counts));
    })?;
    catch_interrupts();
    match train_loop(c, &mut built, &mut opt, &exp, state, &data) {
        Ok(status) => {
            exp.finish(status)?;
            if status == "interrupted" {
                crate::bail_user!(
                    "interrupted: checkpoint saved; continue with `ftexp run CONFIG --resume {}`",
                    exp.dir.display()
                );
            }
            Ok(exp.dir.clone())
        }
        Err(e) => {
            let _ = exp.finish("failed");
            Err(e)
        }
    }
}

fn train_loop(
    c: &Config,
    built: &mut Prepared,
    opt: &mut AdamW,
    exp: &Experiment,
    mut state: TrainerState,
    data: &crate::data::Prepared,
) -> anyhow::Result<&'static str> {
    let t = &c.train;
    let train = data.split("train");
    let val = data.split("val");
    let micro = t.micro_batch_size as usize;
    let (_, _, total) = plan::step_counts(t, train.len());
    let warmup = t.warmup_iters.min(total);
    let mut metrics = Metrics::open(&exp.dir, (state.step > 0).then_some(state.step))?;
    let title = format!("{} v{} · {}", exp.name, exp.version, c.method.kind);
    let epoch_size = t.epoch_size.unwrap_or(train.len() as u64).max(1);
    let mut order = Order::new(c.seed, train.len());
    let model = &mut built.model;
    let device = model.device();
    let clock = Instant::now();
    let elapsed_before = state.elapsed_s;
    let tokens_before = state.tokens;
    let bar = progress(total, state.step);
    let mut last_good: Option<PathBuf> = checkpoint::list(&exp.dir).pop();

    while state.step < total {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bar.abandon();
            save(exp, &checkpoint::dir_name(state.step), &built.trainable, opt, &state)?;
            return Ok("interrupted");
        }
        let step = state.step + 1;
        seed_step(c.seed, step);
        let step_batches = batches::for_step(train, &mut order, &mut state.samples_seen, t, device);
        let step_loss = accumulate_gradients(model, &step_batches);
        state.iter += step_batches.len() as u64;
        state.tokens += step_batches.iter().map(|b| b.real_tokens as u64).sum::<u64>();
        let lr = learning_rate(step, t.learning_rate, t.min_lr, warmup, total, &t.lr_schedule);
        opt.update(lr, t);
        state.step = step;
        state.elapsed_s = elapsed_before + clock.elapsed().as_secs_f64();

        let is_eval = step.is_multiple_of(t.eval_interval) && !val.is_empty();
        let is_save = step.is_multiple_of(t.save_interval) && step < total;
        let is_log = step.is_multiple_of(t.log_interval) || step == total || is_eval || is_save;
        if !is_log {
            continue;
        }
        let loss = step_loss.double_value(&[]);
        if !loss.is_finite() {
            bar.abandon();
            let kept = last_good.as_ref().map_or("no checkpoint was saved yet".to_string(), |p| {
                format!("the last good checkpoint is {}", p.display())
            });
            crate::bail_user!(
                "step {step}: the training loss became {loss}; lower train.learning_rate (now {}) or raise warmup_iters; {kept}",
                t.learning_rate
            );
        }
        let val_loss = if is_eval { mean_loss(model, val, micro, Some(t.eval_iters as usize)) } else { None };
        let tokens_per_s = (state.tokens - tokens_before) as f64 / clock.elapsed().as_secs_f64().max(1e-9);
        metrics.push(Row {
            step,
            epoch: state.samples_seen as f64 / epoch_size as f64,
            iter: state.iter,
            tokens: state.tokens,
            lr,
            train_loss: Some(loss),
            val_loss,
            tokens_per_s,
            elapsed_s: state.elapsed_s,
        })?;
        let val_text = val_loss.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        let line = format!("step {step}/{total} loss {loss:.4}{val_text} lr {lr:.2e} {tokens_per_s:.0} tok/s");
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.set_position(step);
            bar.set_message(line);
        }
        if is_eval {
            experiment::plot::loss_png(&exp.dir.join("loss.png"), &title, &metrics.rows)?;
        }
        if is_save {
            last_good = Some(save(exp, &checkpoint::dir_name(step), &built.trainable, opt, &state)?);
        }
    }
    bar.finish_and_clear();
    let micro_eval = micro.max(1);
    let final_val = mean_loss(model, val, micro_eval, None);
    let final_test = mean_loss(model, data.split("test"), micro_eval, None);
    let last_row = metrics.rows.last().cloned();
    if let (Some(v), Some(mut row)) = (final_val, last_row.clone()) {
        row.val_loss = Some(v);
        metrics.push(row)?;
    }
    experiment::plot::loss_png(&exp.dir.join("loss.png"), &title, &metrics.rows)?;
    let final_dir = save(exp, "final", &built.trainable, opt, &state)?;
    if c.method.kind == "full" {
        export_model(built, &final_dir.join("model"))?;
    }
    let tokens_per_s = (state.tokens - tokens_before) as f64 / clock.elapsed().as_secs_f64().max(1e-9);
    let results = serde_json::json!({
        "steps": state.step,
        "final_train_loss": last_row.and_then(|r| r.train_loss),
        "final_val_loss": final_val,
        "val_perplexity": final_val.map(f64::exp),
        "test_loss": final_test,
        "test_perplexity": final_test.map(f64::exp),
        "tokens": state.tokens,
        "tokens_per_s": tokens_per_s,
        "peak_rss_mib": peak_rss_mib(),
        "train_seconds": state.elapsed_s,
    });
    exp.update(|i| {
        i.extra.insert("results".into(), results.clone());
    })?;
    println!(
        "done: {} — val loss {} test loss {} ({:.0} tokens/s)",
        exp.dir.display(),
        final_val.map_or("-".into(), |v| format!("{v:.4}")),
        final_test.map_or("-".into(), |v| format!("{v:.4}")),
        tokens_per_s
    );
    Ok("completed")
}

/// Writes the trained model as a hub-layout checkpoint (config.json, model.safetensors, tokenizer
/// files), usable as `--checkpoint` and as `model.checkpoint = "experiment:<name>"`.
fn export_model(built: &Prepared, dir: &Path) -> Result<(), Problems> {
    let fail = |e: String| Problems::one(format!("{}: cannot export the model: {e}", dir.display()));
    let tmp = dir.with_file_name(".model.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail(e.to_string()))?;
    let weights: Vec<(String, Tensor)> =
        built.model.hf_weights().into_iter().map(|(n, t)| (n, t.detach().contiguous())).collect();
    Tensor::write_safetensors(&weights, tmp.join("model.safetensors")).map_err(|e| fail(e.to_string()))?;
    let config = serde_json::to_string_pretty(&built.config_json).expect("json");
    std::fs::write(tmp.join("config.json"), config).map_err(|e| fail(e.to_string()))?;
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"] {
        let src = built.tokenizer_dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, tmp.join(name)).map_err(|e| fail(e.to_string()))?;
        }
    }
    std::fs::rename(&tmp, dir).map_err(|e| fail(e.to_string()))
}

fn save(
    exp: &Experiment,
    name: &str,
    trainable: &[(String, Tensor)],
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf, Problems> {
    checkpoint::save(&exp.dir, name, trainable, &opt.state(), state)
}

fn progress(total: u64, done: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total).with_position(done);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").expect("a valid template"),
    );
    bar
}
