//! Hub downloads against a small fake hub: a real HTTP server on 127.0.0.1 (an ephemeral port) that
//! answers the routes and headers hf-hub uses, and records every request it saw.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ftexp::hub::{download_with, ensure_local_with, HubSettings};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

const TOKEN: &str = "hf_fake_secret_token_4711";

struct FakeFile {
    name: String,
    bytes: Vec<u8>,
}

pub(crate) struct FakeRepo {
    id: String,
    pub(crate) sha: String,
    files: Vec<FakeFile>,
    /// When set, the repo is gated: everything but the storage route needs `Bearer <token>`.
    token: Option<String>,
    /// A hostile mirror's answer for files: this commit header and this etag instead of the true ones.
    pub(crate) hostile: Option<(String, String)>,
    /// Only on `GET` requests, or only `redirect`ed: small files first answer a relative redirect with
    /// the true headers, and the hostile ones after it.
    pub(crate) hostile_when: Option<&'static str>,
}

impl FakeRepo {
    pub(crate) fn new(id: &str, files: &[(&str, Vec<u8>)]) -> Self {
        let sha = format!("{:016x}{:016x}{:08x}", fnv(id.as_bytes(), 1), fnv(id.as_bytes(), 2), files.len());
        let files = files.iter().map(|(n, b)| FakeFile { name: n.to_string(), bytes: b.clone() }).collect();
        FakeRepo { id: id.to_string(), sha, files, token: None, hostile: None, hostile_when: None }
    }

