//! Hub data sets (`data.path = "hf://datasets/…"`) from the fake hub of `hub.rs`: a Parquet Alpaca
//! file and a JSON Lines chat file downloaded into the hub cache, prepared, split identically on a
//! second run, and downloaded again only when the revision points to a new commit.
use std::path::Path;

use serde_json::Value;

use crate::common::{fixtures, ftexp, stderr, stdout, tree};
use crate::hub::{FakeHub, FakeRepo};

fn repo(sha: &str, alpaca: Vec<u8>) -> FakeRepo {
    let files = [
        ("alpaca/train.parquet", alpaca),
        ("chat/train.jsonl", std::fs::read(fixtures().join("data/chat.jsonl")).unwrap()),
        ("README.md", b"# data\n".to_vec()),
        (".gitattributes", b"*.parquet filter=lfs\n".to_vec()),
    ];
    let mut r = FakeRepo::new("datasets/org/data", &files);
    r.sha = sha.to_string();
    r
}

fn prepare(dir: &Path, config: &str, hub: &FakeHub) -> Value {
    let env = [("HF_ENDPOINT", hub.endpoint.as_str()), ("HF_HOME", "hf"), ("HF_TOKEN", "")];
    let out = ftexp(dir, &["prepare", config, "--json", "--export", "out"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["train"] = Value::String(std::fs::read_to_string(dir.join("out/train.jsonl")).unwrap());
    v
}

fn downloaded(hub: &FakeHub) -> Vec<String> {
    hub.seen().into_iter().filter(|s| s.transferred_body()).map(|s| s.path).collect()
}

#[test]
fn hub_data_sets_are_downloaded_cached_split_identically_and_refetched_on_a_new_revision() {
    let alpaca = format!(
        "[model]\ncheckpoint = \"{}\"\n[data]\npath = \"hf://datasets/org/data/alpaca/train.parquet\"\n",
        fixtures().join("models/llama").display()
    );
    let chat = format!(
        "[model]\ncheckpoint = \"{}\"\n[data]\nformat = \"chat\"\npath = \"hf://datasets/org/data@main/chat/*.jsonl\"\ncolumns = {{ messages = \"conversations\", role = \"from\", content = \"value\", user = \"human\", assistant = \"gpt\" }}\n",
        fixtures().join("chat/llama3").display()
    );
    let p = tree(&[("alpaca.toml", &alpaca), ("chat.toml", &chat)]);
    let parquet = std::fs::read(fixtures().join("data/alpaca.parquet")).unwrap();
    let sha1 = "1111111111111111111111111111111111111111";
    let hub = FakeHub::start(vec![repo(sha1, parquet.clone())]);
    let first = prepare(p.path(), "alpaca.toml", &hub);
    assert_eq!(first["reused"], false);
    assert_eq!(
        downloaded(&hub),
        ["/datasets/org/data/resolve/1111111111111111111111111111111111111111/alpaca/train.parquet"]
    );
    let records: u64 = first["splits"].as_object().unwrap().values().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(records, 24);
    assert!(p.path().join("hf/hub/datasets--org--data").is_dir());

    // Again, and again with the data cache gone: no download, the same key and split.
    let again = prepare(p.path(), "alpaca.toml", &hub);
    assert_eq!((&again["key"], &again["reused"]), (&first["key"], &Value::Bool(true)));
    std::fs::remove_dir_all(p.path().join("data/.cache")).unwrap();
    let rebuilt = prepare(p.path(), "alpaca.toml", &hub);
    assert_eq!(
        (&rebuilt["key"], &rebuilt["reused"], &rebuilt["train"]),
        (&first["key"], &Value::Bool(false), &first["train"])
    );
    let chats = prepare(p.path(), "chat.toml", &hub);
    let records: u64 = chats["splits"].as_object().unwrap().values().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(records, 12);
    assert_eq!(downloaded(&hub).len(), 2, "{:?}", downloaded(&hub));
    drop(hub);

    // main now points to a new commit: downloaded again, a new cache entry.
    let hub = FakeHub::start(vec![repo("2222222222222222222222222222222222222222", parquet)]);
    let moved = prepare(p.path(), "alpaca.toml", &hub);
    assert_eq!(downloaded(&hub).len(), 1);
    assert_ne!(moved["key"], first["key"]);
    assert_eq!(moved["reused"], false);

    // A glob that matches nothing names the data set, its commit and the pattern.
    let out = ftexp(
        p.path(),
        &["prepare", "alpaca.toml", "--set", "data.path=hf://datasets/org/data/nothing/*.parquet"],
        &[("HF_ENDPOINT", hub.endpoint.as_str()), ("HF_HOME", "hf")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has no data files (.json, .jsonl, .csv, .parquet) matching `nothing/*.parquet`"), "{err}");

    // Offline (the hub gone, or HF_HUB_OFFLINE): the revision's last download, the same key.
    let endpoint = hub.endpoint.clone();
    drop(hub);
    std::fs::remove_dir_all(p.path().join("data/.cache")).unwrap();
    for offline in ["0", "1"] {
        let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", "hf"), ("HF_HUB_OFFLINE", offline)];
        let out = ftexp(p.path(), &["prepare", "alpaca.toml", "--json"], &env);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(serde_json::from_str::<Value>(&stdout(&out)).unwrap()["key"], moved["key"]);
    }
    let out = ftexp(
        p.path(),
        &["prepare", "alpaca.toml", "--set", "data.path=hf://datasets/org/other"],
        &[("HF_HOME", "hf"), ("HF_HUB_OFFLINE", "1")],
    );
    assert!(stderr(&out).contains("HF_HUB_OFFLINE is set and the hub cache"), "{}", stderr(&out));
}
