//! Data preparation: templates, masks, length policy, seeded split, cache, and bad input.
use std::path::Path;

use ftexp::config::{Columns, DataConfig, DataFormat, LongSamples, SplitRatios, TrainOn};
use ftexp::data::prepare::{cache_key, prepare, split_indices, Inputs, IGNORE};
use ftexp::data::{prompt, Record, Split};
use ftexp::tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::common::{fixtures, ftexp, stderr, stdout, tree};

fn tokenizer_dir() -> std::path::PathBuf {
    fixtures().join("models/llama")
}

pub fn data_config(path: &Path) -> DataConfig {
    let column = |name: &str| name.to_string();
    DataConfig {
        path: path.display().to_string(),
        columns: Columns {
            instruction: column("instruction"),
            input: column("input"),
            output: column("output"),
            messages: column("messages"),
            role: column("role"),
            content: column("content"),
            user: column("user"),
            assistant: column("assistant"),
            system: column("system"),
        },
        format: DataFormat::Alpaca,
        prompt_style: "alpaca".into(),
        split: SplitRatios { train: 0.5, val: 0.25, test: 0.25 },
        max_seq_length: 512,
        long_samples: LongSamples::Truncate,
        mask_inputs: true,
        chat_template: None,
        train_on: TrainOn::Assistant,
        packing: false,
    }
}

fn record(instruction: &str, input: &str, output: &str) -> Record {
    Record { instruction: instruction.into(), input: input.into(), output: output.into() }
}

#[test]
fn prompt_styles_render_exactly() {
    let with = record("Sort the list.", "3 1 2", "1 2 3");
    let without = record("Name a herb.", "", "basil");
    assert_eq!(
        prompt::render("alpaca", &with),
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nSort the list.\n\n### Input:\n3 1 2\n\n### Response:\n"
    );
    assert_eq!(
        prompt::render("alpaca", &without),
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nName a herb.\n\n### Response:\n"
    );
    assert_eq!(prompt::render("plain", &with), "Sort the list.\n\n3 1 2\n\n");
    assert_eq!(prompt::render("plain", &without), "Name a herb.\n\n");
    assert_eq!(prompt::render("none", &with), "Sort the list.");
    assert_eq!(prompt::render("Q: {instruction} [{input}]\nA:", &with), "Q: Sort the list. [3 1 2]\nA:");
    // braces inside the record are not placeholders
    let tricky = record("Write {input} literally.", "x", "ok");
    assert_eq!(prompt::render("<{instruction}|{input}>", &tricky), "<Write {input} literally.|x>");
}

fn write_rows(dir: &Path, rows: &Value) -> std::path::PathBuf {
    let path = dir.join("rows.json");
    std::fs::write(&path, serde_json::to_string(rows).unwrap()).unwrap();
    path
}

#[test]
fn tokens_labels_and_masks_are_exactly_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let long = "flour and sugar ".repeat(60);
    let rows = json!([
        {"instruction": "Which aisle stocks basil?", "input": "", "output": "Spices"},
        {"instruction": "Double this quantity.", "input": "3 tbsp butter", "output": "6 tbsp butter"},
        {"instruction": "Traduis: crème brûlée ☕", "input": "naïve café — 東京", "output": "déjà vu ✓"},
        {"instruction": "Write a long list.", "output": long.trim(), "extra": 5},
    ]);
    let path = write_rows(dir.path(), &rows);
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir()).unwrap();
    let eos = tokenizer.eos_ids[0];
    for mask in [true, false] {
        let mut data = data_config(&path);
        data.split = SplitRatios { train: 1.0, val: 0.0, test: 0.0 };
        data.mask_inputs = mask;
        let tf = tokenizer_dir().join("tokenizer.json");
        let inputs = Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None };
        let p = prepare(&inputs, &dir.path().join("cache")).unwrap();
        let again = prepare(&inputs, &dir.path().join("cache")).unwrap();
        assert!(!p.reused && again.reused);
        assert_eq!(again.splits, p.splits, "the cache gives back exactly the prepared samples");
        let train = p.split(Split::Train);
        assert_eq!(train.len(), 4);
        for s in train {
            let r = record(&s.instruction, &s.input, &s.output);
            let prompt_text = prompt::render("alpaca", &r);
            assert_eq!(tokenizer.inner.decode(&s.input_ids_no_response, false).unwrap(), prompt_text);
            let response = tokenizer.encode(&s.output, false).unwrap();
            assert_eq!(s.input_ids, [&s.input_ids_no_response[..], &response[..], &[eos]].concat());
            assert_eq!(s.labels.len(), s.input_ids.len());
            for (i, (&label, &id)) in s.labels.iter().zip(&s.input_ids).enumerate() {
                let masked = mask && i < s.input_ids_no_response.len();
                assert_eq!(label, if masked { IGNORE } else { id as i64 }, "position {i}");
            }
        }
    }
}