    fn file(&self, name: &str) -> Option<&FakeFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Weights are "large files": the resolve route redirects them to a storage route, as the real hub does.
fn is_large(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin")
}

fn fnv(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn etag_of(bytes: &[u8]) -> String {
    format!("{:016x}{:016x}", fnv(bytes, 7), fnv(bytes, 11))
}

#[derive(Clone, Debug)]
pub(crate) struct Seen {
    method: String,
    pub(crate) path: String,
    range: Option<String>,
    auth: Option<String>,
    status: u16,
    body_len: usize,
}

impl Seen {
    /// A request that sent (part of) a file body, not just the one-byte probe hf-hub makes for metadata.
    pub(crate) fn transferred_body(&self) -> bool {
        (self.path.contains("/resolve/") || self.path.starts_with("/storage/"))
            && self.range.as_deref() != Some("bytes=0-0")
            && self.body_len > 0
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn error(status: u16, code: &str, msg: &str) -> Reply {
        let body = json!({ "error": msg }).to_string().into_bytes();
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        if !code.is_empty() {
            headers.push(("X-Error-Code".to_string(), code.to_string()));
        }
        Reply { status, headers, body }
    }
}

/// The fake hub. Serves one connection at a time; stops when dropped, and by itself after a minute or
/// 400 connections, whichever comes first.
pub(crate) struct FakeHub {
    pub(crate) endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    pub(crate) fn start(repos: Vec<FakeRepo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Serves until the hub is dropped (also when a test panics), whatever the time it takes.
            let mut connections = 0;
            while !stop2.load(Ordering::SeqCst) && connections < 400 {
                match listener.accept() {
                    Ok((stream, _)) => {
                        connections += 1;
                        if let Some(s) = serve(stream, &repos, port) {
                            seen2.lock().unwrap().push(s);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        });
        FakeHub { endpoint: format!("http://127.0.0.1:{port}"), seen, stop, thread: Some(thread) }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request from `stream`, answers it and closes the connection.
fn serve(stream: TcpStream, repos: &[FakeRepo], port: u16) -> Option<Seen> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?).take(64 * 1024);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = BTreeMap::new();
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let path = path.replace("%2F", "/");
    let range = headers.get("range").cloned();
    let auth = headers.get("authorization").cloned();
    let reply = route(&format!("{method} {path}"), query, range.as_deref(), auth.as_deref(), repos, port);

    let mut out = stream;
    let mut head =
        format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", reply.status, reply.body.len());
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let body: &[u8] = if method == "HEAD" { &[] } else { &reply.body };
    let _ = out.write_all(head.as_bytes()).and_then(|()| out.write_all(body)).and_then(|()| out.flush());
    Some(Seen { method, path, range, auth, status: reply.status, body_len: body.len() })
}

fn route(request: &str, query: &str, range: Option<&str>, auth: Option<&str>, repos: &[FakeRepo], port: u16) -> Reply {
    let (method, path) = request.split_once(' ').unwrap();
    let find = |id: &str| repos.iter().find(|r| r.id == id);
    let authorized = |repo: &FakeRepo| repo.token.as_ref().is_none_or(|t| auth == Some(format!("Bearer {t}").as_str()));
    let revision_ok = |repo: &FakeRepo, rev: &str| rev == "main" || rev == repo.sha;

    // GET /api/models|datasets/<org>/<name>/revision/<rev>[?blobs=true]: the file list of a revision
    // (data set repos are named `datasets/<org>/<name>` here, as in their file routes).
    let dataset = path.strip_prefix("/api/datasets/").map(|rest| format!("datasets/{rest}"));
    if let Some(rest) = path.strip_prefix("/api/models/").or(dataset.as_deref()) {
        let Some((id, rev)) = rest.split_once("/revision/") else { return Reply::error(404, "", "no such route") };
        let Some(repo) = find(id) else { return Reply::error(404, "RepoNotFound", "Repository not found") };
        if !authorized(repo) {
            return Reply::error(401, "GatedRepo", "Access to this repo is restricted");
        }
        if !revision_ok(repo, rev) {
            return Reply::error(404, "RevisionNotFound", "Invalid rev id");
        }
        let blobs = query.split('&').any(|kv| kv == "blobs=true");
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|f| {
                let mut s = json!({ "rfilename": f.name });
                if blobs {
                    s["size"] = json!(f.bytes.len());
                    if is_large(&f.name) {
                        s["lfs"] = json!({ "size": f.bytes.len(), "sha256": etag_of(&f.bytes), "pointerSize": 134 });
                    }
                }
                s
            })
            .collect();
        let body = json!({ "id": repo.id, "modelId": repo.id, "sha": repo.sha, "siblings": siblings });
        return Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        };
    }

    // GET /storage/<org>/<name>/<file>: where large files are redirected to (no auth, like a signed URL).
    if let Some(rest) = path.strip_prefix("/storage/") {
        let Some((id, name)) = rest.rsplit_once('/') else { return Reply::error(404, "", "no such blob") };
        let Some(file) = find(id).and_then(|r| r.file(name)) else { return Reply::error(404, "", "no such blob") };
        return serve_bytes(&file.bytes, range, vec![]);
    }

    // GET /<org>/<name>/resolve/<rev>/<file>: a file, or a redirect to storage for large files.
    if let Some((id, rest)) = path.trim_start_matches('/').split_once("/resolve/") {
        let Some(repo) = find(id) else { return Reply::error(404, "RepoNotFound", "Repository not found") };
        if !authorized(repo) {
            return Reply::error(401, "GatedRepo", "Access to this repo is restricted");
        }
        let Some((rev, name)) = rest.split_once('/') else { return Reply::error(404, "", "no file") };
        if !revision_ok(repo, rev) {
            return Reply::error(404, "RevisionNotFound", "Invalid rev id");
        }
        let Some(file) = repo.file(name) else { return Reply::error(404, "EntryNotFound", "Entry not found") };
        let (true_sha, true_etag) = (repo.sha.clone(), format!("\"{}\"", etag_of(&file.bytes)));
        let moved = query.contains("moved");
        let hostile = repo.hostile_when.is_none_or(|w| (w == "GET" && method == "GET") || (w == "redirect" && moved));
        let (sha, etag) = repo.hostile.clone().filter(|_| hostile).unwrap_or((true_sha, true_etag.clone()));
        if repo.hostile_when == Some("redirect") && !moved && !is_large(name) {
            let headers = vec![
                ("X-Repo-Commit".into(), sha),
                ("ETag".into(), etag),
                ("Location".into(), format!("{path}?moved=1")),
            ];
            return Reply { status: 307, headers, body: vec![] };
        }
        let commit = ("X-Repo-Commit".to_string(), sha);
        if is_large(name) {
            let headers = vec![
                commit,
                ("X-Linked-Etag".into(), etag),
                ("X-Linked-Size".into(), file.bytes.len().to_string()),
                ("ETag".into(), "\"pointer-etag\"".into()),
                ("Location".into(), format!("http://127.0.0.1:{port}/storage/{id}/{name}")),
            ];
            return Reply { status: 302, headers, body: vec![] };
        }
        return serve_bytes(&file.bytes, range, vec![commit, ("ETag".into(), etag)]);
    }
    Reply::error(404, "", "no such route")
}

/// The bytes, or the part a `Range: bytes=a-[b]` header asks for (206 with `Content-Range`).
fn serve_bytes(bytes: &[u8], range: Option<&str>, mut headers: Vec<(String, String)>) -> Reply {
    if !headers.iter().any(|(k, _)| k == "ETag") {
        headers.push(("ETag".into(), format!("\"{}\"", etag_of(bytes))));
    }
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let len = bytes.len();
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Reply { status: 200, headers, body: bytes.to_vec() };
    };
    let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = start.parse().unwrap_or(0);
    let end: usize = end.parse().map_or(len.saturating_sub(1), |e: usize| e.min(len.saturating_sub(1)));
    if start >= len {
        headers.push(("Content-Range".into(), format!("bytes */{len}")));
        return Reply { status: 416, headers, body: vec![] };
    }
    headers.push(("Content-Range".into(), format!("bytes {start}-{end}/{len}")));
    Reply { status: 206, headers, body: bytes[start..=end].to_vec() }
}

fn tiny_safetensors(seed: f32) -> Vec<u8> {
    let data: Vec<u8> = (0..12).flat_map(|i| (seed + i as f32).to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![3, 4], &data).unwrap();
    safetensors::tensor::serialize([("model.embed.weight", view)], None).unwrap()
}

pub(crate) fn tiny_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", br#"{"model_type":"llama","hidden_size":4,"vocab_size":3}"#.to_vec()),
        ("tokenizer.json", br#"{"version":"1.0","model":{"type":"BPE","vocab":{},"merges":[]}}"#.to_vec()),
        ("generation_config.json", br#"{"eos_token_id":2}"#.to_vec()),
        ("model.safetensors", tiny_safetensors(0.5)),
        // Not for ftexp: docs, pickle weights beside safetensors, files in folders.
        ("README.md", b"# tiny\n".to_vec()),
        ("pytorch_model.bin", b"PK\x03\x04 pickle".to_vec()),
        ("onnx/model.safetensors", b"not ours".to_vec()),
    ]
}

const TINY_WANTED: [&str; 4] = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"];

pub(crate) struct Dirs {
    _tmp: tempfile::TempDir,
    pub(crate) out: PathBuf,
    pub(crate) cache: PathBuf,
}

pub(crate) fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = (tmp.path().join("checkpoints"), tmp.path().join("hf/hub"));
    Dirs { _tmp: tmp, out, cache }
}

pub(crate) fn settings(endpoint: &str, cache: &Path, token: Option<&str>) -> HubSettings {
    HubSettings {
        endpoint: Some(endpoint.to_string()),
        cache_dir: cache.to_path_buf(),
        token: token.map(str::to_string),
        progress: false,
    }
}

/// Names of the visible files directly in `dir`.
fn visible_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Every regular file under `dir` (symlinks not followed).
pub(crate) fn all_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            all_files(&entry.path(), found);
        } else if kind.is_file() {
            found.push(entry.path());
        }
    }
}

