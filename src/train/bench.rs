//! `ftexp bench`: N optimizer steps of a config, timed, with no experiment written — tokens/s, peak
//! memory, model FLOP/s and (on a GPU whose peak is known) MFU.
use std::time::Instant;

use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tch::Kind;

use super::trainer::Trainer;
use super::{peak_rss_mib, rss_mib};
use crate::config::{Config, MethodKind};
use crate::data::batches::MicroBatch;
use crate::data::prepare::labels;
use crate::data::Sample;
use crate::data::Split;
use crate::experiment::checkpoint::TrainerState;
use crate::experiment::ParamCount;
use crate::methods;
use crate::methods::memory::{MemoryPlan, Shape};
use crate::methods::Built;
use crate::model::spec::ModelSpec;
use crate::model::staged::HEAD_CHUNK_BYTES;
use crate::native::collectives::cuda_memory;
use crate::plan::steps::Schedule;
use crate::plan::RunPlan;

#[derive(Debug, Serialize)]
pub struct Report {
    pub method: String,
    pub device: String,
    pub precision: String,
    /// Where the samples came from: the config's train split, or synthetic full-length samples.
    pub data: String,
    pub steps: u64,
    pub micro_batches: u64,
    pub samples: u64,
    /// Non-padding tokens of the samples trained on.
    pub real_tokens: u64,
    /// Tokens the micro-batches held, padding included.
    pub padded_tokens: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// The mean loss per supervised token of each step, before its update.
    pub losses: Vec<f64>,
    pub peak_rss_mib: Option<f64>,
    /// On CUDA: the CUDA caching allocator's peak of bytes allocated for tensors (torch's
    /// `max_memory_allocated`); on a build without the CUDA headers, the most memory in use on the GPU
    /// sampled with nvidia-smi every 100 ms (context and allocator reserve included).
    pub peak_gpu_mib: Option<f64>,
    /// Where `peak_gpu_mib` comes from: `allocator` or `nvidia-smi`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_source: Option<&'static str>,
    /// Processes that trained together (`train.devices`); tokens/s is theirs together.
    pub world_size: usize,
    /// Each rank's peak memory in MiB (GPU when on CUDA, else peak RSS), by rank.
    pub rank_peak_mib: Vec<f64>,
    /// Mean time per step the ranks spent adding up their gradients, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce_ms_per_step: Option<f64>,
    /// The model FLOPs of the steps (forward and backward of the trunk on real tokens, the head on
    /// supervised ones, weight gradients only for trainable weights), per second.
    pub model_tflops_per_s: f64,
    /// `model_tflops_per_s` over the device's peak, when it is known (CUDA cards by name).
    pub mfu: Option<f64>,
    pub parameters: ParamCount,
    /// Resident memory once the model was built, before the first step, in MiB.
    pub model_rss_mib: Option<f64>,
    /// What training added on top of it: peak RSS (reset once the model was built) minus
    /// `model_rss_mib`, in MiB.
    pub training_rss_mib: Option<f64>,
    /// On the CPU: the peak bytes of tensors in use above those of the built model, counted by ftexp's
    /// CPU allocator, in MiB (no allocator's free lists or library buffers included).
    pub cpu_tensor_peak_mib: Option<f64>,
    /// The memory plan of the longest micro-batch trained on (its rows, length and supervised positions).
    pub memory_plan: Option<MemoryPlan>,
}

/// Samples of exactly `len` tokens (random ids), the first half a masked prompt.
fn synthetic(n: usize, len: usize, vocab: i64, seed: u64) -> Vec<Sample> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab as u32)).collect();
            let prompt = len / 2;
            Sample {
                instruction: String::new(),
                input: String::new(),
                output: String::new(),
                labels: labels(&ids, prompt),
                input_ids_no_response: ids[..prompt].to_vec(),
                input_ids: ids,
            }
        })
        .collect()
}

/// Matmul FLOPs of one forward pass per token: the trunk's weights (2 per multiply-add), and
/// attention's scores and weighted sum over `context` earlier positions on average.
fn trunk_flops_per_token(spec: &ModelSpec, context: f64) -> f64 {
    let (d, hs) = (spec.hidden_size as f64, spec.head_size as f64);
    let (q, kv) = (spec.n_head as f64 * hs, spec.n_query_groups as f64 * hs);
    let mlp_matrices = if spec.mlp.gated() { 3.0 } else { 2.0 };
    let weights = d * q + 2.0 * d * kv + q * d + mlp_matrices * spec.intermediate_size as f64 * d;
    spec.n_layer as f64 * (2.0 * weights + 4.0 * q * context)
}

/// Model FLOPs of one micro-batch's forward and backward pass: backward through the activations costs
/// as much as the forward pass, and weight gradients cost as much again for the weights that train —
/// all of them for `full`; for the other methods their small matrices (2 FLOPs per weight per token).
fn step_flops(spec: &ModelSpec, b: &MicroBatch, full: bool, trainable: f64) -> f64 {
    let (real, supervised) = (b.real_tokens as f64, b.supervised as f64);
    let context = b.width as f64 / 2.0;
    let head = 2.0 * spec.hidden_size as f64 * spec.vocab_size as f64 * supervised;
    let forward = real * trunk_flops_per_token(spec, context) + head;
    let weight_grads = if full { forward } else { 2.0 * trainable * real };
    2.0 * forward + weight_grads
}

