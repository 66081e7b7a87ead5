//! `ftexp bench`.
use std::path::Path;

use ftexp::dist::Rank;
use ftexp::plan::{self, Find};
use ftexp::train::bench::{self, Report};
use ftexp::train::launch;

use super::args::{print_json, ConfigArgs, JsonArg};

/// Measure training speed: N optimizer steps of a config, timed, without writing an experiment.
/// Prints real (non-padding) tokens/s, peak memory, model FLOP/s and, on known GPUs, MFU.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Optimizer steps to time (at least 1).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Train on random token samples of data.max_seq_length tokens instead of the data set (with
    /// --set model.init=random, no weights, tokenizer or data are needed: only config.json).
    #[arg(long)]
    synthetic: bool,
    /// Benchmark knob: the most bytes one chunk of the LM head's scores may take in the timed steps
    /// (default 268435456 = 256 MiB, what training always uses); 0 scores each micro-batch's head in
    /// one piece (unchunked), to measure what chunking costs. The memory plan still assumes the default.
    #[arg(long, value_name = "BYTES")]
    head_chunk_bytes: Option<u64>,
    #[command(flatten)]
    json: JsonArg,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let resolved = a.config.resolve()?;
    let config = &resolved.config;
    if launch::starts_processes(config.train.devices)? {
        return Ok(launch::start_processes(config.train.devices)?);
    }
    let rank = Rank::from_env()?.filter(|r| r.world > 1);
    let find = Find { bench: true, ..Find::default() };
    let r = bench::run(&plan::make_with(&resolved, &find)?, a.steps, a.synthetic, a.head_chunk_bytes)?;
    if rank.is_some_and(|r| r.rank > 0) {
        return Ok(());
    }
    if a.json.json {
        print_json(&r)
    } else {
        print!("{}", render(&a.config.config, &r));
        Ok(())
    }
}

fn render(config: &Path, r: &Report) -> String {
    let per_step = r.micro_batches / r.steps.max(1);
    let first = r.losses.first().copied().unwrap_or(f64::NAN);
    let last = r.losses.last().copied().unwrap_or(f64::NAN);
    let mut memory = r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0} MiB (peak RSS of the process)"));
    if let Some(gpu) = r.peak_gpu_mib {
        memory = match r.gpu_memory_source {
            Some("allocator") => format!("{gpu:.0} MiB on the GPU (tensors, CUDA caching allocator); {memory}"),
            _ => format!("{gpu:.0} MiB on the GPU (nvidia-smi, CUDA context included); {memory}"),
        };
    }
    if r.world_size > 1 {
        let ranks: Vec<String> = r.rank_peak_mib.iter().map(|m| format!("{m:.0}")).collect();
        let sync = r.allreduce_ms_per_step.map_or(String::new(), |ms| format!("; gradient allreduce {ms:.1} ms/step"));
        memory = format!("{memory}\nprocesses:     {} (peak MiB by rank: {}){sync}", r.world_size, ranks.join(", "));
    }
    let mfu = match r.mfu {
        Some(m) => format!("MFU {:.1}%", 100.0 * m),
        None => format!("MFU n/a: no known peak for {} at {}", r.device, r.precision),
    };
    format!(
        "bench {}: {} on {} ({}), {} steps of {per_step} micro-batches, {} samples\n\
         data:          {}\n\
         real tokens:   {} of {} in the micro-batches ({:.0}% not padding)\n\
         time:          {:.2} s\n\
         tokens/s:      {:.0} (all processes together)\n\
         loss:          step 1 {first:.4} → step {} {last:.4}\n\
         peak memory:   {memory}\n\
         model FLOP/s:  {:.3} TFLOP/s ({mfu})\n\
         parameters:    {} trainable of {}\n",
        config.display(),
        r.method,
        r.device,
        r.precision,
        r.steps,
        r.samples,
        r.data,
        r.real_tokens,
        r.padded_tokens,
        100.0 * r.real_tokens as f64 / r.padded_tokens.max(1) as f64,
        r.seconds,
        r.tokens_per_s,
        r.steps,
        r.model_tflops_per_s,
        r.parameters.trainable,
        r.parameters.total,
    )
}
