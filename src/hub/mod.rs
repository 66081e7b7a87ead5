//! Where checkpoints live on disk, and fetching them from a model hub.
//!
//! [`download`] asks the hub (through `hf-hub`, so `HF_ENDPOINT`, `HF_HOME` and `HF_TOKEN` apply) for the
//! files of one revision, picks what fine-tuning needs (configs, tokenizer, `*.safetensors` weights; never
//! pickle files), fetches them into hf-hub's cache and links or copies them into `checkpoints/<org>/<name>/`
//! under a temporary name that is renamed when complete, so a half-written file never looks finished.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};

use crate::error::Problems;
pub use datasets::{dataset_files, dataset_files_with, DatasetFiles, DatasetPath};
use fetcher::{place, Fetcher};

pub mod datasets;
mod fetcher;

/// Downloaded hub checkpoints go to `checkpoints/<org>/<name>/`.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// Files taken from the root of a repo when it has them (shards named by the index come on top).
const WANTED: [&str; 8] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "model.safetensors.index.json",
    "model.safetensors",
];
const INDEX: &str = "model.safetensors.index.json";
/// What the last complete download into a directory fetched (repo, commit, files); holds no secrets.
const MARKER: &str = ".ftexp-download.json";
/// Extensions of pickle-based weight files, which ftexp refuses to load.
const PICKLE_EXTS: [&str; 6] = ["bin", "pt", "pth", "pkl", "pickle", "ckpt"];
/// Pickle files that are training state rather than weights.
const NOT_WEIGHTS: [&str; 4] = ["training_args", "optimizer", "scheduler", "rng_state"];

/// The local directory of `checkpoint`: the path itself when it is a directory, else
/// `checkpoints/<repo id>`.
pub fn local_dir(checkpoint: &str) -> PathBuf {
    let path = Path::new(checkpoint);
    if path.is_dir() {
        path.to_path_buf()
    } else {
        Path::new(CHECKPOINTS_DIR).join(checkpoint)
    }
}

/// Whether `checkpoint` reads as a hub repo id (`org/name`) rather than a local path.
pub fn is_repo_id(checkpoint: &str) -> bool {
    let parts: Vec<&str> = checkpoint.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..")
        && !checkpoint.starts_with('.')
        && !Path::new(checkpoint).is_dir()
}

/// What to tell a user whose checkpoint has no `config.json` on disk.
pub fn not_downloaded_hint(checkpoint: &str, dir: &Path) -> String {
    if is_repo_id(checkpoint) {
        format!(
            "{} not found: {checkpoint} is not downloaded yet; run `ftexp download {checkpoint}` (or put the hub files config.json, *.safetensors, tokenizer.json in {})",
            dir.join("config.json").display(),
            dir.display()
        )
    } else {
        format!(
            "{} not found; `model.checkpoint` must name a hub repo id or a directory holding config.json",
            dir.join("config.json").display()
        )
    }
}

/// Where and how to reach the hub. [`HubSettings::from_env`] reads the same variables as the hub's own
/// tools; tests build one by hand. `Debug` never shows the token.
#[derive(Clone)]
pub struct HubSettings {
    /// Base URL of the hub (`HF_ENDPOINT`); `None` keeps hf-hub's default.
    pub endpoint: Option<String>,
    /// hf-hub's cache directory (`$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Access token (`HF_TOKEN`, else the token file in `HF_HOME`), sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Show progress on stderr: bars on a terminal, one line per fetched file otherwise.
    pub progress: bool,
}

impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("progress", &self.progress)
            .finish()
    }
}

impl HubSettings {
    /// `HF_ENDPOINT`, `HF_HOME` (cache in `$HF_HOME/hub`, token file `$HF_HOME/token`) and `HF_TOKEN`
    /// (which wins over the token file); progress on.
    pub fn from_env() -> Self {
        let cache = Cache::from_env();
        let nonempty = |key: &str| std::env::var(key).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        HubSettings {
            endpoint: nonempty("HF_ENDPOINT"),
            token: nonempty("HF_TOKEN").or_else(|| cache.token()),
            cache_dir: cache.path().clone(),
            progress: true,
        }
    }
}

