//! The data cache's files: one entry per content key under `data/.cache/<key>/`, written complete or
//! not at all, and `ftexp prepare --export`'s JSONL files.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::samples::{Conversation, Prepared, Sample, Split, SplitStats, IGNORE};
use crate::error::Problems;

/// The splits of an entry, the conversations of a chat data set beside them (empty otherwise), and
/// the statistics.
pub struct Entry<'a> {
    pub splits: &'a BTreeMap<String, Vec<Sample>>,
    pub chats: &'a BTreeMap<String, Vec<Conversation>>,
    pub stats: &'a BTreeMap<String, SplitStats>,
}

/// Writes the entry into a private temporary directory, then renames it into place: readers see a
/// complete entry or none, and of two processes preparing the same key one rename wins.
pub fn store(root: &Path, key: &str, entry: &Entry) -> Result<(), Problems> {
    let io = |e: std::io::Error| Problems::io(format!("{}: cannot write the data cache: {e}", root.display()));
    std::fs::create_dir_all(root).map_err(io)?;
    crate::experiment::clean_stale(root);
    let tmp = root.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io)?;
    let written = (|| {
        for (name, samples) in entry.splits {
            write_cached(&tmp, name, samples, entry.chats.get(name).map(Vec::as_slice).unwrap_or(&[]))?;
        }
        std::fs::write(tmp.join(RUNS_MARKER), "supervised runs\n")?;
        std::fs::write(tmp.join("stats.json"), serde_json::to_string_pretty(entry.stats)?)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(e));
    }
    let target = root.join(key);
    if std::fs::rename(&tmp, &target).is_err() {
        // Another process stored the same key first; its entry is identical.
        let _ = std::fs::remove_dir_all(&tmp);
        if !target.join("stats.json").is_file() {
            return Err(Problems::one(format!("{}: cannot store the prepared data", target.display())));
        }
    }
    Ok(())
}

/// Marks an entry whose ids files hold supervised runs. Entries written before (by ftexp-data-2, which
/// runs prepared before chat data still name) hold `length, prompt length, masked length, ids…`.
const RUNS_MARKER: &str = "runs";

