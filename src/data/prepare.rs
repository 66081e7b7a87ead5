//! Preparing a data set: seeded split, prompt template, tokenization with masked prompt labels and a
//! length policy, stored once per content key under `data/.cache/<key>/`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};

pub use super::cache::{export, labels_in};
use super::cache::{load, store, Entry};
use super::chat::{read_conversations, render_all, ChatTemplate};
use super::records::{read_records, Record};
pub use super::samples::{labels, length_stats, Prepared, Sample, Split, SplitStats, IGNORE};
use super::samples::{split_sizes, Conversation};
use super::{files, prompt};
use crate::config::{DataConfig, DataFormat, LongSamples};
use crate::error::Problems;
use crate::hub::DatasetFiles;
use crate::tokenizer::Tokenizer;

pub const CACHE_DIR: &str = "data/.cache";
/// Bump when the prepared format or its rules change, so old cache entries are not reused.
const FORMAT_VERSION: &str = "ftexp-data-3";
/// Records tokenized per batch: bounds the memory the tokenizer's intermediate encodings take.
const CHUNK: usize = 8192;

/// What a data set is prepared from; the cache key covers all of it.
pub struct Inputs<'a> {
    pub data: &'a DataConfig,
    pub seed: u64,
    pub tokenizer: &'a Tokenizer,
    /// The tokenizer.json file, hashed into the key.
    pub tokenizer_file: &'a Path,
    /// A hub data set's files (`data.path = "hf://datasets/…"`), downloaded; `None`: `data.path` is local.
    pub hub: Option<&'a DatasetFiles>,
}

impl Inputs<'_> {
    /// The data files, in order.
    pub fn files(&self) -> Result<Vec<PathBuf>, Problems> {
        match self.hub {
            Some(h) => Ok(h.files.clone()),
            None => files::data_files(Path::new(&self.data.path)),
        }
    }

    /// The chat template of a chat data set.
    pub fn chat_template(&self) -> Result<ChatTemplate, Problems> {
        let dir = self.tokenizer_file.parent().unwrap_or(Path::new("."));
        ChatTemplate::load(dir, self.data.chat_template.as_deref())
    }
}

fn sha256_file(path: &Path) -> Result<String, Problems> {
    let bytes = std::fs::read(path).map_err(|e| {
        Problems::one(match e.kind() {
            std::io::ErrorKind::NotFound => format!("{}: data file not found; check `data.path`", path.display()),
            _ => format!("{}: cannot read: {e}", path.display()),
        })
    })?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// The cache key of a preparation: a hash of everything the prepared samples depend on.
pub fn cache_key(inputs: &Inputs) -> Result<String, Problems> {
    let d = inputs.data;
    let mut data_hash = Sha256::new();
    for file in inputs.files()? {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        data_hash.update(format!("{name}\u{1f}{}\u{1f}", sha256_file(&file)?).as_bytes());
    }
    let template = match d.format {
        DataFormat::Chat => inputs.chat_template()?.source,
        _ => String::new(),
    };
    let parts = [
        FORMAT_VERSION.to_string(),
        format!("{:x}", data_hash.finalize()),
        inputs.hub.map(|h| format!("{}@{}", h.repo, h.commit)).unwrap_or_default(),
        template,
        d.train_on.to_string(),
        sha256_file(inputs.tokenizer_file)?,
        format!("{:?}", inputs.tokenizer.eos_ids),
        d.format.to_string(),
        d.prompt_style.clone(),
        format!("{:?}", d.columns),
        d.max_seq_length.to_string(),
        d.long_samples.to_string(),
        d.mask_inputs.to_string(),
        format!("{:?}", (d.split.train, d.split.val, d.split.test)),
        inputs.seed.to_string(),
    ];
    Ok(format!("{:x}", Sha256::digest(parts.join("\u{1f}").as_bytes()))[..16].to_string())
}

/// The split of record indices: a seeded shuffle, then val, test and train by the ratios.
pub fn split_indices(n: usize, data: &DataConfig, seed: u64) -> BTreeMap<&'static str, Vec<usize>> {
    let sizes = split_sizes(n, data.split);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let (val, rest) = order.split_at(sizes.val);
    let (test, train) = rest.split_at(sizes.test);
    BTreeMap::from([("train", train.to_vec()), ("val", val.to_vec()), ("test", test.to_vec())])
}

