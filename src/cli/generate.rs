//! `ftexp generate`.
use std::io::Write;
use std::path::PathBuf;

use ftexp::eval::ask::{self, Ask};
use ftexp::eval::LoadOptions;
use ftexp::generate::{timed, Sampling, Streamer};

use super::args::{BaseArg, DeviceArgs, JsonArg};
use ftexp::experiment::checkpoint::Pick;

/// Generate text from a checkpoint: one prefill, then one token per step, streamed to stdout.
#[derive(clap::Args)]
pub struct Args {
    /// A base checkpoint directory (config.json, *.safetensors, tokenizer.json), or a run directory
    /// experiments/<name>/v<N> (its base plus its trained weights and prompt style).
    #[arg(long)]
    checkpoint: PathBuf,
    /// With a run directory: use the checkpoint of this step instead of the final one; `best`: the run's best checkpoint (train.save_best).
    #[arg(long)]
    step: Option<Pick>,
    /// The instruction (with a run, put into the run's prompt template).
    #[arg(long)]
    prompt: String,
    /// With a run: the optional input that goes with the instruction.
    #[arg(long, default_value = "")]
    input: String,
    /// With a run: use the prompt as it is, without the run's template.
    #[arg(long)]
    raw: bool,
    /// Put the prompt into the chat template as a user turn followed by the assistant's header: a base
    /// checkpoint's own template (a run trained on chat data always uses its run's template).
    #[arg(long, conflicts_with = "raw")]
    chat: bool,
    /// How many tokens to generate at most, 1 to 1,000,000.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_new_tokens: u32,
    /// 0 picks the most likely token every time (greedy); higher is more random (a number ≥ 0).
    #[arg(long, default_value_t = 0.0, value_parser = in_range(0.0, f64::MAX, "a number from 0 up"))]
    temperature: f64,
    /// Sample only among the k most likely tokens (k ≥ 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: Option<u32>,
    /// Sample only among the most likely tokens whose probabilities add up to p (above 0, at most 1).
    #[arg(long, value_parser = in_range(f64::MIN_POSITIVE, 1.0, "above 0 and at most 1"))]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    base: BaseArg,
    // --json: {"ids": [...], "text": "...", timings} for the generated part instead of streaming text.
    #[command(flatten)]
    json: JsonArg,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let load = LoadOptions {
        step: a.step,
        base: false,
        device: Some(a.device.device),
        allow_changed_base: a.base.allow_changed_base,
        ..LoadOptions::default()
    };
    let ask = Ask { instruction: &a.prompt, input: &a.input, raw: a.raw, chat: a.chat };
    let (model, tokenizer, ids) = ask::prepare(&a.checkpoint, &ask, load, a.device.placement()?)?;
    let sampling = Sampling {
        max_new_tokens: a.max_new_tokens as usize,
        temperature: a.temperature,
        top_k: a.top_k.map(|k| k as usize),
        top_p: a.top_p,
        seed: a.seed,
    };
    let mut streamer = Streamer::new(&tokenizer);
    let out = ftexp::error::guard("generating", || {
        timed(&model, &ids, &sampling, &tokenizer.eos_ids, |id| {
            if !a.json.json {
                let mut lock = std::io::stdout().lock();
                let _ = write!(lock, "{}", streamer.push(id));
                let _ = lock.flush();
            }
        })
    })?;
    if a.json.json {
        println!(
            "{}",
            serde_json::json!({
                "ids": out.ids, "text": tokenizer.decode(&out.ids), "prompt_tokens": out.prompt_tokens,
                "prefill_s": out.prefill_s, "decode_s": out.decode_s,
                "prefill_tokens_per_s": out.prefill_tokens_per_s(),
                "decode_tokens_per_s": out.decode_tokens_per_s(),
            })
        );
    } else {
        println!();
    }
    Ok(())
}

/// A parser for a finite number in `low..=high`.
fn in_range(low: f64, high: f64, what: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s: &str| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (low..=high).contains(&v) => Ok(v),
        _ => Err(format!("\"{s}\" is not {what}")),
    }
}
