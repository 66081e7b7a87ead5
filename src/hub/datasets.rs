//! Hub data sets: `hf://datasets/<org>/<name>[@<revision>][/<file or glob>]`. The revision is resolved
//! to its commit on every use, and the data files of that commit are fetched into hf-hub's cache (with
//! the same token, endpoint and checks as models) unless the cache already holds them.
use std::collections::BTreeMap;
use std::path::PathBuf;

use hf_hub::api::sync::ApiError;
use hf_hub::{Cache, Repo, RepoType};

use super::fetcher::Fetcher;
use super::{check_repo_id, check_revision, connect, fail, Fail, HubSettings, RepoFiles, Target};
use crate::error::Problems;

pub const SCHEME: &str = "hf://datasets/";
/// File name endings of data files.
const DATA_EXTENSIONS: [&str; 4] = [".json", ".jsonl", ".csv", ".parquet"];

/// A hub data set's files at one commit, in hf-hub's cache, in name order.
#[derive(Debug, Clone)]
pub struct DatasetFiles {
    pub repo: String,
    pub commit: String,
    pub files: Vec<PathBuf>,
}

/// What an `hf://datasets/…` path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetPath {
    pub repo: String,
    pub revision: String,
    /// A file, folder or glob inside the repo (`*` within a name, `**` across folders).
    pub pattern: Option<String>,
}

/// `Some` when `path` is an `hf://datasets/` path: its parts, or what is wrong with it.
pub fn parse(path: &str) -> Option<Result<DatasetPath, Problems>> {
    let rest = path.strip_prefix(SCHEME)?;
    let bad = |why: &str| {
        Some(Err(Problems::one(format!(
            "data.path `{path}` {why}; write hf://datasets/<org>/<name>[@<revision>][/<file or glob>]"
        ))))
    };
    let mut parts = rest.splitn(3, '/');
    let (Some(org), Some(name)) = (parts.next(), parts.next()) else { return bad("names no data set") };
    let (name, revision) = name.split_once('@').unwrap_or((name, "main"));
    let pattern = parts.next().map(|p| p.trim_matches('/').to_string()).filter(|p| !p.is_empty());
    if pattern.as_deref().is_some_and(|p| p.split('/').any(|c| c == ".." || c == ".")) {
        return bad("has `.` or `..` in its file part");
    }
    Some(Ok(DatasetPath { repo: format!("{org}/{name}"), revision: revision.to_string(), pattern }))
}

/// The data files of the hub data set `path` names, fetched when the cache lacks them, with settings
/// from the environment.
pub fn dataset_files(path: &str) -> Result<DatasetFiles, Problems> {
    dataset_files_with(&HubSettings::from_env(), path)
}

/// [`dataset_files`] with explicit hub settings.
pub fn dataset_files_with(settings: &HubSettings, path: &str) -> Result<DatasetFiles, Problems> {
    let Some(parsed) = parse(path) else {
        return Err(Problems::one(format!("data.path `{path}` is not an {SCHEME} path")));
    };
    let d = parsed?;
    fetch(settings, &d).map_err(|f| Problems::one(format!("data.path `{path}`: {}", f.msg)))
}

fn fetch(settings: &HubSettings, d: &DatasetPath) -> Result<DatasetFiles, Fail> {
    check_repo_id(&d.repo)?;
    check_revision(&d.revision)?;
    let (api, ctx) = connect(settings, &d.repo, &d.revision)?;
    let asked = api.repo(Repo::with_revision(d.repo.clone(), RepoType::Dataset, d.revision.clone()));
    let info: RepoFiles = match asked.info_request().query("blobs", "true").call() {
        Ok(response) => response.into_json().map_err(|e| {
            fail(format!("the hub at {} sent an unreadable file list for data set {}: {e}", ctx.endpoint, d.repo))
        })?,
        Err(e) => return Err(ctx.classify(ApiError::from(Box::new(e)), Target::Info)),
    };
    if info.sha.is_empty() || !info.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(fail(format!("the hub at {} sent no valid commit for data set {}", ctx.endpoint, d.repo)));
    }
    let sizes: BTreeMap<String, Option<u64>> = info
        .siblings
        .iter()
        .filter(|s| safe_name(&s.rfilename) && wanted(&s.rfilename, d.pattern.as_deref()))
        .map(|s| (s.rfilename.clone(), s.size.or(s.lfs.as_ref().and_then(|l| l.size))))
        .collect();
    if sizes.is_empty() {
        return Err(fail(format!(
            "data set {} (revision {}, commit {}) has no data files (.json, .jsonl, .csv, .parquet){}",
            d.repo,
            d.revision,
            info.sha,
            d.pattern.as_deref().map_or(String::new(), |p| format!(" matching `{p}`"))
        )));
    }
    let pinned = Repo::with_revision(d.repo.clone(), RepoType::Dataset, info.sha.clone());
    let mut fetcher = Fetcher {
        ctx: &ctx,
        settings,
        api_repo: api.repo(pinned.clone()),
        cache_repo: Cache::new(settings.cache_dir.clone()).repo(pinned),
        // Data set files live in the cache only.
        dir: PathBuf::new(),
        trust_existing: false,
    };
    let files = sizes.iter().map(|(name, size)| fetcher.local(name, *size)).collect::<Result<Vec<_>, _>>()?;
    Ok(DatasetFiles { repo: d.repo.clone(), commit: info.sha, files })
}

/// A relative path with plain components (no `..`, no hidden files or folders).
fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('\\') && name.split('/').all(|c| !c.is_empty() && !c.starts_with('.'))
}

/// Whether `name` is a data file that `pattern` (a file, a folder, or a glob) selects.
fn wanted(name: &str, pattern: Option<&str>) -> bool {
    let lower = name.to_ascii_lowercase();
    if !DATA_EXTENSIONS.iter().any(|e| lower.ends_with(e)) {
        return false;
    }
    match pattern {
        None => true,
        Some(p) if p.contains(['*', '?']) => glob(p.as_bytes(), name.as_bytes()),
        Some(p) => name == p || name.starts_with(&format!("{p}/")),
    }
}

/// `*` matches within a path component, `**` across components, `?` one character.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => {
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=s.len()).any(|i| (i == 0 || s[i - 1] == b'/') && glob(rest, &s[i..]))
        }
        [b'*', rest @ ..] => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != b'/').any(|i| glob(rest, &s[i..])),
        [b'?', rest @ ..] => s.first().is_some_and(|&c| c != b'/') && glob(rest, &s[1..]),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}