/// The supervised runs of `labels`: `[start, end)` ranges of positions whose label counts.
pub fn supervised_runs(labels: &[i64]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &l) in labels.iter().chain([IGNORE].iter()).enumerate() {
        match (l != IGNORE, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// The labels of `input_ids` that count only inside `runs`.
pub fn labels_in(input_ids: &[u32], runs: &[(usize, usize)]) -> Vec<i64> {
    let mut labels = vec![IGNORE; input_ids.len()];
    for &(s, e) in runs {
        for i in s..e.min(input_ids.len()) {
            labels[i] = input_ids[i] as i64;
        }
    }
    labels
}

/// A cached split is two files: `<split>.ids`, per sample the little-endian u32s `length, prompt
/// length, runs, (start, end) × runs, ids…` (labels are the ids inside the supervised runs), and
/// `<split>.text.jsonl`, per sample `[instruction, input, output]` (and the conversation for chat
/// data). Binary ids load ten times faster than JSON ones, and `ftexp prepare --export` writes the
/// seed's JSONL fields from them.
fn write_cached(dir: &Path, name: &str, samples: &[Sample], chats: &[Conversation]) -> std::io::Result<()> {
    let tokens: usize = samples.iter().map(|s| s.input_ids.len() + 5).sum();
    let mut ids = Vec::with_capacity(tokens * 4);
    let mut text = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.text.jsonl")))?);
    for (i, s) in samples.iter().enumerate() {
        let runs = supervised_runs(&s.labels);
        let head = [s.input_ids.len(), s.input_ids_no_response.len(), runs.len()];
        let words = head.into_iter().chain(runs.iter().flat_map(|&(a, b)| [a, b])).map(|v| v as u32);
        for v in words.chain(s.input_ids.iter().copied()) {
            ids.extend_from_slice(&v.to_le_bytes());
        }
        match chats.get(i) {
            Some(chat) => serde_json::to_writer(&mut text, &(&s.instruction, &s.input, &s.output, chat))?,
            None => serde_json::to_writer(&mut text, &(&s.instruction, &s.input, &s.output))?,
        }
        text.write_all(b"\n")?;
    }
    text.flush()?;
    std::fs::write(dir.join(format!("{name}.ids")), ids)
}

type CachedSplit = (Vec<Sample>, Vec<Conversation>);

fn read_cached(dir: &Path, name: &str, with_runs: bool) -> Result<CachedSplit, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(dir.join(format!("{name}.ids")))?;
    let words: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let text = std::fs::read_to_string(dir.join(format!("{name}.text.jsonl")))?;
    let (mut samples, mut chats) = (Vec::new(), Vec::new());
    let mut at = 0;
    let word = |i: usize| words.get(i).map(|&w| w as usize).ok_or("truncated ids file");
    for line in text.lines() {
        let fields: Vec<Value> = serde_json::from_str(line)?;
        let string = |i: usize| fields.get(i).and_then(Value::as_str).map(String::from).ok_or("bad text line");
        if let Some(chat) = fields.get(3) {
            chats.push(serde_json::from_value(chat.clone())?);
        }
        let (len, prompt, third) = (word(at)?, word(at + 1)?, word(at + 2)?);
        let (runs, first): (Vec<(usize, usize)>, usize) = if with_runs {
            let runs = (0..third).map(|r| Ok((word(at + 3 + 2 * r)?, word(at + 4 + 2 * r)?)));
            (runs.collect::<Result<_, &str>>()?, at + 3 + 2 * third)
        } else {
            // The old layout: the third word is how many leading positions are masked.
            ((third < len).then_some((third, len)).into_iter().collect(), at + 3)
        };
        let input_ids = words.get(first..first + len).ok_or("truncated ids file")?.to_vec();
        if prompt > len || runs.iter().any(|&(s, e)| s > e || e > len) {
            return Err("corrupt ids file".into());
        }
        at = first + len;
        samples.push(Sample {
            instruction: string(0)?,
            input: string(1)?,
            output: string(2)?,
            labels: labels_in(&input_ids, &runs),
            input_ids_no_response: input_ids[..prompt].to_vec(),
            input_ids,
        });
    }
    if at != words.len() {
        return Err("ids and texts disagree".into());
    }
    Ok((samples, chats))
}

pub fn load(dir: &Path, key: &str) -> Result<Prepared, Box<dyn std::error::Error>> {
    let stats: BTreeMap<String, SplitStats> = serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json"))?)?;
    let (mut splits, mut chats) = (BTreeMap::new(), BTreeMap::new());
    for name in Split::ALL.map(Split::name) {
        let (samples, chat) = read_cached(dir, name, dir.join(RUNS_MARKER).is_file())?;
        splits.insert(name.to_string(), samples);
        if !chat.is_empty() {
            chats.insert(name.to_string(), chat);
        }
    }
    Ok(Prepared { key: key.to_string(), dir: dir.to_path_buf(), reused: true, splits, chats, stats })
}

fn write_jsonl(path: &Path, samples: &[Sample], chats: &[Conversation]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    /// A chat sample: the seed's fields in their order, then the conversation.
    #[derive(serde::Serialize)]
    struct WithChat<'a> {
        #[serde(flatten)]
        sample: &'a Sample,
        messages: &'a Conversation,
    }
    for (i, s) in samples.iter().enumerate() {
        match chats.get(i) {
            Some(messages) => serde_json::to_writer(&mut out, &WithChat { sample: s, messages })?,
            None => serde_json::to_writer(&mut out, s)?,
        }
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes `train.jsonl`, `val.jsonl` and `test.jsonl` with the seed's fields into `out` (and, for
/// chat data, each sample's `messages`).
pub fn export(prepared: &Prepared, out: &Path) -> Result<(), Problems> {
    let io = |e: std::io::Error| Problems::io(format!("{}: cannot write: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(io)?;
    for split in Split::ALL {
        let chats = prepared.chats.get(split.name()).map(Vec::as_slice).unwrap_or(&[]);
        write_jsonl(&out.join(format!("{split}.jsonl")), prepared.split(split), chats).map_err(io)?;
    }
    Ok(())
}
