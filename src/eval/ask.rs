//! A prompt for `ftexp generate`: the instruction put into a run's prompt template or chat template,
//! or a base checkpoint's own chat template, and tokenized.
use std::path::Path;

use super::{load_checkpoint, load_run, LoadOptions};
use crate::config::DataFormat;
use crate::data::chat::{ChatTemplate, Message};
use crate::data::{prompt, Record};
use crate::device::Placement;
use crate::error::Problems;
use crate::model::Gpt;
use crate::tokenizer::Tokenizer;

/// What to ask a model.
pub struct Ask<'a> {
    pub instruction: &'a str,
    /// With a run: the optional input that goes with the instruction.
    pub input: &'a str,
    /// The instruction as it is, without any template.
    pub raw: bool,
    /// As a user turn of the chat template (a run trained on chat data always uses one).
    pub chat: bool,
}

/// The model in `checkpoint` (a run directory, loaded as `load` says, or a base checkpoint on
/// `placement`), its tokenizer, and the ids of `ask` for it.
pub fn prepare(
    checkpoint: &Path,
    ask: &Ask,
    load: LoadOptions,
    placement: Placement,
) -> Result<(Gpt, Tokenizer, Vec<u32>), Problems> {
    let (model, tokenizer, text) = if checkpoint.join("run.json").is_file() {
        let run = load_run(checkpoint, load)?;
        let data = &run.config.data;
        let record = Record { instruction: ask.instruction.into(), input: ask.input.into(), output: String::new() };
        let text = if ask.raw {
            Prompt::Plain(ask.instruction.to_string())
        } else if ask.chat || data.format == DataFormat::Chat {
            chat_prompt(&run.tokenizer_dir, data.chat_template.as_deref(), ask.instruction)?
        } else {
            Prompt::Plain(prompt::render(&data.prompt_style, &record))
        };
        (run.model, run.tokenizer, text)
    } else {
        let (model, tokenizer) = load_checkpoint(checkpoint, placement)?;
        let text = match ask.chat {
            true => chat_prompt(checkpoint, None, ask.instruction)?,
            false => Prompt::Plain(ask.instruction.to_string()),
        };
        (model, tokenizer, text)
    };
    // A chat template writes the special tokens (a BOS) itself.
    let ids = match &text {
        Prompt::Plain(text) => tokenizer.encode(text, true)?,
        Prompt::Chat(text) => tokenizer.encode(text, false)?,
    };
    if ids.is_empty() {
        crate::bail_user!("--prompt is empty after tokenization; give some text");
    }
    Ok((model, tokenizer, ids))
}

/// The text the model is prompted with, and whether a chat template wrote it.
enum Prompt {
    Plain(String),
    Chat(String),
}

/// `instruction` as a user turn in the chat template (`setting`, else the tokenizer's own in `dir`),
/// followed by the assistant's header.
fn chat_prompt(dir: &Path, setting: Option<&str>, instruction: &str) -> Result<Prompt, Problems> {
    let template = ChatTemplate::load(dir, setting)?;
    let user = Message { role: "user".into(), content: instruction.to_string() };
    template.render(&[user], true).map(Prompt::Chat).map_err(|e| Problems::one(format!("--prompt: {e}")))
}