/// Downloads the files ftexp needs from hub repo `repo_id` at `revision` (default `main`) into
/// `out_root/<org>/<name>/` and returns that directory, with settings from the environment.
pub fn download(repo_id: &str, revision: Option<&str>, out_root: &Path) -> Result<PathBuf, Problems> {
    download_with(&HubSettings::from_env(), repo_id, revision, out_root)
}

/// [`download`] with explicit hub settings.
pub fn download_with(
    settings: &HubSettings,
    repo_id: &str,
    revision: Option<&str>,
    out_root: &Path,
) -> Result<PathBuf, Problems> {
    fetch(settings, repo_id, revision, out_root).map_err(|f| Problems::one(f.msg))
}

/// The local directory of `checkpoint`, downloading it first when it is a hub repo id that is not in
/// `checkpoints/` yet (so `model.checkpoint = "org/name"` downloads on first use).
pub fn ensure_local(checkpoint: &str, revision: Option<&str>) -> Result<PathBuf, Problems> {
    let out_root = Path::new(CHECKPOINTS_DIR);
    match already_local(checkpoint, out_root)? {
        Some(dir) => Ok(dir),
        None => ensure_local_with(&HubSettings::from_env(), checkpoint, revision, out_root),
    }
}

/// [`ensure_local`] with explicit hub settings and download root.
pub fn ensure_local_with(
    settings: &HubSettings,
    checkpoint: &str,
    revision: Option<&str>,
    out_root: &Path,
) -> Result<PathBuf, Problems> {
    if let Some(dir) = already_local(checkpoint, out_root)? {
        return Ok(dir);
    }
    fetch(settings, checkpoint, revision, out_root).map_err(|f| {
        if f.not_found {
            Problems::one(format!("{}; if `{checkpoint}` is meant to be a local directory, it does not exist", f.msg))
        } else {
            Problems::one(f.msg)
        }
    })
}

/// `Some(dir)` when `checkpoint` is a directory or an already downloaded repo id; `None` when it must be
/// downloaded; an error when it is neither a directory nor a repo id.
fn already_local(checkpoint: &str, out_root: &Path) -> Result<Option<PathBuf>, Problems> {
    let path = Path::new(checkpoint);
    if path.is_dir() {
        return Ok(Some(path.to_path_buf()));
    }
    if !is_repo_id(checkpoint) {
        return Err(Problems::one(format!(
            "checkpoint `{checkpoint}` is neither an existing directory nor a hub repo id (`org/name`)"
        )));
    }
    let dir = out_root.join(checkpoint);
    Ok(dir.join("config.json").is_file().then_some(dir))
}

/// A failed download: one line for the user, and whether the hub said the repo or revision does not exist.
struct Fail {
    msg: String,
    not_found: bool,
}

fn fail(msg: impl Into<String>) -> Fail {
    Fail { msg: msg.into(), not_found: false }
}

/// The hub's answer to `GET /api/models/<id>/revision/<rev>?blobs=true`.
#[derive(Deserialize)]
struct RepoFiles {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    repo: String,
    revision: String,
    commit: String,
    files: BTreeMap<String, u64>,
}

/// What a request was for, to word its errors.
#[derive(Clone, Copy)]
enum Target<'a> {
    Info,
    File(&'a str),
}

/// Names the repo, revision and endpoint in errors.
struct Ctx<'a> {
    repo_id: &'a str,
    revision: &'a str,
    endpoint: String,
    has_token: bool,
}

