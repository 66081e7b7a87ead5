//! The run plan: everything a run will do, derived from a resolved config before any weight is loaded
//! (placement and processes, the base located once, micro-batch and accumulation, steps and learning
//! rate schedule, the memory budget, and one slot per memory or scale strategy). `ftexp plan` prints
//! it, `train::run` consumes it, and run.json records it.
mod advice;
mod render;
pub mod steps;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{Config, DataFormat, Init, MethodConfig, Quantize, Resolved, Switch};
use crate::data::prepare::SplitStats;
use crate::data::SplitSizes;
use crate::device::Placement;
use crate::error::Problems;
use crate::methods::memory::{self, AutoChoice, MemoryPlan};
use crate::methods::{self, Located};
use crate::model::spec::{Family, ModelSpec};
use crate::source::BaseModel;

pub use advice::Advice;
pub use render::{render, render_config, thousands, to_json};
use steps::{step_counts, Schedule};

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
    /// Sliding-window attention: the window, in positions, and how many layers slide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<(i64, usize)>,
    /// `config.json` keys ftexp does not implement, ignored because `model.allow_unknown_config_keys`
    /// is on (`key = value`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_config_keys: Vec<String>,
    /// `config.json` keys of the family that ftexp skips as harmless: not about the computation, or at
    /// a value whose computation is ftexp's (`key = value`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_config_keys: Vec<String>,
}

/// How the run keeps its memory down. Each slot names the strategy the run uses (quantization and
/// sharding exist only in their plain form so far).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Strategies {
    /// Each block recomputes its forward in the backward pass instead of keeping its activations.
    pub activation_checkpointing: bool,
    /// Why checkpointing is on or off when the config did not say (`"auto"`, or a quantized base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_checkpointing_reason: Option<String>,
    /// How the frozen base's layer weights are held: `none` (in the precision's dtype), `nf4`,
    /// `nf4-dq` or `int8`.
    pub quantization: &'static str,
    /// Why `model.quantize = "auto"` chose what it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization_reason: Option<String>,
    /// What each process holds of the trained state: `none` (a full replica each).
    pub sharding: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub device: String,
    pub precision: String,
    pub checkpoint_dir: PathBuf,
    /// The base and its tokenizer, found once (absent until downloaded: see `architecture_missing`).
    pub base: Option<Located>,
    pub architecture: Option<Architecture>,
    /// Why the architecture is not shown, and what to run.
    pub architecture_missing: Option<String>,
    pub data: Option<SplitSizes>,
    /// Whether `data` counts the prepared samples (the cache exists; long samples dropped) rather than
    /// the records of the file.
    pub data_prepared: bool,
    pub data_missing: Option<String>,
    /// Processes training together (`train.devices`, or the launcher's WORLD_SIZE under torchrun).
    pub world_size: u64,
    /// Each process's device.
    pub rank_devices: Vec<String>,
    /// Processes on this machine (`train.devices`, or the launcher's LOCAL_WORLD_SIZE): on the CPU
    /// they share its memory and cores.
    pub local_processes: u64,
    /// Samples (or packed rows) per micro-batch: `train.micro_batch_size`, or what `"auto"` chose.
    pub micro_batch_size: u64,
    /// Micro-batches each process runs per optimizer step, with no communication in between.
    pub gradient_accumulation_iters: u64,
    pub epoch_size: Option<u64>,
    pub steps_per_epoch: Option<u64>,
    pub total_steps: Option<u64>,
    pub warmup_steps: Option<u64>,
    /// The learning rate of every step (known once the step count is).
    pub schedule: Option<Schedule>,
    pub eval_steps: Vec<u64>,
    pub save_steps: Vec<u64>,
    /// batch_size × max_seq_length: the most tokens one optimizer step can see.
    pub max_tokens_per_step: u64,
    /// The expected peak memory of a training step on each device, by part.
    pub memory: Option<MemoryPlan>,
    /// The memory of the device the run is planned for: `model.device_memory`, else the GPU's or the
    /// machine's own.
    pub device_memory: Option<u64>,
    /// On the CPU with several processes: all of theirs together (`memory.total` each), which is what
    /// must fit the machine's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes_memory: Option<u64>,
    /// Whether `memory.total` (or `processes_memory`) fits in `device_memory`.
    pub fits: Option<bool>,
    /// Why a run of this plan on this machine is refused, each with what to change (the plan still
    /// shows everything else).
    pub refusals: Vec<String>,
    /// How `train.micro_batch_size = "auto"` resolves here, with the micro-batches it tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_micro_batch: Option<AutoChoice>,
    pub strategies: Strategies,
    /// When the run does not fit: settings that would, each planned with its total, the cheapest in
    /// speed first.
    pub advice: Vec<Advice>,
    /// A plan weighed as advice (which gives none itself).
    #[serde(skip)]
    weighing: bool,
    /// The resolved config the plan is of (printed beside the plan, not inside it).
    #[serde(skip)]
    pub config: Config,
    #[serde(skip)]
    pub placement: Placement,
}

