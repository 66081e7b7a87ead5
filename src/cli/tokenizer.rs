//! `ftexp tokenizer`.
use std::path::PathBuf;

/// Train a byte-level BPE tokenizer on text files (for a model trained from scratch).
#[derive(clap::Args)]
pub struct Args {
    /// UTF-8 text files.
    #[arg(long, required = true, num_args = 1..)]
    corpus: Vec<PathBuf>,
    /// Tokens in the vocabulary: the 256 bytes, the end-of-text token and the merges learned (257 to
    /// 1,000,000).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(257..=1_000_000))]
    vocab_size: u32,
    /// Directory for tokenizer.json, tokenizer_config.json and generation_config.json.
    #[arg(long)]
    out: PathBuf,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let t = ftexp::tokenizer::train(&a.corpus, a.vocab_size as usize, &a.out)?;
    println!("{} tokens → {}", t.vocab_size(), a.out.join("tokenizer.json").display());
    Ok(())
}
