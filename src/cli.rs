//! The `ftexp` command line.
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, schema};
use crate::error::Problems;
use crate::generate::{generate, perplexity, Sampling, Streamer};
use crate::plan;
use std::io::Write;

#[derive(Parser)]
#[command(name = "ftexp", about = "Fine-tune large language models from declarative TOML experiment files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print ftexp's and libtorch's versions and the CUDA devices found.
    Env,
    /// Resolve a config (extends, FTEXP_* env, --set) and print what a run would do; reads no weights.
    Plan {
        config: PathBuf,
        /// Override a key: --set train.learning_rate=3e-4 (repeatable; value is a TOML literal).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fine-tune: prepare the data, load the base model, train, and write experiments/<name>/v<N>/.
    Run {
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Override the config's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Continue a run from its newest complete checkpoint: the given run directory, or the newest
        /// run of the config's name.
        #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "RUN_DIR")]
        resume: Option<String>,
        /// A label recorded in run.json (sweeps tag each run with its grid point).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Measure training speed: N optimizer steps of a config, timed, without writing an experiment.
    /// Prints real (non-padding) tokens/s, peak memory, model FLOP/s and, on known GPUs, MFU.
    Bench {
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Optimizer steps to time.
        #[arg(long, default_value_t = 20)]
        steps: u64,
        /// Train on random token samples of data.max_seq_length tokens instead of the data set (with
        /// --set model.init=random, no weights, tokenizer or data are needed: only config.json).
        #[arg(long)]
        synthetic: bool,
        #[arg(long)]
        json: bool,
    },
    /// Expand a grid of values into one run per point (and seed): `--print-points` lists the `ftexp run`
    /// arguments, `--makefile` writes a Makefile so `make -j N` runs them in parallel.
    Sweep {
        config: PathBuf,
        /// Space-separated KEY=V1,V2,… entries, e.g. 'train.learning_rate=3e-3,9e-3 method.lora_r=8,16'.
        #[arg(long, default_value = "")]
        grid: String,
        /// Seeds to run every point with, e.g. '1 2 3'.
        #[arg(long, default_value = "")]
        seeds: String,
        #[arg(long, conflicts_with = "makefile")]
        print_points: bool,
        #[arg(long)]
        makefile: bool,
    },
    /// Run a finished experiment again from its saved config.toml, into a new version: on the CPU the
    /// same seed gives the same metrics.csv (but the timing columns).
    Rerun {
        run_dir: PathBuf,
        /// Use another seed (another split, data order and initialisation).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Prepare the data set of a config (split, prompt template, tokens, masked labels) into the cache,
    /// or reuse it, and print per-split statistics and an example.
    Prepare {
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Also write train.jsonl, val.jsonl and test.jsonl with the seed's fields into this directory.
        #[arg(long)]
        export: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Download a model from the Hugging Face hub into checkpoints/<org>/<name>/ (config, tokenizer,
    /// safetensors). Honours HF_TOKEN, HF_ENDPOINT and HF_HOME; files already complete are skipped.
    Download {
        /// org/name, e.g. tiiuae/falcon-7b-instruct.
        repo_id: String,
        /// Branch, tag or commit (default: main).
        #[arg(long)]
        revision: Option<String>,
        #[arg(long, default_value = crate::hub::CHECKPOINTS_DIR)]
        out: PathBuf,
    },
    /// Generate text from a checkpoint: one prefill, then one token per step, streamed to stdout.
    Generate {
        /// A base checkpoint directory (config.json, *.safetensors, tokenizer.json), or a run
        /// directory experiments/<name>/v<N> (its base plus its trained weights and prompt style).
        #[arg(long)]
        checkpoint: PathBuf,
        /// With a run directory: use the checkpoint of this step instead of the final one.
        #[arg(long)]
        step: Option<u64>,
        /// The instruction (with a run, put into the run's prompt template).
        #[arg(long)]
        prompt: String,
        /// With a run: the optional input that goes with the instruction.
        #[arg(long, default_value = "")]
        input: String,
        /// With a run: use the prompt as it is, without the run's template.
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 50)]
        max_new_tokens: usize,
        /// 0 picks the most likely token every time (greedy); higher is more random.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Sample only among the k most likely tokens.
        #[arg(long)]
        top_k: Option<usize>,
        /// Sample only among the most likely tokens whose probabilities add up to p.
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        #[command(flatten)]
        device: DeviceArgs,
        /// Print {"ids": [...], "text": "..."} for the generated part instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// Mean next-token loss and perplexity of a checkpoint on a text file.
    Eval {
        /// A run directory experiments/<name>/v<N>: loss and perplexity on one of its data splits.
        run: Option<PathBuf>,
        /// With a run: which split.
        #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
        split: String,
        /// With a run: also the exact-match rate of greedy answers against the split's outputs.
        #[arg(long)]
        generate: bool,
        /// With a run: evaluate its base model (before fine-tuning) the same way.
        #[arg(long)]
        base: bool,
        /// With a run: the checkpoint of this step instead of the final one.
        #[arg(long)]
        step: Option<u64>,
        /// Without a run: a base checkpoint directory …
        #[arg(long, required_unless_present = "run")]
        checkpoint: Option<PathBuf>,
        /// … and a UTF-8 text file, read as one sequence.
        #[arg(long, required_unless_present = "run")]
        text: Option<PathBuf>,
        /// Use at most this many tokens (default: the model's context length).
        #[arg(long)]
        max_tokens: Option<usize>,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long)]
        json: bool,
    },
    /// Compare runs: one row per run with the values that differ between them, losses, exact match and
    /// speed, sorted by val loss; same-point runs with different seeds summarised as mean ± std.
    /// Writes report.png (the val-loss curves overlaid) into the current directory.
    Report {
        /// Experiment directories (experiments/<name>) or run directories (experiments/<name>/v<N>).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: crate::report::Format,
        /// Where to write the plot.
        #[arg(long, default_value = "report.png")]
        png: PathBuf,
    },
    /// Train a byte-level BPE tokenizer on text files (for a model trained from scratch).
    Tokenizer {
        /// UTF-8 text files.
        #[arg(long, required = true, num_args = 1..)]
        corpus: Vec<PathBuf>,
        #[arg(long, default_value_t = 2048)]
        vocab_size: usize,
        /// Directory for tokenizer.json, tokenizer_config.json and generation_config.json.
        #[arg(long)]
        out: PathBuf,
    },
    /// List every config key with its type, default and meaning.
    Keys {
        /// As a Markdown table (README's config reference).
        #[arg(long)]
        markdown: bool,
    },
}

/// `0.1.0 (libtorch 2.11.0, CUDA available: no, CUDA devices: 0)`.
#[derive(clap::Args)]
struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto (32-true on CPU, bf16-true on CUDA), 32-true, bf16-true, 16-true.
    #[arg(long, default_value = "auto")]
    precision: String,
}