/// The statistics of cache entry `key`, when it is complete.
pub fn cached_stats(cache_root: &Path, key: &str) -> Result<Option<BTreeMap<String, SplitStats>>, Problems> {
    let path = cache_root.join(key).join("stats.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Problems::one(format!("{}: unreadable cache entry ({e}); delete it and prepare again", path.display()))
    })
}

/// The complete cache entry `key`, when the cache holds one.
pub fn load_entry(cache_root: &Path, key: &str) -> Option<Prepared> {
    let dir = cache_root.join(key);
    dir.join("stats.json").is_file().then(|| load(&dir, key).ok()).flatten()
}

/// Prepares the data set, or reuses the cache entry with the same key.
pub fn prepare(inputs: &Inputs, cache_root: &Path) -> Result<Prepared, Problems> {
    let key = cache_key(inputs)?;
    let dir = cache_root.join(&key);
    if dir.join("stats.json").is_file() {
        if let Ok(p) = load(&dir, &key) {
            return Ok(p);
        }
    }
    let Built { splits, chats, stats } = build(inputs)?;
    store(cache_root, &key, &Entry { splits: &splits, chats: &chats, stats: &stats })?;
    Ok(Prepared { key, dir, reused: false, splits, chats, stats })
}

/// A prepared data set before it is stored.
#[derive(Default)]
struct Built {
    splits: BTreeMap<String, Vec<Sample>>,
    chats: BTreeMap<String, Vec<Conversation>>,
    stats: BTreeMap<String, SplitStats>,
}

fn build(inputs: &Inputs) -> Result<Built, Problems> {
    let d = inputs.data;
    let eos = *inputs.tokenizer.eos_ids.first().ok_or_else(|| {
        Problems::one(format!(
            "{}: the tokenizer has no end-of-text token (eos_token_id in generation_config.json or config.json)",
            inputs.tokenizer_file.display()
        ))
    })?;
    let files = inputs.files()?;
    let mut built = Built::default();
    match d.format {
        DataFormat::Text => return build_text(inputs, eos),
        DataFormat::Alpaca => {
            let records = read_records(&files, &d.columns)?;
            let indices = record_split(records.len(), inputs)?;
            for name in Split::ALL.map(Split::name) {
                let chosen: Vec<&Record> = indices[name].iter().map(|&i| &records[i]).collect();
                let (samples, s) = tokenize(&chosen, d, inputs.tokenizer, eos)?;
                built.splits.insert(name.to_string(), samples);
                built.stats.insert(name.to_string(), s);
            }
        }
        DataFormat::Chat => {
            let template = inputs.chat_template()?;
            let rows = read_conversations(&files, &d.columns)?;
            let rendered = render_all(&rows, &template)?;
            let indices = record_split(rows.len(), inputs)?;
            for name in Split::ALL.map(Split::name) {
                let chosen: Vec<_> = indices[name].iter().map(|&i| (&rows[i].0, &rendered[i])).collect();
                let (samples, kept, s) = super::chat::tokenize(&chosen, d, inputs.tokenizer)?;
                built.splits.insert(name.to_string(), samples);
                built.chats.insert(name.to_string(), kept);
                built.stats.insert(name.to_string(), s);
            }
        }
    }
    Ok(built)
}

/// The split of `n` records, or what to change when a share gets none.
fn record_split(n: usize, inputs: &Inputs) -> Result<BTreeMap<&'static str, Vec<usize>>, Problems> {
    let d = inputs.data;
    if n == 0 {
        return Err(Problems::one(format!("{}: holds no records", d.path)));
    }
    let mut problems = Problems::default();
    let ratios = [("train", d.split.train), ("val", d.split.val), ("test", d.split.test)];
    let indices = split_indices(n, d, inputs.seed);
    for (name, ratio) in ratios {
        if ratio > 0.0 && indices[name].is_empty() {
            problems.push(format!(
                "data.split.{name} = {ratio} gives 0 of the {n} records in {}; raise the share or add data",
                d.path
            ));
        }
    }
    problems.into_result()?;
    Ok(indices)
}

