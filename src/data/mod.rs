//! Data sets: Alpaca-format records in, prepared (split, templated, tokenized, masked) samples out.
pub mod prepare;
pub mod prompt;
mod records;

use std::fmt::Write;
use std::path::Path;

pub use prepare::{prepare, Prepared, Sample, SplitStats};
pub use records::{count_records, read_records, Record};

use crate::config::Config;
use crate::error::Problems;
use crate::model::Tokenizer;

/// Prepares (or reuses) the data set of `config` with its model's tokenizer, under `data/.cache/`.
pub fn prepare_for(config: &Config) -> Result<Prepared, Problems> {
    let dir = crate::model::tokenizer_dir(&config.model)?;
    let tokenizer_file = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let inputs = prepare::Inputs {
        data: &config.data,
        seed: config.seed,
        tokenizer: &tokenizer,
        tokenizer_file: &tokenizer_file,
    };
    prepare(&inputs, Path::new(prepare::CACHE_DIR))
}

/// The `ftexp prepare` report: per-split counts and lengths, and one example with its masked prompt
/// shown between ⟦ and ⟧.
pub fn describe(p: &Prepared, data_path: &str, tokenizer: &Tokenizer) -> String {
    let mut out = String::new();
    let how = if p.reused { "reused" } else { "prepared" };
    let _ = writeln!(out, "{data_path} → {} ({how})", p.dir.display());
    let _ = writeln!(
        out,
        "{:<6} {:>8} {:>8} {:>24} {:>10} {:>8}",
        "split", "records", "samples", "tokens min/median/p95/max", "truncated", "dropped"
    );
    for name in prepare::SPLITS {
        let s = &p.stats[name];
        let lengths = format!("{}/{}/{}/{}", s.min_tokens, s.median_tokens, s.p95_tokens, s.max_tokens);
        let _ = writeln!(
            out,
            "{name:<6} {:>8} {:>8} {lengths:>24} {:>10} {:>8}",
            s.records, s.samples, s.truncated, s.dropped
        );
    }
    if let Some(sample) = p.split("train").first() {
        let masked = sample.labels.iter().take_while(|&&l| l == prepare::IGNORE).count();
        let decode = |ids: &[u32]| tokenizer.inner.decode(ids, false).unwrap_or_default();
        let _ = writeln!(out, "\nexample (train, {} tokens; ⟦masked: not in the loss⟧):", sample.input_ids.len());
        let _ = writeln!(out, "⟦{}⟧{}", decode(&sample.input_ids[..masked]), decode(&sample.input_ids[masked..]));
    }
    out
}
