//! The run plan: what a resolved config will do, derived without loading weights or touching the network.
use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{DataFormat, Init, MethodConfig, Resolved, KEYS};
use crate::data::SplitSizes;
use crate::device::Placement;
use crate::error::Problems;
use crate::methods::memory::{self, mib_text as bytes, AutoChoice, MemoryPlan};
use crate::methods::{self, random_architecture};
use crate::model::spec::{Family, ModelSpec};
use crate::source::BaseModel;
use crate::train::schedule::step_counts;

#[derive(Debug, Clone, Serialize)]
pub struct Architecture {
    pub family: Family,
    pub model_type: String,
    pub layers: i64,
    pub heads: i64,
    pub query_groups: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub vocab_size: i64,
    /// The base model's parameters.
    pub parameters: i64,
    /// With the method's own tensors added (LoRA matrices, adapter prompts …).
    pub parameters_with_method: i64,
    pub trainable_parameters: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub device: String,
    pub precision: String,
    pub checkpoint_dir: PathBuf,
    pub architecture: Option<Architecture>,
    /// Why the architecture is not shown, and what to run.
    pub architecture_missing: Option<String>,
    pub data: Option<SplitSizes>,
    pub data_missing: Option<String>,
    /// Processes training together (`train.devices`, or the launcher's WORLD_SIZE under torchrun).
    pub world_size: u64,
    /// Each process's device.
    pub rank_devices: Vec<String>,
    /// Samples (or packed rows) per micro-batch: `train.micro_batch_size`, or what `"auto"` chose.
    pub micro_batch_size: u64,
    /// Micro-batches each process runs per optimizer step, with no communication in between.
    pub gradient_accumulation_iters: u64,
    pub epoch_size: Option<u64>,
    pub steps_per_epoch: Option<u64>,
    pub total_steps: Option<u64>,
    pub warmup_steps: Option<u64>,
    pub eval_steps: Vec<u64>,
    pub save_steps: Vec<u64>,
    /// batch_size × max_seq_length: the most tokens one optimizer step can see.
    pub max_tokens_per_step: u64,
    /// The expected peak memory of a training step on each device, by part.
    pub memory: Option<MemoryPlan>,
    /// The memory of the device the run is planned for: `model.device_memory`, else the GPU's or the
    /// machine's own.
    pub device_memory: Option<u64>,
    /// Whether `memory.total` fits in `device_memory`.
    pub fits: Option<bool>,
    /// How `train.micro_batch_size = "auto"` resolves here, with the micro-batches it tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_micro_batch: Option<AutoChoice>,
}

const STEPS_SHOWN: usize = 5;

fn every(interval: u64, total: Option<u64>) -> Vec<u64> {
    let total = total.unwrap_or(u64::MAX);
    (1..).map(|i| i * interval).take_while(|s| *s <= total).take(STEPS_SHOWN).collect()
}

