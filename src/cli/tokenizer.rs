//! `ftexp tokenizer`.
use std::path::PathBuf;

/// Train a byte-level BPE tokenizer on text files (for a model trained from scratch).
#[derive(clap::Args)]
pub struct Args {
    /// UTF-8 text files.
    #[arg(long, required = true, num_args = 1..)]
    corpus: Vec<PathBuf>,
    #[arg(long, default_value_t = 2048)]
    vocab_size: usize,
    /// Directory for tokenizer.json, tokenizer_config.json and generation_config.json.
    #[arg(long)]
    out: PathBuf,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let t = ftexp::tokenizer::train(&a.corpus, a.vocab_size, &a.out)?;
    println!("{} tokens → {}", t.vocab_size(), a.out.join("tokenizer.json").display());
    Ok(())
}
