//! `ftexp download`.
use std::path::PathBuf;

/// Download a model from the Hugging Face hub into checkpoints/<org>/<name>/ (config, tokenizer,
/// safetensors). Honours HF_TOKEN, HF_ENDPOINT and HF_HOME; files already complete are skipped.
#[derive(clap::Args)]
pub struct Args {
    /// org/name, e.g. tiiuae/falcon-7b-instruct.
    repo_id: String,
    /// Branch, tag or commit (default: main).
    #[arg(long)]
    revision: Option<String>,
    /// The directory that receives <org>/<name>/.
    #[arg(long, default_value = ftexp::hub::CHECKPOINTS_DIR)]
    out: PathBuf,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let dir = ftexp::hub::download(&a.repo_id, a.revision.as_deref(), &a.out)?;
    println!("{} → {}", a.repo_id, dir.display());
    Ok(())
}