impl Ctx<'_> {
    fn classify(&self, err: ApiError, target: Target) -> Fail {
        let Ctx { repo_id, revision, endpoint, .. } = self;
        let what = match target {
            Target::Info => format!("the file list of {repo_id}"),
            Target::File(f) => format!("{f} of {repo_id}"),
        };
        match err {
            ApiError::RequestError(e) => {
                let e = *e;
                let detail = match std::error::Error::source(&e) {
                    Some(source) => format!("{}: {source}", e.kind()),
                    None => e.to_string(),
                };
                match e.into_response() {
                    Some(response) => {
                        let code = response.header("x-error-code").unwrap_or("").to_string();
                        self.status_error(response.status(), &code, target)
                    }
                    None => fail(format!(
                        "could not reach the hub at {endpoint} to fetch {what} ({detail}); check the network, or set HF_ENDPOINT to a reachable mirror"
                    )),
                }
            }
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => fail(format!(
                "the hub at {endpoint} sent no valid `{h}` header for {what}; HF_ENDPOINT must point to a hub or a full mirror of one"
            )),
            ApiError::LockAcquisition(lock) => fail(format!(
                "another process is downloading {what} (lock {}); wait for it to finish, or delete the lock file if none is running",
                lock.display()
            )),
            ApiError::InvalidResume => fail(format!(
                "a partial download of {what} in the hub cache is corrupt; delete the *.part files under the cache's models--{} folder and run again",
                repo_id.replace('/', "--")
            )),
            ApiError::TooManyRetries(e) => {
                fail(format!("downloading {what} (revision {revision}) from {endpoint} kept failing: {e}"))
            }
            other => fail(format!("downloading {what} (revision {revision}) from {endpoint} failed: {other}")),
        }
    }

    fn status_error(&self, status: u16, code: &str, target: Target) -> Fail {
        let Ctx { repo_id, revision, endpoint, has_token } = self;
        let not_found = |msg: String| Fail { msg, not_found: true };
        match (status, code, target) {
            (_, "RevisionNotFound", _) => not_found(format!(
                "revision `{revision}` of hub repo {repo_id} not found at {endpoint}: check --revision (a branch, tag or commit)"
            )),
            (_, "EntryNotFound", Target::File(f)) | (404, "", Target::File(f)) => {
                fail(format!("hub repo {repo_id} (revision {revision}) lists {f} but the hub does not serve it (HTTP {status})"))
            }
            (_, "GatedRepo", _) if !has_token => fail(format!(
                "hub repo {repo_id} is gated: accept its terms on the hub, then set HF_TOKEN to an access token of that account"
            )),
            (_, "GatedRepo", _) => fail(format!(
                "hub repo {repo_id} is gated and HF_TOKEN's account has no access yet: accept its terms on the hub, or use another token"
            )),
            (401 | 403, _, _) if !has_token => fail(format!(
                "hub repo {repo_id} needs authentication (HTTP {status}): it is gated or private, so set HF_TOKEN to an access token that can read it; or check the repo id"
            )),
            (401 | 403, _, _) => fail(format!(
                "the hub refused HF_TOKEN for {repo_id} (HTTP {status}): check that the token is valid and its account can read the repo, and the repo id"
            )),
            (404, _, _) => not_found(format!(
                "hub repo {repo_id} (revision {revision}) not found at {endpoint}: check the repo id and --revision"
            )),
            (429, _, _) => fail(format!("the hub at {endpoint} is rate-limiting requests (HTTP 429); wait a while and run again")),
            (500.., _, _) => fail(format!("the hub at {endpoint} failed (HTTP {status}); try again later or set HF_ENDPOINT to a mirror")),
            _ => fail(format!("the hub at {endpoint} answered HTTP {status} for {repo_id} (revision {revision})")),
        }
    }
}

/// `Ok` when `id` is a plain `org/name` hub repo id.
fn check_repo_id(id: &str) -> Result<(), Fail> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    match id.split_once('/') {
        Some((org, name)) if part_ok(org) && part_ok(name) => Ok(()),
        _ => Err(fail(format!("`{id}` is not a hub repo id: expected `org/name` (letters, digits, '-', '_' and '.')"))),
    }
}