#[test]
fn long_samples_are_truncated_with_eos_or_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rows = json!([
        {"instruction": "Short.", "output": "ok"},
        {"instruction": "Long answer.", "output": "tea and coffee ".repeat(40)},
        {"instruction": "A very long question ".repeat(40), "output": "no room"},
    ]);
    let path = write_rows(dir.path(), &rows);
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir()).unwrap();
    let tf = tokenizer_dir().join("tokenizer.json");
    let eos = tokenizer.eos_ids[0];
    let mut data = data_config(&path);
    data.split = SplitRatios { train: 1.0, val: 0.0, test: 0.0 };
    data.max_seq_length = 80;
    data.prompt_style = "none".into();
    let p = prepare(
        &Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None },
        &dir.path().join("c"),
    )
    .unwrap();
    let stats = &p.stats["train"];
    assert_eq!((stats.records, stats.samples, stats.truncated, stats.dropped), (3, 2, 1, 1));
    let cut = p.split(Split::Train).iter().find(|s| s.instruction == "Long answer.").unwrap();
    assert_eq!(cut.input_ids.len(), 80);
    assert_eq!(*cut.input_ids.last().unwrap(), eos, "EOS stays last after truncation");
    assert_eq!(*cut.labels.last().unwrap(), eos as i64);
    assert!(stats.max_tokens <= 80);

    data.long_samples = LongSamples::Drop;
    let p = prepare(
        &Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None },
        &dir.path().join("c"),
    )
    .unwrap();
    assert!(!p.reused, "the policy is part of the cache key");
    let stats = &p.stats["train"];
    assert_eq!((stats.samples, stats.truncated, stats.dropped), (1, 0, 2));
}

#[test]
fn split_is_seeded_and_follows_the_ratios() {
    let mut data = data_config(Path::new("unused"));
    data.split = SplitRatios { train: 0.8, val: 0.1, test: 0.1 };
    let a = split_indices(1001, &data, 42);
    assert_eq!((a["train"].len(), a["val"].len(), a["test"].len()), (801, 100, 100));
    assert_eq!(a, split_indices(1001, &data, 42));
    assert_ne!(a["val"], split_indices(1001, &data, 43)["val"]);
    let mut all: Vec<usize> = a.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1001).collect::<Vec<_>>(), "every record in exactly one split");
}

fn project(rows: &Value, extra: &str) -> tempfile::TempDir {
    let config = format!(
        "name = \"d\"\nseed = 3\n[model]\ncheckpoint = \"{}\"\n[data]\npath = \"rows.json\"\nsplit = {{ train = 0.6, val = 0.2, test = 0.2 }}\n{extra}",
        tokenizer_dir().display()
    );
    tree(&[("exp.toml", &config), ("rows.json", &serde_json::to_string(rows).unwrap())])
}

fn demo_rows(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"instruction": format!("Double {i}."), "input": "", "output": format!("{}", 2 * i)}))
            .collect(),
    )
}

fn cache_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("data/.cache"))
        .map_or(vec![], |r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
}