impl Strategies {
    /// The strategies `c` asks for (`"auto"` checkpointing still off: the memory plan chooses it).
    fn of(c: &Config) -> Strategies {
        let quantized = !matches!(c.model.quantize, Quantize::None | Quantize::Auto);
        let asked = c.train.activation_checkpointing == Switch::On;
        Strategies {
            // A quantized base is dequantized one block at a time: only with checkpointing.
            activation_checkpointing: asked || quantized,
            activation_checkpointing_reason: (quantized && !asked)
                .then(|| "on: model.quantize dequantizes the base one block at a time, which needs it".to_string()),
            quantization: c.model.quantize.as_str(),
            quantization_reason: None,
            sharding: "none",
        }
    }
}

/// How the plan finds the base: `ftexp plan` only looks; a run downloads it (or exports it from the
/// run it names) and takes a resumed or rerun run's recorded base directory.
#[derive(Debug, Clone, Default)]
pub struct Find {
    pub download: bool,
    pub recorded_base: Option<PathBuf>,
    /// For `ftexp bench`, which measures any method on random weights: the run rules do not apply.
    pub bench: bool,
}

const STEPS_SHOWN: usize = 5;

fn every(interval: u64, total: Option<u64>) -> Vec<u64> {
    let total = total.unwrap_or(u64::MAX);
    (1..).map(|i| i * interval).take_while(|s| *s <= total).take(STEPS_SHOWN).collect()
}

/// The plan of `r`, the base only looked for. Errors are the config's run rules
/// (`config::check_run`) and a method that does not fit the model; a model or data set that is not on
/// disk yet is only noted in the plan, and so is anything that stops a run here (`refusals`) or does
/// not fit (`fits`): the plan always renders.
pub fn make(r: &Resolved) -> Result<RunPlan, Problems> {
    make_with(r, &Find::default())
}