fn check_revision(revision: &str) -> Result<(), Fail> {
    let bad = revision.is_empty()
        || revision.starts_with('/')
        || revision.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '%' | '\\'))
        || revision.split('/').any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(fail(format!("--revision `{revision}` is not a branch, tag or commit name")))
    } else {
        Ok(())
    }
}

/// A file name at the root of a repo (no folders, not hidden), safe to join onto the output directory.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.')
}

/// `model-00001-of-00004.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("model-")
        .and_then(|s| s.strip_suffix(".safetensors"))
        .and_then(|s| s.split_once("-of-"))
        .is_some_and(|(i, n)| digits(i) && digits(n))
}

fn is_pickle_weights(name: &str) -> bool {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    plain_name(name) && PICKLE_EXTS.contains(&ext.as_str()) && !NOT_WEIGHTS.iter().any(|p| name.starts_with(p))
}

pub(super) fn file_len(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

fn fetch(settings: &HubSettings, repo_id: &str, revision: Option<&str>, out_root: &Path) -> Result<PathBuf, Fail> {
    check_repo_id(repo_id)?;
    let revision = revision.unwrap_or("main");
    check_revision(revision)?;
    let (api, ctx) = connect(settings, repo_id, revision)?;
    let (sha, sizes) = list_files(&api, &ctx)?;
    // Pin every file to the commit the file list came from, so a push during the download cannot mix revisions.
    let pinned = Repo::with_revision(repo_id.to_string(), RepoType::Model, sha.clone());
    let dir = out_root.join(repo_id);
    let old = fs::read(dir.join(MARKER)).ok().and_then(|b| serde_json::from_slice::<Marker>(&b).ok());
    let mut fetcher = Fetcher {
        ctx: &ctx,
        settings,
        api_repo: api.repo(pinned.clone()),
        cache_repo: Cache::new(settings.cache_dir.clone()).repo(pinned),
        dir: dir.clone(),
        trust_existing: old.as_ref().is_none_or(|m| m.commit == sha),
    };
    let selected = select_files(&mut fetcher, &sizes)?;
    fs::create_dir_all(&dir).map_err(|e| fail(format!("could not create {}: {e}", dir.display())))?;
    let mut files = BTreeMap::new();
    for name in &selected {
        let src = fetcher.local(name, sizes[name.as_str()])?;
        let dest = dir.join(name);
        if src != dest {
            place(&src, &dest, name.ends_with(".safetensors"))
                .map_err(|e| fail(format!("could not write {}: {e}", dest.display())))?;
        }
        files.insert(name.clone(), file_len(&dest).unwrap_or(0));
    }
    // Files an earlier download (of another commit) left behind and this one does not have.
    if let Some(old) = &old {
        for name in old.files.keys().filter(|f| plain_name(f) && !files.contains_key(*f)) {
            let _ = fs::remove_file(dir.join(name));
        }
    }
    let marker = Marker { repo: repo_id.to_string(), revision: revision.to_string(), commit: sha, files };
    let text = serde_json::to_vec_pretty(&marker).unwrap_or_default();
    let tmp = dir.join(format!("{MARKER}.part"));
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, dir.join(MARKER)))
        .map_err(|e| fail(format!("could not write {}: {e}", dir.join(MARKER).display())))?;
    Ok(dir)
}

/// The hub client for `settings`, and what messages about `repo_id` at `revision` need to know.
fn connect<'a>(settings: &HubSettings, repo_id: &'a str, revision: &'a str) -> Result<(Api, Ctx<'a>), Fail> {
    let endpoint = settings.endpoint.as_deref().map(|e| e.trim_end_matches('/').to_string());
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(fail(format!("HF_ENDPOINT `{e}` is not an http:// or https:// URL")));
        }
    }
    let mut builder = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
        .with_token(settings.token.clone())
        .with_progress(false)
        .with_retries(3);
    if let Some(e) = &endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    let api = builder.build().map_err(|e| fail(format!("could not set up the hub client: {e}")))?;
    let endpoint = endpoint.unwrap_or_else(|| {
        // hf-hub's default: the part of a file URL before the repo id.
        let url = api.repo(Repo::model(repo_id.to_string())).url("");
        url.find(&format!("/{repo_id}/resolve/")).map_or(url.clone(), |i| url[..i].to_string())
    });
    Ok((api, Ctx { repo_id, revision, endpoint, has_token: settings.token.is_some() }))
}

