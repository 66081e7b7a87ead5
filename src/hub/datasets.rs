//! Hub data sets: `hf://datasets/<org>/<name>[@<revision>][/<file or glob>]`. The revision is resolved
//! to its commit on every use, and the data files of that commit are fetched into hf-hub's cache (with
//! the same token, endpoint and checks as models) unless the cache already holds them. When the hub
//! cannot be reached, or `HF_HUB_OFFLINE` is set, the files of the revision's last download are used.
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
    let named = Cache::new(settings.cache_dir.clone()).repo(dataset(d, &d.revision));
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"));
    if offline {
        return cached(settings, d).ok_or_else(|| {
            fail(format!(
                "HF_HUB_OFFLINE is set and the hub cache ({}) holds no download of data set {} at revision {}; unset it once to download",
                settings.cache_dir.display(),
                d.repo,
                d.revision
            ))
        });
    }
    let (api, ctx) = connect(settings, &d.repo, &d.revision)?;
    let asked = api.repo(dataset(d, &d.revision));
    let info: RepoFiles = match asked.info_request().query("blobs", "true").call() {
        Ok(response) => response.into_json().map_err(|e| {
            fail(format!("the hub at {} sent an unreadable file list for data set {}: {e}", ctx.endpoint, d.repo))
        })?,
        // Unreachable (no answer at all): the last download of this revision, when the cache has it.
        Err(ureq::Error::Transport(e)) => match cached(settings, d) {
            Some(files) => return Ok(files),
            None => return Err(ctx.classify(ApiError::from(Box::new(ureq::Error::Transport(e))), Target::Info)),
        },
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
    let pinned = dataset(d, &info.sha);
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
    // What the revision points to, as the hub's own tools record it (`refs/<revision>`), for offline use.
    named.create_ref(&info.sha).map_err(|e| fail(format!("could not write to the hub cache: {e}")))?;
    Ok(DatasetFiles { repo: d.repo.clone(), commit: info.sha, files })
}

fn dataset(d: &DatasetPath, revision: &str) -> Repo {
    Repo::with_revision(d.repo.clone(), RepoType::Dataset, revision.to_string())
}

/// The data files of the commit the cache last recorded for `d`'s revision, without asking the hub.
fn cached(settings: &HubSettings, d: &DatasetPath) -> Option<DatasetFiles> {
    let folder = settings.cache_dir.join(format!("datasets--{}", d.repo.replace('/', "--")));
    let commit = std::fs::read_to_string(folder.join("refs").join(&d.revision)).ok()?.trim().to_string();
    let snapshot = folder.join("snapshots").join(&commit);
    let mut names = Vec::new();
    walk(&snapshot, "", &mut names);
    let mut files: Vec<PathBuf> = names
        .into_iter()
        .filter(|n| safe_name(n) && wanted(n, d.pattern.as_deref()))
        .map(|n| snapshot.join(n))
        .collect();
    files.sort();
    (!files.is_empty()).then(|| DatasetFiles { repo: d.repo.clone(), commit, files })
}

/// The relative paths of the files below `dir`.
fn walk(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.path().is_dir() {
            walk(&entry.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
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