/// Peak dense bf16/fp16 tensor FLOP/s of known CUDA cards, by the name nvidia-smi reports.
fn peak_flops(device: tch::Device, kind: Kind) -> Option<f64> {
    let tch::Device::Cuda(index) = device else { return None };
    if !matches!(kind, Kind::BFloat16 | Kind::Half) {
        return None;
    }
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", &format!("--id={index}")])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).to_uppercase();
    let table = [("H200", 989e12), ("H100 PCIE", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12)];
    table.iter().find(|(n, _)| name.contains(n)).map(|(_, f)| *f)
}

/// Samples the memory in use on GPU `index` with nvidia-smi in a background thread until stopped.
struct GpuMemoryWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<f64>>,
}

impl GpuMemoryWatch {
    fn start(index: usize) -> GpuMemoryWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: Option<f64> = None;
            loop {
                let out = std::process::Command::new("nvidia-smi")
                    .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", &format!("--id={index}")])
                    .output()
                    .ok()?;
                if let Ok(mib) = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>() {
                    peak = Some(peak.map_or(mib, |p| p.max(mib)));
                }
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        GpuMemoryWatch { stop, thread }
    }

    fn finish(self) -> Option<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().ok().flatten()
    }
}

/// The GPU's peak memory in MiB over the steps, and where it was read.
fn gpu_peak(device: tch::Device, watch: Option<GpuMemoryWatch>) -> (Option<f64>, Option<&'static str>) {
    match (device, watch) {
        (_, Some(watch)) => (watch.finish(), Some("nvidia-smi")),
        (tch::Device::Cuda(index), None) => {
            (cuda_memory(index).map(|(_, peak)| peak as f64 / 1048576.0), Some("allocator"))
        }
        _ => (None, None),
    }
}

/// Runs `steps` optimizer steps of `c` (its model, method, precision, batch sizes and learning-rate
/// schedule) on its train split, or on synthetic samples of `data.max_seq_length` tokens; the LM head
/// in chunks of at most `head_chunk_bytes` (`None`: training's [`HEAD_CHUNK_BYTES`]; 0: unchunked).
pub fn run(plan: &RunPlan, steps: u64, synthetic_data: bool, head_chunk_bytes: Option<u64>) -> anyhow::Result<Report> {
    let c = &plan.config;
    let replicas = super::launch::join(plan)?;
    count_cpu_tensors(c);
    let placement = super::launch::on_rank(plan.placement, replicas.as_ref().map(|r| &r.rank));
    let built = methods::build_located(c, &super::find_base(plan)?, placement)?;
    let spec = built.model.spec.clone();
    let (train, data) = samples(c, &spec, synthetic_data)?;
    let parameters = methods::count(&spec, &c.method);
    let (device, kind, precision) = (built.model.device(), built.model.kind(), built.placement.precision);
    let placement = built.placement;
    let mark = MemoryMark::now();
    let mut trainer = trainer(plan, built, &train, steps, head_chunk_bytes);
    trainer.replicas = replicas;
    super::fit::resolve_micro_batch(plan, &mut trainer, None)?;
    super::launch::start_replicas(&mut trainer, None)?;
    let mut n = Counts::default();
    let mut losses = Vec::new();
    let watch = match device {
        tch::Device::Cuda(index) if cuda_memory(index).is_none() => Some(GpuMemoryWatch::start(index)),
        _ => None,
    };
    let clock = Instant::now();
    for _ in 0..steps {
        let stats = trainer.step(false)?;
        losses.push(stats.loss.double_value(&[]));
        for b in &stats.micro_batches {
            n.add(b, step_flops(&spec, b, c.method.kind == MethodKind::Full, parameters.trainable as f64));
        }
    }
    if let tch::Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
    let seconds = clock.elapsed().as_secs_f64();
    let (peak_gpu_mib, gpu_memory_source) = gpu_peak(device, watch);
    let mine = peak_gpu_mib.or_else(peak_rss_mib).unwrap_or(0.0);
    let (world_size, rank_peak_mib, allreduce_ms_per_step) = match &trainer.replicas {
        None => (1, vec![mine], None),
        Some(r) => {
            let mut slots = vec![0.0; r.rank.world];
            slots[r.rank.rank] = mine;
            let sync_ms = r.sum(&[r.sync_time.as_secs_f64() * 1e3 / steps as f64], device)?[0] / r.rank.world as f64;
            (r.rank.world, r.sum(&slots, device)?, Some(sync_ms))
        }
    };
    let tflops = n.flops / seconds / 1e12;
    Ok(Report {
        method: c.method.kind.to_string(),
        device: crate::device::name(device),
        precision: precision.to_string(),
        data,
        steps,
        micro_batches: n.micro_batches,
        samples: trainer.state.samples_seen,
        real_tokens: n.real,
        padded_tokens: n.padded,
        seconds,
        tokens_per_s: n.real as f64 / seconds,
        losses,
        peak_rss_mib: peak_rss_mib(),
        peak_gpu_mib,
        gpu_memory_source,
        world_size,
        rank_peak_mib,
        allreduce_ms_per_step,
        model_tflops_per_s: tflops,
        mfu: peak_flops(device, kind).map(|p| tflops * 1e12 / p / world_size as f64),
        parameters,
        model_rss_mib: mark.rss,
        training_rss_mib: peak_rss_mib().zip(mark.rss).map(|(peak, model)| peak - model),
        cpu_tensor_peak_mib: mark.tensor_peak_mib(device),
        memory_plan: n.largest.map(|mut shape| {
            shape.packed = c.data.packing;
            shape.checkpointed = plan.strategies.activation_checkpointing;
            shape.quantized = methods::quant_scheme(c.model.quantize);
            methods::memory::estimate(&spec, &c.method, &placement, shape)
        }),
    })
}

