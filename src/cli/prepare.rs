//! `ftexp prepare`.
use std::path::PathBuf;

use ftexp::data;
use ftexp::tokenizer::Tokenizer;

use super::args::{print_json, ConfigArgs, JsonArg};

/// Prepare the data set of a config (split, prompt template, tokens, masked labels) into the cache, or
/// reuse it, and print per-split statistics and an example.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also write train.jsonl, val.jsonl and test.jsonl with the seed's fields into this directory.
    #[arg(long)]
    export: Option<PathBuf>,
    #[command(flatten)]
    json: JsonArg,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let config = a.config.resolve()?.config;
    let start = std::time::Instant::now();
    let prepared = data::prepare_for(&config)?;
    let seconds = start.elapsed().as_secs_f64();
    let packing = config.data.packing.then_some(config.data.max_seq_length as usize);
    if let Some(dir) = &a.export {
        data::prepare::export(&prepared, dir)?;
    }
    if a.json.json {
        let records: usize = prepared.stats.values().map(|s| s.records).sum();
        let fill = packing.map(|row| data::batches::fill_ratio(prepared.split(data::Split::Train), row));
        return print_json(&serde_json::json!({
            "key": prepared.key, "dir": prepared.dir, "reused": prepared.reused, "splits": prepared.stats,
            "seconds": seconds, "records_per_s": records as f64 / seconds.max(1e-9), "packing_fill_ratio": fill,
        }));
    }
    let tokenizer = Tokenizer::from_dir(&ftexp::source::tokenizer_dir(&config.model, true)?)?;
    print!("{}", data::describe(&prepared, &config.data.path, &tokenizer, packing));
    if let Some(dir) = &a.export {
        println!("exported train.jsonl, val.jsonl, test.jsonl to {}", dir.display());
    }
    Ok(())
}
