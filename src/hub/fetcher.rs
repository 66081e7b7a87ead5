//! Getting one file of a hub repo: from the output directory, hf-hub's cache, or the hub (its names
//! checked first), and putting it in place.
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiRepo;
use hf_hub::api::Progress;
use hf_hub::CacheRepo;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::{fail, file_len, Ctx, Fail, HubSettings, Target};

/// Finds complete copies of a repo's files: in the output directory, in hf-hub's cache, or fetched.
pub(super) struct Fetcher<'a> {
    pub(super) ctx: &'a Ctx<'a>,
    pub(super) settings: &'a HubSettings,
    pub(super) api_repo: ApiRepo,
    pub(super) cache_repo: CacheRepo,
    pub(super) dir: PathBuf,
    /// Whether files already in `dir` belong to this commit (no marker says otherwise).
    pub(super) trust_existing: bool,
}

impl Fetcher<'_> {
    /// A local path holding all of `name` (`size` bytes, when the hub said).
    pub(super) fn local(&mut self, name: &str, size: Option<u64>) -> Result<PathBuf, Fail> {
        let dest = self.dir.join(name);
        if self.trust_existing && size.is_some() && file_len(&dest) == size {
            return Ok(dest);
        }
        if let Some(cached) = self.cache_repo.get(name).filter(|p| self.in_cache(p)) {
            if size.is_none() || file_len(&cached) == size {
                return Ok(cached);
            }
        }
        self.check_names(name)?;
        let result = if !self.settings.progress {
            self.api_repo.download_with_progress(name, ())
        } else if std::io::stderr().is_terminal() {
            self.api_repo.download_with_progress(name, Bar::new())
        } else {
            eprintln!(
                "ftexp: fetching {name} of {}{}",
                self.ctx.repo_id,
                size.map(|s| format!(" ({})", HumanBytes(s))).unwrap_or_default()
            );
            self.api_repo.download_with_progress(name, ())
        };
        let path = result.map_err(|e| self.ctx.classify(e, Target::File(name)))?;
        // The names were checked above; a hub that answered hf-hub otherwise than that check is caught here.
        if !self.in_cache(&path) {
            return Err(fail(format!(
                "the hub at {} answered {name} of {} with a commit or etag that leads out of the hub cache ({}); refusing it (check HF_ENDPOINT)",
                self.ctx.endpoint,
                self.ctx.repo_id,
                path.display()
            )));
        }
        match (size, file_len(&path)) {
            (Some(want), Some(got)) if want != got => Err(fail(format!(
                "{name} of hub repo {} arrived with {got} bytes but the hub lists {want}; run the download again",
                self.ctx.repo_id
            ))),
            (_, None) => Err(fail(format!(
                "{name} of hub repo {} is missing from the hub cache after downloading",
                self.ctx.repo_id
            ))),
            _ => Ok(path),
        }
    }
}

impl Fetcher<'_> {
    /// hf-hub names the cache files of a download after the commit (`x-repo-commit`) and the blob
    /// (`x-linked-etag`, else `etag`, quotes removed) the hub sends with the file: a hostile mirror could
    /// send `../` there and have files written outside the cache. Asks for those headers first, both
    /// ways a hub is asked for them — a HEAD request, and the one-byte GET hf-hub itself sends, each
    /// following relative redirects as hf-hub does — and refuses any value on any response that is not
    /// a 40-character hex commit id or a plain token. A hub that cannot be asked is left to hf-hub's own
    /// error.
    fn check_names(&self, name: &str) -> Result<(), Fail> {
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        for method in ["HEAD", "GET"] {
            let mut url = self.api_repo.url(name);
            // hf-hub follows relative redirects (same host) for the headers; at most a few here.
            for _ in 0..10 {
                let mut request = agent.request(method, &url);
                if method == "GET" {
                    request = request.set("Range", "bytes=0-0");
                }
                if let Some(token) = &self.settings.token {
                    request = request.set("Authorization", &format!("Bearer {token}"));
                }
                let response = match request.call() {
                    Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                    Err(_) => break,
                };
                self.check_headers(name, method, &response)?;
                let relative = response.header("location").filter(|l| !l.contains("://") && l.starts_with('/'));
                match relative {
                    Some(path) if (300..400).contains(&response.status()) => url = same_host(&url, path),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Whether hf-hub's `path` lies in the hub cache (no `..`, not elsewhere): its names came from headers.
    fn in_cache(&self, path: &Path) -> bool {
        let inside = path.strip_prefix(&self.settings.cache_dir).ok();
        inside.is_some_and(|rest| rest.components().all(|c| matches!(c, std::path::Component::Normal(_))))
    }

    /// Refuses a response whose commit or etag header is not a plain name.
    fn check_headers(&self, name: &str, method: &str, response: &ureq::Response) -> Result<(), Fail> {
        let refuse = |what: &str, value: &str| {
            fail(format!(
                "the hub at {} answered {method} {name} of {} with the {what} `{value}`, which is not a plain name; refusing to write files named after it (check HF_ENDPOINT)",
                self.ctx.endpoint, self.ctx.repo_id
            ))
        };
        if let Some(commit) = response.header("x-repo-commit") {
            if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(refuse("commit", commit));
            }
        }
        if let Some(etag) = response.header("x-linked-etag").or_else(|| response.header("etag")) {
            // hf-hub removes the quotes and names the blob after the rest (a weak tag's `W/` is a folder
            // inside the cache).
            let unquoted = etag.replace('"', "");
            let plain = unquoted.strip_prefix("W/").unwrap_or(&unquoted);
            if plain.is_empty() || !plain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(refuse("etag", etag));
            }
        }
        Ok(())
    }
}

/// `url` with its path (and query) replaced by `path`, as hf-hub resolves a relative redirect.
fn same_host(url: &str, path: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let host_end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    format!("{}{path}", &url[..host_end])
}

/// Puts `src` at `dest` through a hidden temporary name and a rename. Weights are hard-linked to the
/// cache blob when possible (they are large and never edited); everything else is copied.
pub(super) fn place(src: &Path, dest: &Path, link: bool) -> std::io::Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.part"));
    let _ = fs::remove_file(&tmp);
    let src = fs::canonicalize(src)?;
    if !(link && fs::hard_link(&src, &tmp).is_ok()) {
        fs::copy(&src, &tmp)?;
    }
    fs::rename(&tmp, dest)?;
    // rename() leaves both names when they already were links to the same file.
    let _ = fs::remove_file(&tmp);
    Ok(())
}

/// A terminal progress bar for one file.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let style = ProgressStyle::with_template("{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        Bar(ProgressBar::new(0).with_style(style))
    }
}

impl Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish();
    }
}
