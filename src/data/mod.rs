//! Data sets: Alpaca-format records in, prepared (split, templated, tokenized, masked) samples out.
pub mod batches;
mod cache;
pub mod chat;
pub mod files;
pub mod prepare;
pub mod prompt;
mod records;
mod samples;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

pub use prepare::prepare;
pub use records::{read_records, Record};
pub use samples::{split_sizes, Prepared, Sample, Split, SplitSizes, SplitStats};

use crate::config::{Config, DataConfig, DataFormat};
use crate::error::Problems;
use crate::tokenizer::Tokenizer;
use crate::{hub, source};

/// Prepares (or reuses) the data set of `config` with its model's tokenizer, under `data/.cache/`
/// (downloading the base model first when its tokenizer is on the hub).
/// A data set on the hub (`hf://datasets/…`) is fetched first, or found in hf-hub's cache.
pub fn prepare_for(config: &Config) -> Result<Prepared, Problems> {
    let dir = source::tokenizer_dir(&config.model, true)?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let hub = match hub::datasets::parse(&config.data.path) {
        Some(_) => Some(hub::dataset_files(&config.data.path)?),
        None => None,
    };
    let tokenizer_file = dir.join("tokenizer.json");
    prepare(&inputs(config, &tokenizer, &tokenizer_file, hub.as_ref()), Path::new(prepare::CACHE_DIR))
}

/// A run's prepared data: its cache entry `recorded_key` while the cache holds it, else prepared again —
/// which must give the same key, or the data file changed and the run's splits are not what it was
/// trained and tested on.
pub fn prepare_for_run(config: &Config, recorded_key: Option<&str>) -> Result<Prepared, Problems> {
    let root = Path::new(prepare::CACHE_DIR);
    if let Some(p) = recorded_key.and_then(|key| prepare::load_entry(root, key)) {
        return Ok(p);
    }
    let p = prepare_for(config)?;
    match recorded_key {
        Some(key) if key != p.key => Err(Problems::one(format!(
            "{}: changed since the run prepared its splits from it (cache key {key}, now {}), and those splits are no longer in {}: records the run trained on could be in its test split now; restore the file, or run the experiment again",
            config.data.path,
            p.key,
            root.display()
        ))),
        _ => Ok(p),
    }
}

/// The statistics of `config`'s prepared data when the cache already holds it; `None` when it must be
/// prepared first. Reads the tokenizer's files but tokenizes nothing and downloads nothing.
pub fn cached_stats(config: &Config) -> Result<Option<BTreeMap<String, SplitStats>>, Problems> {
    if hub::datasets::parse(&config.data.path).is_some() {
        return Ok(None);
    }
    let dir = source::tokenizer_dir(&config.model, false)?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let key = prepare::cache_key(&inputs(config, &tokenizer, &dir.join("tokenizer.json"), None))?;
    prepare::cached_stats(Path::new(prepare::CACHE_DIR), &key)
}

/// How many records the data set of `data` holds (conversations for chat data).
pub fn count_records(data: &DataConfig) -> Result<usize, Problems> {
    if hub::datasets::parse(&data.path).is_some() {
        return Err(Problems::one(format!(
            "{}: a hub data set is counted once `ftexp prepare` has downloaded it",
            data.path
        )));
    }
    let files = files::data_files(Path::new(&data.path))?;
    match data.format {
        DataFormat::Chat => chat::read_conversations(&files, &data.columns).map(|c| c.len()),
        _ => read_records(&files, &data.columns).map(|r| r.len()),
    }
}

fn inputs<'a>(
    config: &'a Config,
    tokenizer: &'a Tokenizer,
    tokenizer_file: &'a Path,
    hub: Option<&'a hub::DatasetFiles>,
) -> prepare::Inputs<'a> {
    prepare::Inputs { data: &config.data, seed: config.seed, tokenizer, tokenizer_file, hub }
}

/// The `ftexp prepare` report: per-split counts and lengths, with `packing` (the row length) how full
/// packed rows of the train split are, and one example with what is not in the loss between ⟦ and ⟧.
pub fn describe(p: &Prepared, data_path: &str, tokenizer: &Tokenizer, packing: Option<usize>) -> String {
    let mut out = String::new();
    let how = if p.reused { "reused" } else { "prepared" };
    let _ = writeln!(out, "{data_path} → {} ({how})", p.dir.display());
    let _ = writeln!(
        out,
        "{:<6} {:>8} {:>8} {:>24} {:>10} {:>8}",
        "split", "records", "samples", "tokens min/median/p95/max", "truncated", "dropped"
    );
    for name in Split::ALL.map(Split::name) {
        let s = &p.stats[name];
        let lengths = format!("{}/{}/{}/{}", s.min_tokens, s.median_tokens, s.p95_tokens, s.max_tokens);
        let _ = writeln!(
            out,
            "{name:<6} {:>8} {:>8} {lengths:>24} {:>10} {:>8}",
            s.records, s.samples, s.truncated, s.dropped
        );
    }
    if let Some(row) = packing {
        let _ = writeln!(
            out,
            "packing: train samples fill rows of {row} tokens to {:.1}% (first fit, longest first)",
            100.0 * batches::fill_ratio(p.split(Split::Train), row)
        );
    }
    if let Some(sample) = p.split(Split::Train).first() {
        let decode = |ids: &[u32]| tokenizer.inner.decode(ids, false).unwrap_or_default();
        let _ = writeln!(out, "\nexample (train, {} tokens; ⟦masked: not in the loss⟧):", sample.input_ids.len());
        let mut at = 0;
        let mut line = String::new();
        for (start, end) in cache::supervised_runs(&sample.labels) {
            if start > at {
                line.push_str(&format!("⟦{}⟧", decode(&sample.input_ids[at..start])));
            }
            line.push_str(&decode(&sample.input_ids[start..end]));
            at = end;
        }
        if at < sample.input_ids.len() {
            line.push_str(&format!("⟦{}⟧", decode(&sample.input_ids[at..])));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