pub(crate) fn one_line_error(result: Result<PathBuf, ftexp::error::Problems>) -> String {
    let problems = result.expect_err("expected a download error");
    assert_eq!(problems.0.len(), 1, "{problems:?}");
    let msg = problems.0[0].clone();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn downloads_the_needed_files_byte_identical() {
    let hub = FakeHub::start(vec![FakeRepo::new("test-org/tiny", &tiny_files())]);
    let d = dirs();
    let dir = download_with(&settings(&hub.endpoint, &d.cache, None), "test-org/tiny", None, &d.out).unwrap();
    assert_eq!(dir, d.out.join("test-org/tiny"));
    assert_eq!(visible_files(&dir), TINY_WANTED);
    let files: BTreeMap<_, _> = tiny_files().into_iter().collect();
    for name in TINY_WANTED {
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), files[name], "{name}");
    }
    // The weights went through the redirect to storage; nothing unwanted was asked for.
    let seen = hub.seen();
    assert!(seen.iter().any(|s| s.path.starts_with("/test-org/tiny/resolve/")
        && s.path.ends_with("/model.safetensors")
        && s.status == 302));
    assert!(seen.iter().any(|s| s.path == "/storage/test-org/tiny/model.safetensors" && s.transferred_body()));
    assert!(!seen.iter().any(|s| s.path.contains("README") || s.path.contains(".bin") || s.path.contains("onnx")));
    // The file list was asked for with sizes, and nothing went out with a token when none was set.
    assert!(seen.iter().any(|s| s.path == "/api/models/test-org/tiny/revision/main"));
    assert!(seen.iter().all(|s| s.auth.is_none()), "{seen:?}");
    // No temporary files are left in the output directory.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn sharded_weights_follow_the_index() {
    let index = json!({
        "metadata": { "total_size": 96 },
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
        }
    });
    let files = vec![
        ("config.json", b"{}".to_vec()),
        ("tokenizer.json", b"{\"t\":1}".to_vec()),
        ("model.safetensors.index.json", index.to_string().into_bytes()),
        ("model-00001-of-00002.safetensors", tiny_safetensors(1.0)),
        ("model-00002-of-00002.safetensors", tiny_safetensors(2.0)),
        ("pytorch_model-00001-of-00002.bin", b"pickle".to_vec()),
    ];
    let hub = FakeHub::start(vec![FakeRepo::new("test-org/sharded", &files)]);
    let d = dirs();
    let dir = download_with(&settings(&hub.endpoint, &d.cache, None), "test-org/sharded", None, &d.out).unwrap();
    assert_eq!(
        visible_files(&dir),
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json"
        ]
    );
    for (name, bytes) in &files[..5] {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
    }
}

