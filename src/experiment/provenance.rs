//! What a run was made from, recorded so that later uses of the run can insist on exactly that: the
//! base model's files (size, modification time and SHA-256 of each config, tokenizer and weight file).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Problems;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(from = "Recorded")]
pub struct FileRecord {
    pub sha256: String,
    pub bytes: u64,
    /// Seconds since the epoch; a file with the same size and time is taken as unchanged without
    /// hashing it again (as make and rsync do).
    pub modified: u64,
}

/// A file's record as run.json holds it: runs made before ftexp recorded sizes and times hold the
/// SHA-256 alone (their files are then hashed to be checked).
#[derive(Deserialize)]
#[serde(untagged)]
enum Recorded {
    Full { sha256: String, bytes: u64, modified: u64 },
    Sha(String),
}

impl From<Recorded> for FileRecord {
    fn from(r: Recorded) -> FileRecord {
        match r {
            Recorded::Full { sha256, bytes, modified } => FileRecord { sha256, bytes, modified },
            Recorded::Sha(sha256) => FileRecord { sha256, bytes: u64::MAX, modified: 0 },
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some((meta.len(), modified))
}

fn sha256(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(format!("{:x}", hasher.finalize()))
}

/// The record of the `.json` and `.safetensors` files in `dir`.
pub fn record(dir: &Path) -> BTreeMap<String, FileRecord> {
    record_where(dir, |n| n.ends_with(".json") || n.ends_with(".safetensors"))
}

/// The record of the files in `dir` whose name passes `keep` (hidden files left out).
pub fn record_where(dir: &Path, keep: impl Fn(&str) -> bool) -> BTreeMap<String, FileRecord> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n) && !n.starts_with('.'))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| {
            let path = dir.join(&n);
            let (bytes, modified) = stamp(&path)?;
            Some((n, FileRecord { sha256: sha256(&path)?, bytes, modified }))
        })
        .collect()
}

/// The first file of `dir` that is missing or no longer what `recorded` says, and how it changed.
pub fn first_change(dir: &Path, recorded: &BTreeMap<String, FileRecord>) -> Option<(std::path::PathBuf, String)> {
    for (name, want) in recorded {
        let path = dir.join(name);
        let changed = match stamp(&path) {
            None => Some("is missing".to_string()),
            Some((bytes, modified)) if (bytes, modified) == (want.bytes, want.modified) => None,
            Some(_) => match sha256(&path) {
                Some(sha) if sha == want.sha256 => None,
                Some(sha) => Some(format!("changed (sha256 {} then, now {})", &want.sha256[..12], &sha[..12])),
                None => Some("cannot be read".to_string()),
            },
        };
        if let Some(how) = changed {
            return Some((path, how));
        }
    }
    None
}

/// `Err` naming the first file of `dir` that is missing or no longer what `recorded` says.
pub fn verify(dir: &Path, recorded: &BTreeMap<String, FileRecord>) -> Result<(), Problems> {
    match first_change(dir, recorded) {
        None => Ok(()),
        Some((path, how)) => Err(Problems::one(format!(
            "{}: {how} since the run was trained on this base; its trained weights belong to that base (pass --allow-changed-base to use it anyway)",
            path.display()
        ))),
    }
}