#[test]
fn split_is_identical_across_processes_and_changes_with_the_seed() {
    let a = project(&demo_rows(50), "");
    let b = project(&demo_rows(50), "");
    for p in [&a, &b] {
        let out = ftexp(p.path(), &["prepare", "exp.toml", "--export", "out"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("⟦"), "{}", stdout(&out));
    }
    for split in ["train", "val", "test"] {
        let read = |p: &tempfile::TempDir| std::fs::read(p.path().join(format!("out/{split}.jsonl"))).unwrap();
        assert_eq!(read(&a), read(&b), "{split} differs between two processes");
    }
    let text = std::fs::read_to_string(a.path().join("out/train.jsonl")).unwrap();
    let first = text.lines().next().unwrap();
    let fields = ["instruction", "input", "output", "input_ids", "input_ids_no_response", "labels"];
    let positions: Vec<usize> = fields.iter().map(|f| first.find(&format!("\"{f}\":")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "the seed's fields, in its order: {first}");
    assert_eq!(serde_json::from_str::<Value>(first).unwrap().as_object().unwrap().len(), 6);
    let out = ftexp(a.path(), &["prepare", "exp.toml", "--set", "seed=4", "--export", "out4"], &[]);
    assert!(out.status.success());
    assert_ne!(
        std::fs::read(a.path().join("out/val.jsonl")).unwrap(),
        std::fs::read(a.path().join("out4/val.jsonl")).unwrap()
    );
}

#[test]
fn cache_is_reused_and_invalidated_by_every_key_part() {
    let p = project(&demo_rows(30), "");
    let key = |sets: &[&str]| -> (String, bool) {
        let mut args = vec!["prepare", "exp.toml", "--json"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = ftexp(p.path(), &args, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
        (json["key"].as_str().unwrap().to_string(), json["reused"].as_bool().unwrap())
    };
    let (base, reused) = key(&[]);
    assert!(!reused);
    assert_eq!(key(&[]), (base.clone(), true), "same inputs reuse the entry");
    let variants: &[&[&str]] = &[
        &["seed=9"],
        &["data.max_seq_length=300"],
        &["data.prompt_style=plain"],
        &["data.mask_inputs=false"],
        &["data.long_samples=drop"],
        &["data.split.val=0.3", "data.split.train=0.5"],
        &["data.columns.input=context"],
    ];
    let mut seen = vec![base.clone()];
    for v in variants {
        let (k, reused) = key(v);
        assert!(!reused && !seen.contains(&k), "{v:?} must change the key");
        seen.push(k);
    }
    std::fs::write(p.path().join("rows.json"), serde_json::to_string(&demo_rows(31)).unwrap()).unwrap();
    let (k, reused) = key(&[]);
    assert!(!reused && !seen.contains(&k), "new data content, new key");
    // a different tokenizer file, same everything else
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir()).unwrap();
    let other = fixtures().join("models/gpt-neox/tokenizer.json");
    let mut data = data_config(&p.path().join("rows.json"));
    let same = tokenizer_dir().join("tokenizer.json");
    let k1 =
        cache_key(&Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &same, hub: None }).unwrap();
    std::fs::write(
        p.path().join("tok.json"),
        std::fs::read_to_string(&other).unwrap().replace("\"model\"", "\"model\" "),
    )
    .unwrap();
    let k2 = cache_key(&Inputs {
        data: &data,
        seed: 1,
        tokenizer: &tokenizer,
        tokenizer_file: &p.path().join("tok.json"),
        hub: None,
    })
    .unwrap();
    assert_ne!(k1, k2);
    data.max_seq_length += 1;
    assert_ne!(
        k1,
        cache_key(&Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &same, hub: None }).unwrap()
    );
    assert!(cache_entries(p.path()).iter().all(|e| !e.starts_with(".tmp")));
}

#[test]
fn concurrent_prepares_of_one_key_share_one_entry() {
    let p = project(&demo_rows(200), "");
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(crate::common::BIN)
                .current_dir(p.path())
                .args(["prepare", "exp.toml", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(cache_entries(p.path()).len(), 1, "{:?}", cache_entries(p.path()));
}

#[test]
fn bad_input_is_one_line_naming_file_and_row_and_leaves_no_cache() {
    let cases: &[(&str, &str)] = &[
        ("[{\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\" \"output\": \"d\"}]", "rows.json:2:22: invalid JSON: expected `,` or `}`"),
        ("[{\"instruction\": \"a\", \"output\": \"b\"}, {\"output\": \"d\"}]", "rows.json: record 2: missing `instruction`"),
        ("[{\"instruction\": \"a\", \"output\": 5}]", "rows.json: record 1: `output` must be a string, found a number"),
        ("{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"input\": [1], \"output\": \"b\"}\n", "rows.json: record 2 (line 2): `input` must be a string, found an array"),
        ("{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \n", "rows.json:2:"),
        ("  \n", "rows.json: the file is empty"),
    ];
    for (text, expected) in cases {
        let p = project(&json!([]), "");
        std::fs::write(p.path().join("rows.json"), text).unwrap();
        let out = ftexp(p.path(), &["prepare", "exp.toml"], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(expected), "{err} lacks {expected}");
        assert!(cache_entries(p.path()).is_empty());
    }
    let p = project(&demo_rows(5), "");
    std::fs::remove_file(p.path().join("rows.json")).unwrap();
    let out = ftexp(p.path(), &["prepare", "exp.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("rows.json: data file not found; check `data.path`"), "{}", stderr(&out));
    let p = project(&demo_rows(2), "");
    let out = ftexp(p.path(), &["prepare", "exp.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("data.split.val = 0.2 gives 0 of the 2 records"), "{}", stderr(&out));
    assert!(cache_entries(p.path()).is_empty());
}

#[test]
fn columns_map_other_field_names() {
    let rows = json!([{"question": "Q1", "context": "c", "answer": "A1"}, {"question": "Q2", "answer": "A2"}]);
    let p = project(&rows, "columns = { instruction = \"question\", input = \"context\", output = \"answer\" }\n");
    let sets = ["--set", "data.split.train=1", "--set", "data.split.val=0", "--set", "data.split.test=0"];
    let out = ftexp(p.path(), &[&["prepare", "exp.toml", "--export", "out"][..], &sets].concat(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(p.path().join("out/train.jsonl")).unwrap();
    assert!(text.contains("\"instruction\":\"Q1\",\"input\":\"c\",\"output\":\"A1\""), "{text}");
    assert!(text.contains("\"instruction\":\"Q2\",\"input\":\"\",\"output\":\"A2\""), "{text}");
}

/// The same Alpaca records as a JSON array, a Parquet file (pyarrow's, snappy), a CSV file and a
/// directory of shards (JSON Lines and CSV, read in name order) prepare to the same samples and split.
#[test]
fn json_parquet_csv_and_shard_directories_give_the_same_samples() {
    let json_path = fixtures().join("data/alpaca.json");
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let csv_of = |rows: &[Value]| {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["instruction", "input", "output"]).unwrap();
        for r in rows {
            w.write_record(["instruction", "input", "output"].map(|k| r[k].as_str().unwrap())).unwrap();
        }
        String::from_utf8(w.into_inner().unwrap()).unwrap()
    };
    let jsonl: Vec<String> = records[..10].iter().map(Value::to_string).collect();
    let dir = tree(&[
        ("rows.csv", &csv_of(&records)),
        ("shards/part-1.jsonl", &jsonl.join("\n")),
        ("shards/part-2.csv", &csv_of(&records[10..])),
        ("shards/README.md", "not data"),
    ]);
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir()).unwrap();
    let tf = tokenizer_dir().join("tokenizer.json");
    let prepared = |path: &Path| {
        let data = data_config(path);
        prepare(
            &Inputs { data: &data, seed: 4, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None },
            &dir.path().join("c"),
        )
        .unwrap()
    };
    let reference = prepared(&json_path);
    assert_eq!(reference.split(Split::Train).len(), 12);
    for path in [fixtures().join("data/alpaca.parquet"), dir.path().join("rows.csv"), dir.path().join("shards")] {
        let p = prepared(&path);
        assert_eq!(p.splits, reference.splits, "{}", path.display());
        assert_ne!(p.key, reference.key);
    }
    // A CSV file without the mapped column names it and the key to set.
    let mut data = data_config(&dir.path().join("rows.csv"));
    data.columns.output = "answer".into();
    let err = prepare(
        &Inputs { data: &data, seed: 4, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None },
        &dir.path().join("c"),
    )
    .unwrap_err();
    assert!(err.0[0].ends_with("rows.csv: has no column `answer` (its columns: `instruction`, `input`, `output`); set `data.columns.output` to the column that holds it"), "{}", err.0[0]);
}

/// A cache entry written before chat data (ids as `length, prompt length, masked length, ids…`, no
/// `runs` marker) still loads, so runs prepared then keep evaluating and resuming on their splits.
#[test]
fn cache_entries_of_the_previous_layout_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let entry = dir.path().join("0123456789abcdef");
    std::fs::create_dir_all(&entry).unwrap();
    let words: Vec<u32> = vec![4, 2, 2, 10, 11, 12, 13, 3, 1, 0, 20, 21, 22];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(entry.join("train.ids"), bytes).unwrap();
    std::fs::write(entry.join("train.text.jsonl"), "[\"Double 2.\",\"\",\"4\"]\n[\"a\",\"b\",\"c\"]\n").unwrap();
    for split in ["val", "test"] {
        std::fs::write(entry.join(format!("{split}.ids")), []).unwrap();
        std::fs::write(entry.join(format!("{split}.text.jsonl")), "").unwrap();
    }
    std::fs::write(entry.join("stats.json"), "{}").unwrap();
    let p = ftexp::data::prepare::load_entry(dir.path(), "0123456789abcdef").unwrap();
    let train = p.split(Split::Train);
    assert_eq!(train.len(), 2);
    assert_eq!(
        (train[0].input_ids.clone(), train[0].labels.clone()),
        (vec![10, 11, 12, 13], vec![IGNORE, IGNORE, 12, 13])
    );
    assert_eq!(train[0].input_ids_no_response, [10, 11]);
    assert_eq!((train[1].output.as_str(), train[1].labels.clone()), ("c", vec![20, 21, 22]));
}

/// A CSV quote that opens in a line's last field and never closes is refused at that line (it would
/// swallow the rest of the file), while quoted fields that span lines or hold `""` still read.
#[test]
fn a_csv_quote_that_never_closes_is_refused_at_its_line() {
    let header = "instruction,input,output\n";
    let fine = "\"Double 1.\",,2\n\"Say \"\"hi\"\"\",\"two\nlines\",hi\nDouble 3.,,6\n";
    let open = "Double 4.,,\"8\nDouble 5.,,10\nDouble 6.,,12\n";
    let p = project(&json!([]), "");
    std::fs::write(p.path().join("rows.csv"), format!("{header}{fine}{fine}")).unwrap();
    let sets = ["--set", "data.path=rows.csv"];
    let out = ftexp(p.path(), &["prepare", "exp.toml", sets[0], sets[1]], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(p.path().join("rows.csv"), format!("{header}{fine}{open}")).unwrap();
    let out = ftexp(p.path(), &["prepare", "exp.toml", sets[0], sets[1]], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("rows.csv:6: a quoted field opens on this line and its quote never closes"), "{err}");
    assert!(err.contains("close the field with `\"`"), "{err}");
}

/// A damaged Parquet file (cut short, its footer or its middle changed: some of these make the
/// Parquet reader panic) is one user error naming the file, never a panic or a libtorch error.
#[test]
fn a_damaged_parquet_file_is_a_user_error_naming_it() {
    let good = std::fs::read(fixtures().join("data/alpaca.parquet")).unwrap();
    let flip = |at: usize, mask: u8| {
        let mut b = good.clone();
        b[at] ^= mask;
        b
    };
    let n = good.len();
    let cases = [
        ("cut in half", good[..n / 2].to_vec()),
        ("cut before the footer", good[..n - 3].to_vec()),
        ("footer length", flip(n - 6, 0xff)),
        ("footer metadata", flip(n - 40, 0xff)),
        ("middle, a page", flip(n / 2, 0xff)),
        ("metadata: a column's offset", flip(505, 0x01)),
        ("metadata: a column's encoding", flip(510, 0xff)),
    ];
    let p = project(&json!([]), "");
    for (what, bytes) in cases {
        std::fs::write(p.path().join("rows.parquet"), bytes).unwrap();
        let out = ftexp(p.path(), &["prepare", "exp.toml", "--set", "data.path=rows.parquet"], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(err.contains("rows.parquet: cannot read as Parquet ("), "{what}: {err}");
        assert!(err.contains("the file is damaged or not Parquet"), "{what}: {err}");
        assert!(!err.contains("libtorch") && !err.contains("panicked"), "{what}: {err}");
        assert!(cache_entries(p.path()).is_empty());
    }
}