/// A plain-text corpus: documents (separated by blank lines) tokenized, each followed by EOS,
/// concatenated and cut into blocks of `max_seq_length` tokens; the blocks are split like records.
fn build_text(inputs: &Inputs, eos: u32) -> Result<Built, Problems> {
    let d = inputs.data;
    let path = Path::new(&d.path);
    let text =
        std::fs::read_to_string(path).map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))?;
    let docs: Vec<String> = text.split("\n\n").map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
    if docs.is_empty() {
        return Err(Problems::one(format!("{}: the text corpus is empty", path.display())));
    }
    let encoded = inputs
        .tokenizer
        .inner
        .encode_batch(docs, true)
        .map_err(|e| Problems::one(format!("{}: cannot tokenize: {e}", path.display())))?;
    let mut stream = Vec::new();
    for e in &encoded {
        stream.extend_from_slice(e.get_ids());
        stream.push(eos);
    }
    let block = d.max_seq_length as usize;
    let blocks: Vec<Vec<u32>> = stream.chunks(block).filter(|b| b.len() >= 2).map(<[u32]>::to_vec).collect();
    let indices = split_indices(blocks.len(), d, inputs.seed);
    let mut splits = BTreeMap::new();
    let mut stats = BTreeMap::new();
    for name in Split::ALL.map(Split::name) {
        if indices[name].is_empty() && ratio(d, name) > 0.0 {
            return Err(Problems::one(format!(
                "data.split.{name} = {} gives 0 of the {} blocks of {block} tokens in {}; add text or lower max_seq_length",
                ratio(d, name),
                blocks.len(),
                path.display()
            )));
        }
        let samples: Vec<Sample> = indices[name]
            .iter()
            .map(|&i| Sample {
                instruction: String::new(),
                input: String::new(),
                output: String::new(),
                input_ids: blocks[i].clone(),
                input_ids_no_response: Vec::new(),
                labels: labels(&blocks[i], 0),
            })
            .collect();
        let mut lengths: Vec<usize> = samples.iter().map(|s| s.input_ids.len()).collect();
        lengths.sort_unstable();
        let s = SplitStats {
            records: samples.len(),
            samples: samples.len(),
            min_tokens: lengths.first().copied().unwrap_or(0),
            median_tokens: lengths.get(lengths.len() / 2).copied().unwrap_or(0),
            p95_tokens: lengths.get(lengths.len().saturating_sub(1) * 95 / 100).copied().unwrap_or(0),
            max_tokens: lengths.last().copied().unwrap_or(0),
            ..SplitStats::default()
        };
        stats.insert(name.to_string(), s);
        splits.insert(name.to_string(), samples);
    }
    Ok(Built { splits, stats, ..Built::default() })
}

fn ratio(d: &DataConfig, name: &str) -> f64 {
    match name {
        "train" => d.split.train,
        "val" => d.split.val,
        _ => d.split.test,
    }
}

fn tokenize(
    records: &[&Record],
    d: &DataConfig,
    tok: &Tokenizer,
    eos: u32,
) -> Result<(Vec<Sample>, SplitStats), Problems> {
    let encode = |texts: Vec<String>, special: bool| -> Result<Vec<Vec<u32>>, Problems> {
        let encodings =
            tok.inner.encode_batch_fast(texts, special).map_err(|e| Problems::one(format!("cannot tokenize: {e}")))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    };
    let max = d.max_seq_length as usize;
    let mut stats = SplitStats { records: records.len(), ..SplitStats::default() };
    let mut samples = Vec::with_capacity(records.len());
    for chunk in records.chunks(CHUNK) {
        let prompt_ids = encode(chunk.iter().map(|r| prompt::render(&d.prompt_style, r)).collect(), true)?;
        let output_ids = encode(chunk.iter().map(|r| r.output.clone()).collect(), false)?;
        for ((record, prompt), mut response) in chunk.iter().zip(prompt_ids).zip(output_ids) {
            response.push(eos);
            if prompt.len() + response.len() > max {
                // Room for at least one response token and EOS, or the sample teaches nothing.
                if d.long_samples == LongSamples::Drop || prompt.len() + 2 > max {
                    stats.dropped += 1;
                    continue;
                }
                response.truncate(max - prompt.len() - 1);
                response.push(eos);
                stats.truncated += 1;
            }
            let masked = if d.mask_inputs { prompt.len() } else { 0 };
            let input_ids = [&prompt[..], &response[..]].concat();
            samples.push(Sample {
                instruction: record.instruction.clone(),
                input: record.input.clone(),
                output: record.output.clone(),
                labels: labels(&input_ids, masked),
                input_ids,
                input_ids_no_response: prompt,
            });
        }
    }
    length_stats(&samples, &mut stats);
    Ok((samples, stats))
}