/// [`make`], finding the base as `find` says.
pub fn make_with(r: &Resolved, find: &Find) -> Result<RunPlan, Problems> {
    if !find.bench {
        crate::config::check_run(r)?;
    }
    let c = &r.config;
    let placement = Placement::resolve(c.model.device, c.model.precision);
    let checkpoint_dir = match (&c.model.init, &c.model.tokenizer) {
        (Init::Random, Some(tokenizer)) => PathBuf::from(tokenizer),
        _ => BaseModel::parse(&c.model).expected_dir(),
    };
    let base = methods::locate(&c.model, find.download, find.recorded_base.as_deref());
    let mut refusals = Vec::new();
    if let Ok(located) = &base {
        methods::check_fits(&located.spec, &c.method).map_err(Problems::one)?;
        if let Err(why) = methods::check_memory(&located.spec, &c.method, &placement) {
            refusals.push(format!("on this machine: {why}"));
        }
    }
    let (world, local) = match crate::dist::Rank::from_env()? {
        Some(rank) => (rank.world as u64, rank.local_world as u64),
        None => (c.train.devices, c.train.devices),
    };
    refusals.extend(oversubscribed(c, &placement, local));
    let (data, data_prepared, data_missing) = match count_samples(r) {
        Ok((sizes, prepared)) => (Some(sizes), prepared, None),
        Err(e) => (None, false, Some(e.to_string())),
    };
    let mut plan = RunPlan {
        device: placement.device_name(),
        precision: placement.precision.to_string(),
        checkpoint_dir,
        base: None,
        architecture: None,
        architecture_missing: None,
        data,
        data_prepared,
        data_missing,
        world_size: world,
        rank_devices: (0..world as usize).map(|rank| rank_device(&placement, rank, local)).collect(),
        local_processes: local,
        micro_batch_size: c.train.micro_batch_size,
        gradient_accumulation_iters: 0,
        epoch_size: None,
        steps_per_epoch: None,
        total_steps: None,
        warmup_steps: None,
        schedule: None,
        eval_steps: Vec::new(),
        save_steps: Vec::new(),
        max_tokens_per_step: c.train.batch_size * c.data.max_seq_length,
        memory: None,
        device_memory: memory::device_memory(&c.model, &placement),
        processes_memory: None,
        fits: None,
        refusals,
        auto_micro_batch: None,
        strategies: Strategies::of(c),
        advice: Vec::new(),
        weighing: false,
        config: c.clone(),
        placement,
    };
    match base {
        Ok(located) => plan = plan.with_base(located),
        Err(e) => {
            plan.architecture_missing = Some(e.to_string());
            plan.plan_memory();
        }
    }
    plan.plan_steps();
    Ok(plan)
}

/// The split sizes of prepared data (`stats` by split): its records, and each split's samples.
pub fn prepared_sizes(stats: &BTreeMap<String, SplitStats>) -> SplitSizes {
    let samples = |split: &str| stats.get(split).map_or(0, |s| s.samples);
    let records = stats.values().map(|s| s.records).sum();
    SplitSizes { records, train: samples("train"), val: samples("val"), test: samples("test") }
}

impl RunPlan {
    /// The architecture of the base, when it was found.
    pub fn spec(&self) -> Option<&ModelSpec> {
        self.base.as_ref().map(|b| &b.spec)
    }

    /// The same plan on the base `located` (when it had none: not downloaded when the plan was made).
    pub fn with_base(mut self, located: Located) -> RunPlan {
        if self.base.is_some() {
            return self;
        }
        self.architecture = Some(summarize(&located.spec, &self.config.method));
        (self.base, self.architecture_missing) = (Some(located), None);
        self.plan_memory();
        self
    }

    /// The same plan with the step counts of the data as prepared (`sizes`), for a run whose data the
    /// plan could only count in records.
    pub fn with_prepared(mut self, sizes: SplitSizes) -> RunPlan {
        self.data = Some(sizes);
        (self.data_prepared, self.data_missing) = (true, None);
        self.plan_steps();
        self
    }

    /// The same plan with the micro-batch a run settled on (`"auto"` confirmed by a trial step).
    pub fn with_micro_batch(mut self, micro: u64) -> RunPlan {
        self.micro_batch_size = micro;
        self.plan_memory();
        self
    }

    /// `Err` with the plan's refusals, for a run (or `ftexp plan --check`) to stop on.
    pub fn refuse(&self) -> Result<(), Problems> {
        match self.refusals.is_empty() {
            true => Ok(()),
            false => Err(Problems::many(self.refusals.clone())),
        }
    }

    /// The worst micro-batch of `micro` rows this plan's run can meet, with its strategies.
    pub fn shape(&self, micro: u64) -> memory::Shape {
        memory::Shape {
            checkpointed: self.strategies.activation_checkpointing,
            quantized: methods::quant_scheme(self.config.model.quantize),
            ..memory::Shape::worst(&self.config, micro)
        }
    }

    /// Processes sharing the planned device's memory: on the CPU, all of this machine's; on a GPU, one.
    fn sharing(&self) -> u64 {
        if self.placement.device.is_cuda() {
            1
        } else {
            self.local_processes.max(1)
        }
    }