/// The plan of `r`. Errors are the config's run rules (`config::check_run`) and a method that does not
/// fit the model; a model or data set that is not on disk yet is only noted in the plan.
pub fn make(r: &Resolved) -> Result<Plan, Problems> {
    crate::config::check_run(r)?;
    let c = &r.config;
    let placement = Placement::resolve(c.model.device, c.model.precision);
    let base = BaseModel::parse(&c.model);
    let checkpoint_dir = match (&c.model.init, &c.model.tokenizer) {
        (Init::Random, Some(tokenizer)) => PathBuf::from(tokenizer),
        _ => base.expected_dir(),
    };
    let spec = if c.model.init == Init::Random {
        random_architecture(&c.model, false).and_then(|(json, _)| {
            ModelSpec::from_json(&json).map_err(|e| Problems::one(format!("[model.architecture]: {e}")))
        })
    } else {
        base.locate(false).and_then(|dir| match dir.join("config.json") {
            config if config.is_file() => ModelSpec::from_file(&config),
            _ => Err(Problems::one(crate::hub::not_downloaded_hint(&c.model.checkpoint, &dir))),
        })
    };
    if let Ok(spec) = &spec {
        methods::check_fits(spec, &c.method).map_err(Problems::one)?;
        methods::check_memory(spec, &c.method, &placement).map_err(Problems::one)?;
    }
    let device_memory = memory::device_memory(&c.model, &placement);
    let t = &c.train;
    let world = match crate::dist::Rank::from_env()? {
        Some(rank) => rank.world as u64,
        None => t.devices,
    };
    let auto_micro_batch = match &spec {
        Ok(spec) if t.auto_micro_batch() => Some(memory::choose_micro_batch(spec, c, &placement, world, device_memory)),
        _ => None,
    };
    let micro = auto_micro_batch.as_ref().map_or(t.micro_batch_size, |a| a.chosen);
    let memory =
        spec.as_ref().ok().map(|spec| memory::estimate(spec, &c.method, &placement, memory::Shape::worst(c, micro)));
    let (architecture, architecture_missing) = match spec {
        Ok(spec) => (Some(summarize(&spec, &c.method)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (data, data_missing) = match count_records(r) {
        Ok(n) => (Some(crate::data::split_sizes(n, c.data.split)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let counts = data.as_ref().map(|d| step_counts(t, d.train));
    let total_steps = t.max_steps.or(counts.map(|c| c.total));
    let epoch_size = t.epoch_size.or(counts.map(|c| c.epoch_size));
    Ok(Plan {
        device: placement.device_name(),
        precision: placement.precision.to_string(),
        checkpoint_dir,
        architecture,
        architecture_missing,
        data,
        data_missing,
        world_size: world,
        rank_devices: (0..world as usize).map(|rank| rank_device(&placement, rank, world)).collect(),
        micro_batch_size: micro,
        gradient_accumulation_iters: t.batch_size / (micro * world).max(1),
        epoch_size,
        steps_per_epoch: epoch_size.map(|e| (e / t.batch_size).max(1)),
        total_steps,
        warmup_steps: total_steps.map(|s| t.warmup_iters.min(s)),
        eval_steps: every(t.eval_interval, total_steps),
        save_steps: every(t.save_interval, total_steps),
        max_tokens_per_step: t.batch_size * c.data.max_seq_length,
        fits: memory.as_ref().zip(device_memory).map(|(m, available)| m.total <= available),
        memory,
        device_memory,
        auto_micro_batch,
    })
}

/// Rank `rank`'s device: GPU `rank` of this machine on CUDA, else the CPU (`threads` of its cores).
fn rank_device(placement: &Placement, rank: usize, world: u64) -> String {
    if placement.device.is_cuda() {
        return format!("cuda:{rank}");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / world.max(1) as usize).max(1);
    format!("cpu ({threads} thread{})", if threads == 1 { "" } else { "s" })
}

/// The records (or, for a text corpus, the blocks of tokens in the prepared cache) of the data set.
fn count_records(r: &Resolved) -> Result<usize, Problems> {
    let c = &r.config;
    if c.data.format != DataFormat::Text {
        return crate::data::count_records(&c.data);
    }
    match crate::data::cached_stats(c)? {
        Some(stats) => Ok(stats.values().map(|s| s.records).sum()),
        None => Err(Problems::one(format!(
            "{}: a text corpus is counted in blocks of max_seq_length tokens, which needs it tokenized; run `ftexp prepare {}` first",
            c.data.path,
            r.files.last().map_or(String::new(), |f| f.display().to_string())
        ))),
    }
}

fn summarize(spec: &ModelSpec, method: &MethodConfig) -> Architecture {
    let counts = methods::count(spec, method);
    Architecture {
        family: spec.family,
        model_type: spec.model_type.clone(),
        layers: spec.n_layer,
        heads: spec.n_head,
        query_groups: spec.n_query_groups,
        hidden_size: spec.hidden_size,
        intermediate_size: spec.intermediate_size,
        vocab_size: spec.vocab_size,
        parameters: spec.num_params(),
        parameters_with_method: counts.total,
        trainable_parameters: counts.trainable,
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: impl Into<i128>) -> String {
    let s = n.into().to_string();
    let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

/// The resolved config as TOML, each value followed by where it was set.
pub fn render_config(r: &Resolved) -> String {
    let value = toml::Value::try_from(&r.config).expect("config serializes");
    let mut out = String::new();
    let mut table = "";
    for key in KEYS.iter().filter(|k| k.key != "extends") {
        let (head, local) = match key.key.split_once('.') {
            Some((t, rest)) => (t, rest),
            None => ("", key.key),
        };
        if head != table {
            let _ = write!(out, "\n[{head}]\n");
            table = head;
        }
        let found = key.key.split('.').try_fold(&value, |v, part| v.get(part));
        let line = match found {
            Some(v) => format!("{local} = {v}"),
            None => format!("# {local} = (unset)"),
        };
        let _ = writeln!(out, "{line:<44} # {}", r.source(key.key));
    }
    if !r.config.extends.is_empty() {
        out = format!("# extends = {:?}\n{out}", r.config.extends);
    }
    out.trim_start().to_string()
}

pub fn render(r: &Resolved, plan: &Plan) -> String {
    let mut out = render_config(r);
    let opt = |v: Option<u64>| v.map(thousands).unwrap_or_else(|| "unknown (see data above)".into());
    let list = |steps: &[u64], total: Option<u64>| {
        let mut s = steps.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        if steps.len() == STEPS_SHOWN && total.is_none_or(|t| steps[STEPS_SHOWN - 1] < t) {
            s.push_str(", …");
        }
        if total.is_some() {
            s.push_str(if steps.is_empty() { "the last step only" } else { " and the last step" });
        }
        s
    };
    let _ = writeln!(out, "\n# plan");
    let missing_gpu = plan.device.starts_with("cuda") && !tch::Cuda::is_available();
    let note = if missing_gpu { "; no CUDA device on this machine: a run here would fail" } else { "" };
    let _ = writeln!(out, "device:                     {} ({}){note}", plan.device, plan.precision);
    match (&plan.data, &plan.data_missing) {
        (Some(d), _) => {
            let _ = writeln!(
                out,
                "data:                       {} records → train {}, val {}, test {}",
                thousands(d.records as u64),
                thousands(d.train as u64),
                thousands(d.val as u64),
                thousands(d.test as u64)
            );
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "data:                       not read: {why}");
        }
        _ => {}
    }
    let t = &r.config.train;
    write_processes(&mut out, plan, t);
    let samples = plan.epoch_size.map(|e| format!("{} samples", thousands(e)));
    let _ = writeln!(out, "epoch size:                 {}", samples.unwrap_or_else(|| opt(None)));
    let _ = writeln!(out, "optimizer steps per epoch:  {}", opt(plan.steps_per_epoch));
    let how = if t.max_steps.is_some() { "(train.max_steps)".to_string() } else { format!("({} epochs)", t.epochs) };
    let _ = writeln!(out, "optimizer steps in total:   {} {how}", opt(plan.total_steps));
    let _ = writeln!(out, "warm-up steps:              {}", opt(plan.warmup_steps));
    let _ = writeln!(out, "evaluations at steps:       {}", list(&plan.eval_steps, plan.total_steps));
    let _ = writeln!(out, "checkpoints at steps:       {}", list(&plan.save_steps, plan.total_steps));
    let _ = writeln!(out, "tokens per optimizer step:  at most {}", thousands(plan.max_tokens_per_step));
    let _ = writeln!(out, "\n# model ({})", plan.checkpoint_dir.display());
    match (&plan.architecture, &plan.architecture_missing) {
        (Some(a), _) => {
            let _ = writeln!(out, "family:                     {:?} ({})", a.family, a.model_type);
            let _ = writeln!(out, "layers:                     {}", a.layers);
            let _ = writeln!(out, "attention heads:            {} ({} key/value groups)", a.heads, a.query_groups);
            let _ = writeln!(out, "hidden size:                {} (MLP {})", a.hidden_size, a.intermediate_size);
            let _ = writeln!(out, "vocabulary:                 {}", thousands(a.vocab_size));
            let _ = writeln!(out, "parameters:                 {}", thousands(a.parameters));
            let share = 100.0 * a.trainable_parameters as f64 / a.parameters_with_method.max(1) as f64;
            let _ = writeln!(
                out,
                "trainable ({}):{:>width$} of {} ({share:.3}%)",
                r.config.method.kind,
                thousands(a.trainable_parameters),
                thousands(a.parameters_with_method),
                width = 14usize.saturating_sub(r.config.method.kind.as_str().len())
                    + thousands(a.trainable_parameters).len()
            );
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "not read: {why}");
        }
        _ => {}
    }
    if let Some(memory) = &plan.memory {
        write_memory(&mut out, plan, memory, r);
    }
    out
}

/// The expected peak memory by part, and whether it fits the device.
fn write_memory(out: &mut String, plan: &Plan, m: &MemoryPlan, r: &Resolved) {
    let c = &r.config;
    let _ = writeln!(
        out,
        "\n# memory (the peak of one training step on each device: micro-batches of {} × {} positions, every position scored)",
        m.micro_batch_size, m.seq_len
    );
    let trainable =
        if c.method.kind == crate::config::MethodKind::Full { "all weights" } else { "the method's tensors" };
    let layers = m.activations_per_layer.len().max(1) as u64;
    let per_layer = m.activations_per_layer.iter().max().copied().unwrap_or(0);
    let rows = [
        (format!("weights ({})", plan.precision), m.weights),
        (format!("gradients ({trainable})"), m.gradients),
        ("optimizer moments (AdamW, 2 × fp32)".to_string(), m.optimizer),
        (format!("activations ({layers} layers, up to {} each)", bytes(per_layer)), m.activations),
        (format!("LM head (scores over {} tokens)", thousands(c.data.max_seq_length * m.micro_batch_size)), m.lm_head),
        ("working memory (backward pass, optimizer update)".to_string(), m.working),
        ("runtime overhead".to_string(), m.overhead),
    ];
    for (what, n) in rows {
        let _ = writeln!(out, "{:<52}{:>12}", format!("{what}:"), bytes(n));
    }
    let _ = writeln!(out, "{:<52}{:>12}", "total:", bytes(m.total));
    if let Some(a) = &plan.auto_micro_batch {
        let tried: Vec<String> =
            a.weighed.iter().map(|(micro, total)| format!("{micro} → {}", bytes(*total))).collect();
        let verdict = if a.over_budget { "none fits; 1 is tried" } else { "the largest that fits" };
        let _ = writeln!(
            out,
            "micro_batch_size = \"auto\": {} ({verdict}; planned {}{}); a run confirms it with one trial step",
            a.chosen,
            tried.join(", "),
            a.budget.map(|b| format!(" against 90% of the memory, {}", bytes(b))).unwrap_or_default()
        );
    }
    let source = if c.model.device_memory.is_some() { "model.device_memory" } else { "the device's own" };
    let line = match (plan.fits, plan.device_memory) {
        (Some(true), Some(available)) => format!(
            "fits: yes, {:.0}% of {} ({source})",
            100.0 * m.total as f64 / available as f64,
            bytes(available)
        ),
        (Some(false), Some(available)) => format!(
            "fits: NO, {} more than the {} of {} ({source}); lower train.micro_batch_size (or set it to \"auto\") or data.max_seq_length, use a 16-bit model.precision, or use lora instead of full",
            bytes(m.total - available),
            bytes(available),
            plan.device
        ),
        _ => "fits: unknown (the device's memory is unknown; set model.device_memory)".to_string(),
    };
    let _ = writeln!(out, "{line}");
}

pub fn to_json(r: &Resolved, plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "config": r.config,
        "extends": r.config.extends,
        "files": r.files,
        "sources": r.sources,
        "plan": plan,
    })
}

/// The processes of the run and the micro-batches each runs per optimizer step.
fn write_processes(out: &mut String, plan: &Plan, t: &crate::config::TrainConfig) {
    if plan.world_size > 1 {
        let _ = writeln!(
            out,
            "processes:                  {} ({}), gradients added up once per optimizer step",
            plan.world_size,
            plan.rank_devices.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "gradient accumulation:      {} micro-batches of {} per optimizer step{} (batch_size {} ÷ ({} × {} devices))",
        plan.gradient_accumulation_iters,
        plan.micro_batch_size,
        if plan.world_size > 1 { " on each process" } else { "" },
        t.batch_size,
        plan.micro_batch_size,
        plan.world_size
    );
}