/// The hub layouts of the newer families (a Qwen3-, Gemma-3- and Phi-3-style repo): the configs, the
/// tokenizer with a `chat_template.jinja` beside it, and the safetensors; never the SentencePiece
/// model, the remote code or the extra vocab files transformers alone reads.
#[test]
fn the_newer_families_layouts_download_what_ftexp_reads() {
    let common = |extra: &[(&'static str, &[u8])]| {
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            ("config.json", b"{}".to_vec()),
            ("generation_config.json", b"{}".to_vec()),
            ("tokenizer.json", b"{\"t\":1}".to_vec()),
            ("tokenizer_config.json", b"{}".to_vec()),
            ("model.safetensors", tiny_safetensors(3.0)),
            ("LICENSE", b"license".to_vec()),
        ];
        files.extend(extra.iter().map(|(n, b)| (*n, b.to_vec())));
        files
    };
    let repos = [
        (
            "qwen/qwen3-like",
            common(&[("chat_template.jinja", b"{{ messages }}"), ("merges.txt", b"m"), ("vocab.json", b"{}")]),
        ),
        (
            "google/gemma-3-like",
            common(&[("tokenizer.model", b"spm"), ("special_tokens_map.json", b"{}"), ("added_tokens.json", b"{}")]),
        ),
        (
            "microsoft/phi-3-like",
            common(&[
                ("modeling_phi3.py", b"code"),
                ("configuration_phi3.py", b"code"),
                ("sample_finetune.py", b"code"),
            ]),
        ),
    ];
    let hub = FakeHub::start(repos.iter().map(|(name, files)| FakeRepo::new(name, files)).collect());
    let wanted: [&[&str]; 3] = [
        &[
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ],
        &[
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ],
        &["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
    ];
    for ((name, files), want) in repos.iter().zip(wanted) {
        let d = dirs();
        let dir = download_with(&settings(&hub.endpoint, &d.cache, None), name, None, &d.out).unwrap();
        assert_eq!(visible_files(&dir), want, "{name}");
        for (file, bytes) in files.iter().filter(|(f, _)| want.contains(f)) {
            assert_eq!(&std::fs::read(dir.join(file)).unwrap(), bytes, "{name}: {file}");
        }
    }
}

#[test]
fn second_download_transfers_nothing_and_truncated_files_are_refetched() {
    let hub = FakeHub::start(vec![FakeRepo::new("test-org/tiny", &tiny_files())]);
    let d = dirs();
    let s = settings(&hub.endpoint, &d.cache, None);
    let dir = download_with(&s, "test-org/tiny", None, &d.out).unwrap();
    let first = hub.seen();
    assert!(first.iter().filter(|r| r.transferred_body()).count() >= TINY_WANTED.len(), "{first:?}");

    hub.clear();
    download_with(&s, "test-org/tiny", None, &d.out).unwrap();
    let second = hub.seen();
    assert!(second.iter().all(|r| r.method == "GET"), "{second:?}");
    assert_eq!(second.iter().filter(|r| r.transferred_body()).count(), 0, "{second:?}");
    assert!(!second.iter().any(|r| r.path.contains("/resolve/") || r.path.starts_with("/storage/")), "{second:?}");

    // Half files (as a crash or a full disk leaves them) are noticed by size and fetched again.
    let files: BTreeMap<_, _> = tiny_files().into_iter().collect();
    std::fs::write(dir.join("model.safetensors"), &files["model.safetensors"][..10]).unwrap();
    std::fs::write(dir.join("config.json"), b"{").unwrap();
    hub.clear();
    download_with(&s, "test-org/tiny", None, &d.out).unwrap();
    for name in TINY_WANTED {
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), files[name], "{name}");
    }
    let third = hub.seen();
    assert!(!third.iter().any(|r| r.path.contains("tokenizer.json")), "intact files are not fetched again: {third:?}");
    assert!(third.iter().filter(|r| r.transferred_body()).count() <= 2, "{third:?}");
}