/// A trainer of `built` on `train` for `steps` steps, checkpointing as the plan says, its LM head in
/// chunks of at most `head_chunk_bytes` (see [`run`]).
fn trainer<'a>(
    plan: &RunPlan,
    built: Built,
    train: &'a [Sample],
    steps: u64,
    head_chunk_bytes: Option<u64>,
) -> Trainer<'a> {
    let schedule = Schedule::new(&plan.config.train, steps);
    let mut trainer = Trainer::new(built, &plan.config, train, schedule, TrainerState::default());
    trainer.checkpointing = plan.strategies.activation_checkpointing;
    trainer.head_chunk_bytes = match head_chunk_bytes {
        None => HEAD_CHUNK_BYTES,
        Some(0) => i64::MAX,
        Some(n) => i64::try_from(n).unwrap_or(i64::MAX),
    };
    trainer
}

/// What the micro-batches of a bench held, and the largest of them.
#[derive(Default)]
struct Counts {
    micro_batches: u64,
    real: u64,
    padded: u64,
    flops: f64,
    largest: Option<Shape>,
}

impl Counts {
    fn add(&mut self, b: &MicroBatch, flops: f64) {
        self.micro_batches += 1;
        self.real += b.real_tokens as u64;
        self.padded += (b.rows * (b.width + 1)) as u64;
        self.flops += flops;
        let shape = Shape {
            rows: b.rows as u64,
            len: b.width as u64,
            scored: Some(b.supervised as u64),
            packed: false,
            checkpointed: false,
            quantized: None,
        };
        let size = |s: &Shape| (s.rows * s.len, s.scored);
        if self.largest.is_none_or(|l| size(&l) < size(&shape)) {
            self.largest = Some(shape);
        }
    }
}

/// Counts CPU tensors from here on; `model.device_memory` limits them only when the run is on the CPU.
fn count_cpu_tensors(c: &Config) {
    let on_cpu = crate::device::Placement::resolve(c.model.device, c.model.precision).device == tch::Device::Cpu;
    crate::native::allocator::count_cpu_memory(c.model.device_memory_bytes().filter(|_| on_cpu));
}

/// Memory in use once the model is built, with the peaks reset, to measure what training adds.
struct MemoryMark {
    rss: Option<f64>,
    tensors: Option<u64>,
}

impl MemoryMark {
    fn now() -> MemoryMark {
        super::reset_peak_rss();
        crate::native::allocator::reset_cpu_peak();
        MemoryMark { rss: rss_mib(), tensors: crate::native::allocator::cpu_memory().map(|(current, _)| current) }
    }

    /// The peak bytes of CPU tensors above the mark, in MiB.
    fn tensor_peak_mib(&self, device: tch::Device) -> Option<f64> {
        match (device, crate::native::allocator::cpu_memory(), self.tensors) {
            (tch::Device::Cpu, Some((_, peak)), Some(model)) => Some((peak - model) as f64 / 1048576.0),
            _ => None,
        }
    }
}

/// The samples to train on: the config's train split, or synthetic ones; and where they came from.
fn samples(c: &Config, spec: &ModelSpec, synthetic_data: bool) -> anyhow::Result<(Vec<Sample>, String)> {
    if synthetic_data {
        let len = c.data.max_seq_length as usize;
        let samples = synthetic(c.train.batch_size as usize * 4, len, spec.vocab_size, c.seed);
        return Ok((samples, format!("synthetic: {len} random tokens per sample, the first half a masked prompt")));
    }
    let prepared = crate::data::prepare_for(c)?;
    let train = prepared.split(Split::Train).to_vec();
    if train.is_empty() {
        crate::bail_user!("{}: no training samples; see `ftexp prepare`", c.data.path);
    }
    let n = train.len();
    Ok((train, format!("{}: train split, {n} samples", c.data.path)))
}
