//! The prepared data's types, below every stage that makes or reads them: samples with their labels,
//! the splits and their statistics, and the conversations of a chat data set.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::SplitRatios;
use crate::error::Problems;

/// The three parts a data set is split into (`data.split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// `train`, `val` or `test`: the name in `data.split`, the cache and run.json.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Split, String> {
        Split::ALL
            .into_iter()
            .find(|split| split.name() == s)
            .ok_or_else(|| format!("\"{s}\" is not a split: train, val or test"))
    }
}

/// The label of a position that does not count in the loss.
pub const IGNORE: i64 = -100;

/// One turn of a conversation, with the role named as chat templates expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub type Conversation = Vec<Message>;

/// One prepared sample, with exactly the seed's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub input_ids: Vec<u32>,
    pub input_ids_no_response: Vec<u32>,
    pub labels: Vec<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    pub records: usize,
    pub samples: usize,
    pub truncated: usize,
    pub dropped: usize,
    pub min_tokens: usize,
    pub median_tokens: usize,
    pub p95_tokens: usize,
    pub max_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct Prepared {
    pub key: String,
    pub dir: PathBuf,
    /// Whether an existing cache entry was used.
    pub reused: bool,
    pub splits: BTreeMap<String, Vec<Sample>>,
    /// For a chat data set, each split's conversations, one per sample; empty otherwise.
    pub chats: BTreeMap<String, Vec<Conversation>>,
    pub stats: BTreeMap<String, SplitStats>,
}

impl Prepared {
    pub fn split(&self, split: Split) -> &[Sample] {
        self.splits.get(split.name()).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `Err` naming the cache entry when a token id is not below `vocab_size` (the model's embedding rows).
    pub fn check_ids(&self, vocab_size: i64) -> Result<(), Problems> {
        let ids = self.splits.values().flatten().flat_map(|s| s.input_ids.iter());
        match ids.max() {
            Some(&max) if i64::from(max) >= vocab_size => Err(Problems::one(format!(
                "{}: holds token id {max}, but the model has {vocab_size} token embeddings; the tokenizer does not match the model (model.tokenizer), or the cache entry is damaged (delete it and prepare again)",
                self.dir.display()
            ))),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitSizes {
    pub records: usize,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// Split sizes for `n` records: val and test are `n × ratio` rounded to the nearest whole record,
/// train takes the rest.
pub fn split_sizes(n: usize, split: SplitRatios) -> SplitSizes {
    let val = (n as f64 * split.val).round() as usize;
    let test = ((n as f64 * split.test).round() as usize).min(n - val);
    SplitSizes { records: n, train: n - val - test, val, test }
}

/// Fills in the sample count and token lengths (min, median, p95, max) of `samples`.
pub fn length_stats(samples: &[Sample], stats: &mut SplitStats) {
    let mut lengths: Vec<usize> = samples.iter().map(|s| s.input_ids.len()).collect();
    lengths.sort_unstable();
    if let (Some(&first), Some(&last)) = (lengths.first(), lengths.last()) {
        let at = |q: f64| lengths[((lengths.len() - 1) as f64 * q).round() as usize];
        (stats.min_tokens, stats.median_tokens, stats.p95_tokens, stats.max_tokens) = (first, at(0.5), at(0.95), last);
    }
    stats.samples = samples.len();
}

/// The labels of `input_ids` whose first `masked` positions are left out of the loss.
pub fn labels(input_ids: &[u32], masked: usize) -> Vec<i64> {
    input_ids.iter().enumerate().map(|(i, &id)| if i < masked { IGNORE } else { id as i64 }).collect()
}