#[test]
fn unknown_repo_and_revision_are_one_line_errors() {
    let hub = FakeHub::start(vec![FakeRepo::new("test-org/tiny", &tiny_files())]);
    let d = dirs();
    let s = settings(&hub.endpoint, &d.cache, None);
    let msg = one_line_error(download_with(&s, "test-org/nope", None, &d.out));
    assert!(msg.contains("test-org/nope") && msg.contains("not found") && msg.contains("check the repo id"), "{msg}");
    let msg = one_line_error(download_with(&s, "test-org/tiny", Some("v9"), &d.out));
    assert!(msg.contains("`v9`") && msg.contains("--revision"), "{msg}");
    let msg = one_line_error(download_with(&s, "not-a-repo-id", None, &d.out));
    assert!(msg.contains("org/name"), "{msg}");
    assert!(!d.out.join("test-org").exists());
}

#[test]
fn gated_repo_needs_the_token_which_is_never_written() {
    let mut gated = FakeRepo::new("test-org/gated", &tiny_files());
    gated.token = Some(TOKEN.to_string());
    let hub = FakeHub::start(vec![gated]);
    let d = dirs();

    let msg = one_line_error(download_with(&settings(&hub.endpoint, &d.cache, None), "test-org/gated", None, &d.out));
    assert!(msg.contains("test-org/gated") && msg.contains("set HF_TOKEN"), "{msg}");
    let msg = one_line_error(download_with(
        &settings(&hub.endpoint, &d.cache, Some("hf_wrong")),
        "test-org/gated",
        None,
        &d.out,
    ));
    assert!(msg.contains("HF_TOKEN") && !msg.contains("hf_wrong"), "{msg}");

    let s = settings(&hub.endpoint, &d.cache, Some(TOKEN));
    assert!(!format!("{s:?}").contains(TOKEN));
    let dir = download_with(&s, "test-org/gated", None, &d.out).unwrap();
    assert_eq!(visible_files(&dir), TINY_WANTED);
    assert!(hub.seen().iter().any(|r| r.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));

    let mut files = Vec::new();
    all_files(&d.out, &mut files);
    all_files(&d.cache, &mut files);
    assert!(files.len() >= 2 * TINY_WANTED.len(), "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "token written to {}", f.display());
    }
}

