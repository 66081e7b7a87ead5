//! `ftexp keys`.

/// List every config key with its type, default and meaning.
#[derive(clap::Args)]
pub struct Args {
    /// As a Markdown table (the key table of docs/config.md).
    #[arg(long)]
    markdown: bool,
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    print!("{}", ftexp::config::keys_reference(a.markdown));
    Ok(())
}
