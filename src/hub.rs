//! Where checkpoints live on disk.
use std::path::{Path, PathBuf};

/// Downloaded hub checkpoints go to `checkpoints/<org>/<name>/`.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

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
            "{} not found: {checkpoint} is not downloaded yet; put the hub files (config.json, *.safetensors, tokenizer.json) in {}",
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