#[test]
fn unreachable_endpoint_is_a_one_line_error() {
    // A port nothing listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let d = dirs();
    let msg = one_line_error(download_with(&settings(&endpoint, &d.cache, None), "test-org/tiny", None, &d.out));
    assert!(msg.contains("could not reach") && msg.contains(&endpoint) && msg.contains("HF_ENDPOINT"), "{msg}");
    assert!(!d.out.exists());
}

#[test]
fn pickle_only_and_config_less_repos_are_refused() {
    let pickled = FakeRepo::new(
        "test-org/pickled",
        &[
            ("config.json", b"{}".to_vec()),
            ("pytorch_model.bin", b"PK pickle".to_vec()),
            ("training_args.bin", b"PK".to_vec()),
        ],
    );
    let no_config = FakeRepo::new("test-org/noconfig", &[("model.safetensors", tiny_safetensors(0.0))]);
    let hub = FakeHub::start(vec![pickled, no_config]);
    let d = dirs();
    let s = settings(&hub.endpoint, &d.cache, None);
    let msg = one_line_error(download_with(&s, "test-org/pickled", None, &d.out));
    assert!(
        msg.contains("pytorch_model.bin") && msg.contains("never loads pickle") && msg.contains("safetensors"),
        "{msg}"
    );
    assert!(!msg.contains("training_args"), "{msg}");
    let msg = one_line_error(download_with(&s, "test-org/noconfig", None, &d.out));
    assert!(msg.contains("test-org/noconfig") && msg.contains("config.json"), "{msg}");
    // Refused before anything was fetched.
    assert!(!hub.seen().iter().any(|r| r.path.contains("/resolve/")));
    assert!(!d.out.exists());
}

#[test]
fn ensure_local_uses_directories_and_downloads_on_first_use() {
    let hub = FakeHub::start(vec![FakeRepo::new("test-org/tiny", &tiny_files())]);
    let d = dirs();
    let s = settings(&hub.endpoint, &d.cache, None);
    // A local directory is used as is, without asking the hub.
    let local = tempfile::tempdir().unwrap();
    let path = local.path().to_str().unwrap();
    assert_eq!(ensure_local_with(&s, path, None, &d.out).unwrap(), local.path());
    assert!(hub.seen().is_empty());
    // A repo id is downloaded on first use, then found on disk.
    let dir = ensure_local_with(&s, "test-org/tiny", None, &d.out).unwrap();
    assert_eq!(dir, d.out.join("test-org/tiny"));
    assert_eq!(visible_files(&dir), TINY_WANTED);
    hub.clear();
    assert_eq!(ensure_local_with(&s, "test-org/tiny", None, &d.out).unwrap(), dir);
    assert!(hub.seen().is_empty());
    // An unknown id says it might have been meant as a directory.
    let msg = one_line_error(ensure_local_with(&s, "test-org/missing", None, &d.out));
    assert!(msg.contains("not found") && msg.contains("local directory"), "{msg}");
}

#[test]
fn a_hostile_mirror_cannot_write_outside_the_cache() {
    let d = dirs();
    for (commit, etag, culprit) in [
        ("../../../escape", "\"abc\"", "commit `../../../escape`"),
        ("0123456789abcdef0123456789abcdef01234567", "\"../../../../escape\"", "etag `\"../../../../escape\"`"),
    ] {
        let mut repo = FakeRepo::new("test-org/evil", &tiny_files());
        repo.hostile = Some((commit.to_string(), etag.to_string()));
        let hub = FakeHub::start(vec![repo]);
        let err =
            one_line_error(download_with(&settings(&hub.endpoint, &d.cache, None), "test-org/evil", None, &d.out));
        assert!(err.contains(culprit) && err.contains("refusing"), "{err}");
    }
    let root = d.cache.parent().unwrap();
    let mut everything = Vec::new();
    all_files(root, &mut everything);
    assert!(everything.iter().all(|p| !p.to_string_lossy().contains("escape")), "{everything:?}");
    let outside: Vec<_> = std::fs::read_dir(root.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("escape"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}