/// The commit `ctx.revision` points at, and the repo's files with their sizes (when the hub says).
fn list_files(api: &Api, ctx: &Ctx) -> Result<(String, BTreeMap<String, Option<u64>>), Fail> {
    let (repo_id, revision) = (ctx.repo_id, ctx.revision);
    let asked = api.repo(Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string()));
    let info: RepoFiles = match asked.info_request().query("blobs", "true").call() {
        Ok(response) => response.into_json().map_err(|e| {
            fail(format!("the hub at {} sent an unreadable file list for {repo_id}: {e}", ctx.endpoint))
        })?,
        Err(e) => return Err(ctx.classify(ApiError::from(Box::new(e)), Target::Info)),
    };
    if info.sha.is_empty() || !info.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(fail(format!("the hub at {} sent no valid commit for {repo_id}", ctx.endpoint)));
    }
    let sizes: BTreeMap<String, Option<u64>> =
        info.siblings.iter().map(|s| (s.rfilename.clone(), s.size.or(s.lfs.as_ref().and_then(|l| l.size)))).collect();
    if !sizes.contains_key("config.json") {
        return Err(fail(format!(
            "hub repo {repo_id} (revision {revision}) has no config.json: it is not a transformers model checkpoint"
        )));
    }
    Ok((info.sha, sizes))
}

/// The files to download: the wanted root files and the weight shards (those the index names).
fn select_files(fetcher: &mut Fetcher, sizes: &BTreeMap<String, Option<u64>>) -> Result<Vec<String>, Fail> {
    let (repo_id, revision) = (fetcher.ctx.repo_id, fetcher.ctx.revision);
    let mut selected: Vec<String> = WANTED.iter().filter(|f| sizes.contains_key(**f)).map(|f| f.to_string()).collect();
    let mut shards: BTreeSet<String> = sizes.keys().filter(|f| is_shard_name(f)).cloned().collect();
    if sizes.contains_key(INDEX) {
        let index_path = fetcher.local(INDEX, sizes[INDEX])?;
        let index: ShardIndex = fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| fail(format!("{INDEX} of hub repo {repo_id} (revision {revision}) is not a valid index")))?;
        for shard in index.weight_map.into_values() {
            if !plain_name(&shard) || !shard.ends_with(".safetensors") {
                return Err(fail(format!("{INDEX} of hub repo {repo_id} names an unusable shard `{shard}`")));
            }
            if !sizes.contains_key(shard.as_str()) {
                return Err(fail(format!(
                    "{INDEX} of hub repo {repo_id} (revision {revision}) names {shard}, which the repo does not have"
                )));
            }
            shards.insert(shard);
        }
    }
    shards.retain(|s| !selected.contains(s));
    selected.extend(shards);
    if !selected.iter().any(|f| f.ends_with(".safetensors")) {
        let pickles: Vec<&str> = sizes.keys().map(String::as_str).filter(|f| is_pickle_weights(f)).collect();
        if pickles.is_empty() {
            return Err(fail(format!(
                "hub repo {repo_id} (revision {revision}) has no *.safetensors weights at its root; pick a repo or --revision that has them"
            )));
        }
        return Err(fail(format!(
            "hub repo {repo_id} (revision {revision}) has its weights only as pickle files ({}); ftexp never loads pickle files: pick a repo or --revision with *.safetensors weights, or convert the weights to safetensors",
            pickles.join(", ")
        )));
    }
    Ok(selected)
}