    fn plan_memory(&mut self) {
        if self.config.model.quantize == Quantize::Auto {
            self.choose_quantize();
        }
        if self.config.train.activation_checkpointing == Switch::Auto
            && self.strategies.activation_checkpointing_reason.is_none()
        {
            self.choose_checkpointing();
        }
        let c = &self.config;
        let sharing = self.sharing();
        let each = self.device_memory.map(|m| m / sharing);
        if let (Some(spec), true, None) = (self.spec(), c.train.auto_micro_batch(), &self.auto_micro_batch) {
            let like = self.shape(1);
            let choice = memory::choose_micro_batch(spec, c, &self.placement, self.world_size, each, like);
            self.micro_batch_size = choice.chosen;
            self.auto_micro_batch = Some(choice);
        }
        let micro = self.micro_batch_size;
        let shape = self.shape(micro);
        let c = &self.config;
        self.memory = self.spec().map(|spec| memory::estimate(spec, &c.method, &self.placement, shape));
        self.processes_memory = self.memory.as_ref().filter(|_| sharing > 1).map(|m| m.total.saturating_mul(sharing));
        let needed = self.processes_memory.or(self.memory.as_ref().map(|m| m.total));
        self.fits = needed.zip(self.device_memory).map(|(needed, available)| needed <= available);
        self.gradient_accumulation_iters = c.train.batch_size / (micro * self.world_size).max(1);
        self.advise();
        self.refuse_over_plan();
    }

    /// `model.quantize = "auto"`: the first of none, int8 and nf4 whose plan fits 90% of the device's
    /// memory (none for `full`, or when the memory or the base is unknown); the choice replaces
    /// `"auto"` in the config the run builds from, and the plan says why.
    fn choose_quantize(&mut self) {
        let choices: &[Quantize] = match self.config.method.kind {
            crate::config::MethodKind::Full => &[],
            _ => &[Quantize::None, Quantize::Int8, Quantize::Nf4],
        };
        if self.spec().is_none() {
            return; // chosen once the base is found
        }
        let budget = self.device_memory.map(|m| (m / self.sharing()) as f64 * memory::AUTO_SHARE);
        let mut weighed = Vec::new();
        let mut chosen = None;
        if let Some(budget) = budget {
            for &q in choices {
                let mut trial = self.clone();
                (trial.weighing, trial.config.model.quantize) = (true, q);
                trial.strategies = Strategies::of(&trial.config);
                trial.plan_memory();
                let needed = trial.needed().unwrap_or(u64::MAX);
                weighed.push(format!("{q} → {}", memory::mib_text(needed)));
                if needed as f64 <= budget {
                    chosen = Some(q);
                    break;
                }
            }
        }
        let why = match (chosen, budget, choices.is_empty()) {
            (_, _, true) => "none: method.kind = \"full\" trains every weight".to_string(),
            (_, None, _) => "none: the device's memory is unknown".to_string(),
            (Some(q), Some(b), _) => format!(
                "{q}: the first that fits 90% of the memory, {} ({})",
                memory::mib_text(b as u64),
                weighed.join(", ")
            ),
            (None, Some(b), _) => {
                self.refusals.push(format!(
                    "model.quantize = \"auto\": even nf4 does not fit 90% of the memory, {} ({}); the plan's closest option is nf4 (see its advice)",
                    memory::mib_text(b as u64),
                    weighed.join(", ")
                ));
                "nf4: nothing fits; the closest".to_string()
            }
        };
        let q = chosen.unwrap_or(if choices.is_empty() || budget.is_none() { Quantize::None } else { Quantize::Nf4 });
        self.config.model.quantize = q;
        self.strategies = Strategies::of(&self.config);
        self.strategies.quantization_reason = Some(why);
    }

