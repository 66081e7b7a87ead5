//! `ftexp eval`.
use std::path::PathBuf;

use ftexp::data::Split;
use ftexp::eval::{self, EvalRequest, LoadOptions, RunEval};

use super::args::{print_json, BaseArg, DeviceArgs, JsonArg};
use ftexp::experiment::checkpoint::Pick;

/// Loss and perplexity of a run on one of its data splits (and, with --generate, the exact-match rate
/// of greedy answers), or of a base checkpoint on a text file.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory experiments/<name>/v<N>: loss and perplexity on one of its data splits.
    run: Option<PathBuf>,
    /// With a run: which split.
    #[arg(long, default_value = "test")]
    split: Split,
    /// With a run: also the exact-match rate of greedy answers against the split's outputs.
    #[arg(long)]
    generate: bool,
    /// With a run: evaluate its base model (before fine-tuning) the same way.
    #[arg(long)]
    base: bool,
    /// With a run trained on a quantized base (model.quantize): build its model on the base's weights as
    /// its files hold them, unquantized (what a PEFT export of the run computes on the original base).
    #[arg(long)]
    unquantized: bool,
    /// With a run: the checkpoint of this step instead of the final one; `best`: the run's best checkpoint (train.save_best).
    #[arg(long)]
    step: Option<Pick>,
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
    #[command(flatten)]
    base_files: BaseArg,
    #[command(flatten)]
    json: JsonArg,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    if let Some(dir) = &a.run {
        let load = LoadOptions {
            step: a.step,
            base: a.base,
            device: Some(a.device.device),
            allow_changed_base: a.base_files.allow_changed_base,
            unquantized: a.unquantized,
        };
        let req = EvalRequest { split: a.split, generate: a.generate, load };
        let r = eval::evaluate_run(dir, &req)?;
        return if a.json.json { print_json(&r) } else { print_run(&r) };
    }
    let (Some(checkpoint), Some(text)) = (&a.checkpoint, &a.text) else {
        ftexp::bail_user!("give a run directory, or --checkpoint and --text");
    };
    let (model, tokenizer) = eval::load_checkpoint(checkpoint, a.device.placement()?)?;
    let p = eval::text_perplexity(&model, &tokenizer, text, a.max_tokens)?;
    if a.json.json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        println!("tokens:      {}", p.tokens);
        println!("mean NLL:    {:.6}", p.mean_nll);
        println!("perplexity:  {:.4}", p.perplexity);
    }
    Ok(())
}

fn print_run(r: &RunEval) -> anyhow::Result<()> {
    println!("{} — {}, {} split ({} samples)", r.run.display(), r.model, r.split, r.samples);
    if let Some(l) = r.loss {
        println!("loss:        {l:.4}\nperplexity:  {:.4}", l.exp());
    }
    if let Some(em) = &r.exact_match {
        println!("exact match: {}/{} = {:.1}%", em.correct, em.samples, 100.0 * em.rate);
        for (q, want, got) in &em.examples {
            println!("  {q}\n    expected: {want}\n    answered: {got}");
        }
    }
    Ok(())
}