impl DeviceArgs {
    fn load(&self, dir: &std::path::Path) -> Result<(crate::model::Gpt, crate::model::Tokenizer)> {
        if let Err(msg) = plan::parse_device(&self.device) {
            crate::bail_user!("--device {msg}");
        }
        if !schema::PRECISIONS.contains(&self.precision.as_str()) {
            crate::bail_user!(
                "--precision is \"{}\"; use one of {}",
                self.precision,
                schema::quoted_list(schema::PRECISIONS)
            );
        }
        let (device, precision) = plan::resolve_device(&self.device, &self.precision);
        if device.is_cuda() && !tch::Cuda::is_available() {
            crate::bail_user!(
                "--device {}: no CUDA device is available on this machine; use --device cpu",
                self.device
            );
        }
        let tokenizer = crate::model::Tokenizer::from_dir(dir)?;
        let model = crate::model::load(dir, crate::model::weight_kind(&precision), device)?;
        Ok((model, tokenizer))
    }
}

pub fn version_line() -> String {
    let cuda = tch::Cuda::is_available();
    format!(
        "{} (libtorch {}, CUDA available: {}, CUDA devices: {})",
        env!("CARGO_PKG_VERSION"),
        env!("BUILT_LIBTORCH_VERSION"),
        if cuda { "yes" } else { "no" },
        tch::Cuda::device_count()
    )
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let wants_version = std::env::args().skip(1).any(|a| a == "--version" || a == "-V");
    let version: &'static str =
        if wants_version { Box::leak(version_line().into_boxed_str()) } else { env!("CARGO_PKG_VERSION") };
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<Problems>() {
            Some(problems) => {
                for line in &problems.0 {
                    eprintln!("error: {line}");
                }
                2
            }
            None => {
                eprintln!("error: {e:#}");
                1
            }
        },
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Env => {
            println!("ftexp {}", version_line());
            println!("ftexp:     {}", env!("CARGO_PKG_VERSION"));
            println!("libtorch:  {}", env!("BUILT_LIBTORCH_VERSION"));
            println!("cuda:      {}", if tch::Cuda::is_available() { "available" } else { "not available" });
            println!("devices:   {}", tch::Cuda::device_count());
            println!("threads:   {}", tch::get_num_threads());
        }
        Command::Plan { config, sets, json } => {
            let resolved = config::resolve(&config, &sets)?;
            let plan = plan::make(&resolved);
            if json {
                println!("{}", serde_json::to_string_pretty(&plan::to_json(&resolved, &plan))?);
            } else {
                print!("{}", plan::render(&resolved, &plan));
            }
        }
        Command::Bench { config, sets, steps, synthetic, json } => {
            let resolved = config::resolve(&config, &sets)?;
            if steps == 0 {
                crate::bail_user!("--steps 0: give at least 1 optimizer step to time");
            }
            let r = crate::train::bench::run(&resolved.config, steps, synthetic)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", render_bench(&config, &r));
            }
        }
        Command::Sweep { config, grid, seeds, print_points: _, makefile } => {
            let points = crate::sweep::points(&config, &grid, &seeds)?;
            if makefile {
                let bin = std::env::current_exe()?;
                print!("{}", crate::sweep::makefile(&bin, &config, &points));
            } else {
                for p in &points {
                    println!("{}", crate::sweep::run_args(p));
                }
            }
        }
        Command::Run { config, mut sets, seed, resume, tag } => {
            if let Some(seed) = seed {
                sets.push(format!("seed={seed}"));
            }
            let root = PathBuf::from(crate::experiment::EXPERIMENTS_DIR);
            let (config, start) = match resume {
                None => (config::resolve(&config, &sets)?.config, crate::train::Start::New { experiments_root: root }),
                Some(dir) => {
                    let run_dir = if dir.is_empty() {
                        let name = config::resolve(&config, &sets)?.config.name;
                        let parent = root.join(&name);
                        match crate::experiment::versions(&parent).last() {
                            Some(v) => parent.join(format!("v{v}")),
                            None => crate::bail_user!("--resume: no run of \"{name}\" under {}", parent.display()),
                        }
                    } else {
                        PathBuf::from(dir)
                    };
                    // A run continues with exactly the config it started with.
                    let saved = config::resolve(&run_dir.join("config.toml"), &[])?.config;
                    (saved, crate::train::Start::Resume { run_dir })
                }
            };
            let dir = crate::train::run(&config, start)?;
            if let Some(tag) = tag {
                crate::experiment::Experiment::open(&dir)?.update(|i| {
                    i.extra.insert("tag".into(), tag.into());
                })?;
            }
        }
        Command::Rerun { run_dir, seed } => {
            let saved = run_dir.join("config.toml");
            if !saved.is_file() {
                crate::bail_user!("{}: not a run directory (no config.toml)", run_dir.display());
            }
            let sets: Vec<String> = seed.map(|s| format!("seed={s}")).into_iter().collect();
            let config = config::resolve(&saved, &sets)?.config;
            // The saved file sits two levels below the experiments directory.
            let root = run_dir.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_default();
            let dir = crate::train::run(&config, crate::train::Start::New { experiments_root: root })?;
            crate::experiment::Experiment::open(&dir)?.update(|i| {
                i.extra.insert("rerun_of".into(), run_dir.display().to_string().into());
            })?;
        }
        Command::Download { repo_id, revision, out } => {
            let dir = crate::hub::download(&repo_id, revision.as_deref(), &out)?;
            println!("{repo_id} → {}", dir.display());
        }
        Command::Prepare { config, sets, export, json } => {
            let resolved = config::resolve(&config, &sets)?;
            let start = std::time::Instant::now();
            let prepared = crate::data::prepare_for(&resolved.config)?;
            let seconds = start.elapsed().as_secs_f64();
            if let Some(dir) = &export {
                crate::data::prepare::export(&prepared, dir)?;
            }
            if json {
                let out = serde_json::json!({
                    "key": prepared.key, "dir": prepared.dir, "reused": prepared.reused, "splits": prepared.stats,
                    "seconds": seconds,
                    "records_per_s": prepared.stats.values().map(|s| s.records).sum::<usize>() as f64 / seconds.max(1e-9),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let tokenizer =
                    crate::model::Tokenizer::from_dir(&crate::model::tokenizer_dir(&resolved.config.model)?)?;
                print!("{}", crate::data::describe(&prepared, &resolved.config.data.path, &tokenizer));
                if let Some(dir) = &export {
                    println!("exported train.jsonl, val.jsonl, test.jsonl to {}", dir.display());
                }
            }
        }
        Command::Generate {
            checkpoint,
            step,
            prompt,
            input,
            raw,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            device,
            json,
        } => {
            let (model, tokenizer, text) = if checkpoint.join("run.json").is_file() {
                let run = crate::train::load_run(&checkpoint, step, false, Some(&device.device))?;
                let record = crate::data::Record { instruction: prompt.clone(), input, output: String::new() };
                let text =
                    if raw { prompt } else { crate::data::prompt::render(&run.config.data.prompt_style, &record) };
                (run.model, run.tokenizer, text)
            } else {
                let (model, tokenizer) = device.load(&checkpoint)?;
                (model, tokenizer, prompt)
            };
            let ids = tokenizer.encode(&text, true)?;
            if ids.is_empty() {
                crate::bail_user!("--prompt is empty after tokenization; give some text");
            }
            let sampling = Sampling { max_new_tokens, temperature, top_k, top_p, seed };
            let mut streamer = Streamer::new(&tokenizer);
            let stdout = std::io::stdout();
            let start = std::time::Instant::now();
            let mut first_token_at = None;
            let out = generate(&model, &ids, &sampling, &tokenizer.eos_ids, true, |id| {
                first_token_at.get_or_insert_with(std::time::Instant::now);
                if !json {
                    let mut lock = stdout.lock();
                    let _ = write!(lock, "{}", streamer.push(id));
                    let _ = lock.flush();
                }
            });
            let first = first_token_at.unwrap_or(start);
            let (prefill_s, decode_s) = (first.duration_since(start).as_secs_f64(), first.elapsed().as_secs_f64());
            if json {
                let text = tokenizer.decode(&out);
                let decoded = out.len().saturating_sub(1);
                println!(
                    "{}",
                    serde_json::json!({
                        "ids": out, "text": text, "prompt_tokens": ids.len(),
                        "prefill_s": prefill_s, "decode_s": decode_s,
                        "prefill_tokens_per_s": ids.len() as f64 / prefill_s.max(1e-9),
                        "decode_tokens_per_s": decoded as f64 / decode_s.max(1e-9),
                    })
                );
            } else {
                println!();
            }
        }
        Command::Eval { run: Some(dir), split, generate: with_generate, base, step, device, json, .. } => {
            let mut run = crate::train::load_run(&dir, step, base, Some(&device.device))?;
            let data = crate::data::prepare_for(&run.config)?;
            let samples = data.split(&split);
            if samples.is_empty() {
                crate::bail_user!("{}: the {split} split is empty", dir.display());
            }
            let micro = run.config.train.micro_batch_size as usize;
            let loss = crate::train::mean_loss(&mut run.model, samples, micro, None);
            let em = with_generate.then(|| crate::generate::exact_match(&run.model, &run.tokenizer, samples, 3));
            let which = if base {
                "base model".to_string()
            } else {
                run.checkpoint.as_ref().map_or(String::new(), |c| c.display().to_string())
            };
            // Recorded in run.json, so `ftexp report` can show it.
            let key = if base { format!("{split}_base") } else { split.clone() };
            let record = serde_json::json!({
                "model": which, "samples": samples.len(), "loss": loss, "perplexity": loss.map(f64::exp),
                "exact_match": em.as_ref().map(|e| e.rate), "time": crate::experiment::utc_now(),
            });
            crate::experiment::Experiment::open(&dir)?.update(|i| {
                let evals = i.extra.entry("evaluations").or_insert_with(|| serde_json::json!({}));
                if let Some(map) = evals.as_object_mut() {
                    map.insert(key.clone(), record.clone());
                }
            })?;
            if json {
                let out = serde_json::json!({
                    "run": dir, "model": which, "split": split, "samples": samples.len(),
                    "loss": loss, "perplexity": loss.map(f64::exp), "exact_match": em,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{} — {which}, {split} split ({} samples)", dir.display(), samples.len());
                if let Some(l) = loss {
                    println!("loss:        {l:.4}\nperplexity:  {:.4}", l.exp());
                }
                if let Some(em) = em {
                    println!("exact match: {}/{} = {:.1}%", em.correct, em.samples, 100.0 * em.rate);
                    for (q, want, got) in &em.examples {
                        println!("  {q}\n    expected: {want}\n    answered: {got}");
                    }
                }
            }
        }
        Command::Eval { checkpoint, text, max_tokens, device, json, .. } => {
            let (checkpoint, text) =
                (checkpoint.expect("required without a run"), text.expect("required without a run"));
            let (model, tokenizer) = device.load(&checkpoint)?;
            let body = std::fs::read_to_string(&text)
                .map_err(|e| Problems::one(format!("{}: cannot read: {e}", text.display())))?;
            let mut ids = tokenizer.encode(&body, true)?;
            ids.truncate(max_tokens.unwrap_or(model.spec.max_position_embeddings as usize));
            if ids.len() < 2 {
                crate::bail_user!("{}: needs at least 2 tokens to measure next-token loss", text.display());
            }
            let p = perplexity(&model, &ids);
            if json {
                println!("{}", serde_json::to_string(&p)?);
            } else {
                println!("tokens:      {}", p.tokens);
                println!("mean NLL:    {:.6}", p.mean_nll);
                println!("perplexity:  {:.4}", p.perplexity);
            }
        }
        Command::Report { paths, format, png } => {
            print!("{}", crate::report::report(&paths, format, Some(&png))?);
        }
        Command::Tokenizer { corpus, vocab_size, out } => {
            let t = crate::model::tokenizer::train(&corpus, vocab_size, &out)?;
            println!("{} tokens → {}", t.vocab_size(), out.join("tokenizer.json").display());
        }
        Command::Keys { markdown } => print!("{}", keys_reference(markdown)),
    }
    Ok(())
}

fn render_bench(config: &std::path::Path, r: &crate::train::bench::Report) -> String {
    let per_step = r.micro_batches / r.steps.max(1);
    let first = r.losses.first().copied().unwrap_or(f64::NAN);
    let last = r.losses.last().copied().unwrap_or(f64::NAN);
    let mut memory = r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0} MiB (peak RSS of the process)"));
    if let Some(gpu) = r.peak_gpu_mib {
        memory = format!("{gpu:.0} MiB on the GPU (nvidia-smi, CUDA context included); {memory}");
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
         tokens/s:      {:.0}\n\
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

/// The config reference, from the schema itself.
pub fn keys_reference(markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    }
    for k in schema::KEYS {
        let default = k.default.map(|d| format!("`{d}`")).unwrap_or_else(|| "unset".into());
        if markdown {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.key,
                k.kind.describe(),
                default,
                k.doc.replace('|', "\\|")
            ));
        } else {
            out.push_str(&format!("{} ({}; default {}): {}\n", k.key, k.kind.describe(), default, k.doc));
        }
    }
    out
}