    /// `activation_checkpointing = "auto"`: off (faster) when the plan without it fits 90% of the
    /// device's memory (with `"auto"` micro-batches, at the smallest), on otherwise.
    fn choose_checkpointing(&mut self) {
        let (c, sharing) = (&self.config, self.sharing());
        let Some(spec) = self.spec() else { return };
        let Some(budget) = self.device_memory.map(|m| (m / sharing) as f64 * memory::AUTO_SHARE) else {
            self.strategies.activation_checkpointing_reason = Some("off: the device's memory is unknown".into());
            return;
        };
        let micro = if c.train.auto_micro_batch() { 1 } else { self.micro_batch_size };
        let without = memory::estimate(spec, &c.method, &self.placement, memory::Shape::worst(c, micro)).total;
        let on = without as f64 > budget;
        let verdict = if on { "more than" } else { "within" };
        self.strategies.activation_checkpointing = on;
        self.strategies.activation_checkpointing_reason = Some(format!(
            "{}: without it the plan needs {} at micro-batch {micro}, {verdict} 90% of the memory ({})",
            if on { "on" } else { "off" },
            memory::mib_text(without),
            memory::mib_text(budget as u64)
        ));
    }

    fn plan_steps(&mut self) {
        let t = &self.config.train;
        let counts = self.data.as_ref().map(|d| step_counts(t, d.train));
        self.total_steps = t.max_steps.or(counts.map(|c| c.total));
        self.epoch_size = t.epoch_size.or(counts.map(|c| c.epoch_size));
        self.steps_per_epoch = self.epoch_size.map(|e| (e / t.batch_size).max(1));
        self.warmup_steps = self.total_steps.map(|s| t.warmup_iters.min(s));
        self.schedule = self.total_steps.map(|total| Schedule::new(t, total));
        self.eval_steps = every(t.eval_interval, self.total_steps);
        self.save_steps = every(t.save_interval, self.total_steps);
    }
}

/// This machine's CPU cores.
fn cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// Why `local` CPU processes may not train on this machine: more than its cores, unless
/// `train.allow_oversubscribe` says so.
pub fn oversubscribed(c: &Config, placement: &Placement, local: u64) -> Option<String> {
    let cores = cores();
    (!placement.device.is_cuda() && local > cores && !c.train.allow_oversubscribe).then(|| {
        format!(
            "train.devices = {local} starts {local} training processes on the CPU, but this machine has {cores} core{}: they would only slow each other down, each with a copy of the model; lower train.devices to at most {cores}, or set train.allow_oversubscribe = true",
            if cores == 1 { "" } else { "s" }
        )
    })
}

/// Rank `rank`'s device: GPU `rank` of this machine on CUDA, else the CPU (its cores shared by the
/// machine's `local` processes).
fn rank_device(placement: &Placement, rank: usize, local: u64) -> String {
    if placement.device.is_cuda() {
        return format!("cuda:{rank}");
    }
    let threads = (cores() / local.max(1)).max(1);
    format!("cpu ({threads} thread{})", if threads == 1 { "" } else { "s" })
}

/// The split sizes of the data set: its prepared samples when the cache holds them (`true`), else its
/// records (or, for a text corpus, which must be tokenized to be counted, an error saying so).
fn count_samples(r: &Resolved) -> Result<(SplitSizes, bool), Problems> {
    let c = &r.config;
    let cached = crate::data::cached_stats(c).ok().flatten();
    if let Some(stats) = cached {
        return Ok((prepared_sizes(&stats), true));
    }
    if c.data.format == DataFormat::Text {
        return Err(Problems::one(format!(
            "{}: a text corpus is counted in blocks of max_seq_length tokens, which needs it tokenized; run `ftexp prepare {}` first",
            c.data.path,
            r.files.last().map_or(String::new(), |f| f.display().to_string())
        )));
    }
    let n = crate::data::count_records(&c.data)?;
    Ok((crate::data::split_sizes(n, c.data.split), false))
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
        sliding_window: spec.sliding_window.as_ref().map(|w| (w.size, w.layers.iter().filter(|l| **l).count())),
        ignored_config_keys: spec.ignored_config_keys.clone(),
        skipped_config_keys: spec.skipped_config_keys.clone(),
    }
}
