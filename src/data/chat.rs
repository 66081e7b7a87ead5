//! Conversations: records holding a list of turns, rendered into text by the model's own chat template
//! (a Jinja template, as transformers renders it), with the byte spans of each assistant turn and its
//! end-of-turn marker found in the rendered text, so any template works.
use std::ops::Range;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment, Error, ErrorKind};
use serde_json::Value;

use super::files::{kind, read_rows, Needed, Row};
use super::samples::{length_stats, Sample, SplitStats, IGNORE};
pub use super::samples::{Conversation, Message};
use crate::config::schema::Columns;
use crate::config::{DataConfig, LongSamples, TrainOn};
use crate::error::Problems;
use crate::tokenizer::Tokenizer;

/// ChatML, as Qwen2 and many others write it, for tokenizers without a template of their own.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The conversations of `files`, in order, read through `columns`, each with where it is.
pub fn read_conversations(files: &[PathBuf], columns: &Columns) -> Result<Vec<(Conversation, String)>, Problems> {
    let needed = [Needed { column: &columns.messages, key: "data.columns.messages" }];
    read_rows(files, &needed)?
        .into_iter()
        .map(|Row { value, at }| match to_conversation(value, columns) {
            Ok(c) => Ok((c, at)),
            Err(msg) => Err(Problems::one(format!("{at}: {msg}"))),
        })
        .collect()
}

/// A conversation as its template writes it, and the byte ranges of the assistant's turns.
pub struct Rendered {
    pub text: String,
    pub spans: Vec<Range<usize>>,
}

/// Every conversation rendered, or the first one the template refuses, named by file and record.
pub fn render_all(rows: &[(Conversation, String)], template: &ChatTemplate) -> Result<Vec<Rendered>, Problems> {
    rows.iter()
        .map(|(messages, at)| {
            let text = template.render(messages, false).map_err(|e| Problems::one(format!("{at}: {e}")))?;
            let spans = template.assistant_spans(&text, messages).map_err(|e| Problems::one(format!("{at}: {e}")))?;
            Ok(Rendered { text, spans })
        })
        .collect()
}

/// Samples of rendered conversations: the rendered text's tokens (the template writes any BOS itself),
/// labelled where a token overlaps an assistant's span (`train_on = "assistant"`) or everywhere.
/// The prompt (`input_ids_no_response`) is everything before the last assistant turn; `instruction`
/// and `output` are that turn's question and answer. Returns the kept samples, their conversations
/// and the split's statistics.
pub fn tokenize(
    chosen: &[(&Conversation, &Rendered)],
    d: &DataConfig,
    tok: &Tokenizer,
) -> Result<(Vec<Sample>, Vec<Conversation>, SplitStats), Problems> {
    let texts: Vec<String> = chosen.iter().map(|(_, r)| r.text.clone()).collect();
    let encodings = tok.inner.encode_batch(texts, false).map_err(|e| Problems::one(format!("cannot tokenize: {e}")))?;
    let max = d.max_seq_length as usize;
    let mut stats = SplitStats { records: chosen.len(), ..SplitStats::default() };
    let (mut samples, mut kept) = (Vec::new(), Vec::new());
    for ((messages, rendered), encoding) in chosen.iter().zip(encodings) {
        let mut ids = encoding.get_ids().to_vec();
        let overlaps = |(a, b): (usize, usize)| rendered.spans.iter().any(|s| a < s.end && b > s.start);
        let in_span: Vec<bool> = encoding.get_offsets().iter().map(|&o| overlaps(o)).collect();
        let mut labels: Vec<i64> = ids
            .iter()
            .zip(&in_span)
            .map(|(&id, &inside)| if inside || d.train_on == TrainOn::All { id as i64 } else { IGNORE })
            .collect();
        let last_start = rendered
            .spans
            .last()
            .and_then(|last| encoding.get_offsets().iter().position(|&(a, b)| a < last.end && b > last.start));
        if ids.len() > max {
            if d.long_samples == LongSamples::Drop || !labels[1..max].iter().any(|&l| l != IGNORE) {
                stats.dropped += 1;
                continue;
            }
            ids.truncate(max);
            labels.truncate(max);
            stats.truncated += 1;
        }
        let prompt = last_start.unwrap_or(0).min(ids.len());
        let answer = messages.iter().rposition(|m| m.role == "assistant").unwrap_or(0);
        let question = messages[..answer].iter().rfind(|m| m.role == "user");
        samples.push(Sample {
            instruction: question.map(|m| m.content.clone()).unwrap_or_default(),
            input: String::new(),
            output: messages[answer].content.clone(),
            input_ids_no_response: ids[..prompt].to_vec(),
            input_ids: ids,
            labels,
        });
        kept.push((*messages).clone());
    }
    length_stats(&samples, &mut stats);
    Ok((samples, kept, stats))
}

fn to_conversation(value: Value, c: &Columns) -> Result<Conversation, String> {
    let list = match &value {
        Value::Object(map) => match map.get(&c.messages) {
            Some(Value::Array(list)) => list,
            Some(other) => return Err(format!("`{}` must be a list of turns, found {}", c.messages, kind(other))),
            None => {
                return Err(format!(
                    "missing `{}`, the list of turns; set `data.columns.messages` to the field that holds it",
                    c.messages
                ))
            }
        },
        other => return Err(format!("expected an object with `{}`, found {}", c.messages, kind(other))),
    };
    let mut turns = Vec::with_capacity(list.len());
    for (i, turn) in list.iter().enumerate() {
        let at = format!("`{}` turn {}", c.messages, i + 1);
        let Value::Object(t) = turn else { return Err(format!("{at} must be an object, found {}", kind(turn))) };
        let role = match t.get(&c.role) {
            Some(Value::String(r)) if *r == c.user => "user",
            Some(Value::String(r)) if *r == c.assistant => "assistant",
            Some(Value::String(r)) if *r == c.system && i == 0 => "system",
            Some(Value::String(r)) if *r == c.system => {
                return Err(format!("{at} is a `{r}` turn; a system turn may only come first"))
            }
            Some(Value::String(r)) => {
                return Err(format!(
                    "{at} has the unknown role `{r}`; the roles are `{}` (user), `{}` (assistant) and `{}` (system): set `data.columns.user`, `.assistant` or `.system` to the names your data uses",
                    c.user, c.assistant, c.system
                ))
            }
            Some(other) => return Err(format!("{at}: `{}` must be a string, found {}", c.role, kind(other))),
            None => return Err(format!("{at} has no `{}`; set `data.columns.role` to the field that names the speaker", c.role)),
        };
        let content = match t.get(&c.content) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => {
                return Err(format!("{at} has an empty `{}`; remove the turn or fill it", c.content))
            }
            Some(other) => return Err(format!("{at}: `{}` must be a string, found {}", c.content, kind(other))),
            None => {
                return Err(format!(
                    "{at} has no `{}`; every turn needs its text (`data.columns.content` names the field)",
                    c.content
                ))
            }
        };
        turns.push(Message { role: role.into(), content });
    }
    if !turns.iter().any(|m| m.role == "assistant") {
        return Err(format!(
            "the conversation has no assistant turn (role `{}`), so there is nothing to learn; remove it, or set `data.columns.assistant` to the role your data uses",
            c.assistant
        ));
    }
    Ok(turns)
}

/// A chat template ready to render, with the tokens it is given and the marker it ends a turn with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template's text (part of the data cache key).
    pub source: String,
    /// Where the template came from, for errors.
    pub origin: String,
    bos: String,
    eos: String,
    /// What the template writes right after an assistant's content to end the turn (e.g. `<|eot_id|>`).
    pub end_of_turn: String,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// A token named in `tokenizer_config.json`: a string, or an object with its `content`.
fn token(config: Option<&Value>, key: &str) -> String {
    match config.and_then(|c| c.get(key)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// The template `tokenizer_config.json` holds: a string, or a list of named ones (`default` wins).
fn own_template(config: Option<&Value>) -> Option<String> {
    match config?.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(name));
            named("default").or(list.first())?.get("template")?.as_str().map(String::from)
        }
        _ => None,
    }
}

impl ChatTemplate {
    /// The template `setting` (`data.chat_template`) names: unset, the tokenizer's own in `tokenizer_dir`;
    /// `chatml`; or a template file.
    pub fn load(tokenizer_dir: &Path, setting: Option<&str>) -> Result<ChatTemplate, Problems> {
        let config_path = tokenizer_dir.join("tokenizer_config.json");
        let config = read_json(&config_path);
        let (source, origin) = match setting {
            Some("chatml") => (CHATML.to_string(), "chatml".to_string()),
            Some(file) => match std::fs::read_to_string(file) {
                Ok(text) => (text, file.to_string()),
                Err(e) => {
                    return Err(Problems::one(format!(
                        "{file}: cannot read the chat template that `data.chat_template` names: {e}; give \"chatml\" or the path of a Jinja template file"
                    )))
                }
            },
            None => {
                let jinja = tokenizer_dir.join("chat_template.jinja");
                match own_template(config.as_ref()) {
                    Some(t) => (t, config_path.display().to_string()),
                    None => match std::fs::read_to_string(&jinja) {
                        Ok(t) => (t, jinja.display().to_string()),
                        Err(_) => return Err(Problems::one(format!(
                            "{}: the tokenizer has no chat template (no `chat_template` here, no chat_template.jinja beside it); set `data.chat_template = \"chatml\"` or the path of a template file",
                            config_path.display()
                        ))),
                    },
                }
            }
        };
        Self::new(source, origin, token(config.as_ref(), "bos_token"), token(config.as_ref(), "eos_token"))
    }

    /// A template from its text, with the BOS and EOS token texts it is given.
    pub fn new(source: String, origin: String, bos: String, eos: String) -> Result<ChatTemplate, Problems> {
        let mut env = Environment::new();
        // transformers renders with these jinja2 settings.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.clone())
            .map_err(|e| Problems::one(format!("{origin}: the chat template is not valid Jinja: {}", describe(&e))))?;
        let mut t = ChatTemplate { env, source, origin, bos, eos, end_of_turn: String::new() };
        t.end_of_turn = t.probe_end_of_turn().map_err(Problems::one)?;
        Ok(t)
    }

    /// The conversation as text, with the assistant's header after it when `add_generation_prompt`.
    /// Rendering is bounded, so a template that loops forever or writes without end is refused: at
    /// most [`FUEL`] steps of work (minijinja's fuel), minijinja's own recursion limit (500 nested
    /// calls) and repeat limit (`'x' * n` up to 100 MB), and an output of at most 1 MiB plus 16 bytes
    /// for each byte of the conversation's own text ([`output_limit`]).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| describe(&e))?;
        let mut out = Capped { text: Vec::new(), limit: output_limit(messages), over: false };
        let ctx = context! {
            messages => messages,
            bos_token => &self.bos,
            eos_token => &self.eos,
            add_generation_prompt => add_generation_prompt,
        };
        let origin = &self.origin;
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.text)
                .map_err(|_| format!("the chat template ({origin}) failed: it wrote text that is not UTF-8")),
            Err(_) if out.over => Err(format!(
                "the chat template ({origin}) writes more than {} bytes for one conversation (the limit is 1 MiB plus 16 bytes per byte of its text); fix the template so it writes each turn once",
                out.limit
            )),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(format!(
                "the chat template ({origin}) did not finish within its limit of {FUEL} steps for one conversation: it loops too long or forever; fix its loops or recursion"
            )),
            Err(e) => Err(format!("the chat template ({origin}) failed: {}", describe(&e))),
        }
    }

    /// What the template writes after an assistant's content both at the end of a conversation and
    /// before the next turn, less trailing whitespace: its end-of-turn marker.
    fn probe_end_of_turn(&self) -> Result<String, String> {
        let (u1, a1, u2, a2) = (
            "ftexp probe question one",
            "ftexp probe answer one",
            "ftexp probe question two",
            "ftexp probe answer two",
        );
        let m = |role: &str, content: &str| Message { role: role.into(), content: content.into() };
        let one = self.render(&[m("user", u1), m("assistant", a1)], false)?;
        let two = self.render(&[m("user", u1), m("assistant", a1), m("user", u2), m("assistant", a2)], false)?;
        let after = |text: &str| text.find(a1).map(|i| text[i + a1.len()..].to_string());
        let (Some(end), Some(before_next)) = (after(&one), after(&two)) else {
            return Err(format!("{}: the chat template does not write an assistant's content as it is", self.origin));
        };
        let before_next = before_next.find(u2).map_or(before_next.as_str(), |i| &before_next[..i]).to_string();
        let mut common: String =
            end.chars().zip(before_next.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a).collect();
        // Where both go on past what they share, they part inside what follows the marker (Phi-3:
        // `<|end|>\n<|endoftext|>` and `<|end|>\n<|user|>` share `<|end|>\n<|`): the marker ends
        // before the last whitespace they share.
        if common.len() < end.len() && common.len() < before_next.len() {
            if let Some(i) = common.rfind(char::is_whitespace) {
                common.truncate(i);
            }
        }
        let marker = if common.trim_end().is_empty() { common } else { common.trim_end().to_string() };
        if marker.is_empty() {
            return Err(format!(
                "{}: the chat template writes nothing after an assistant's turn, so the model could not learn where an answer ends; use a template with an end-of-turn marker",
                self.origin
            ));
        }
        Ok(marker)
    }

    /// The byte ranges of `text` (the rendering of `messages`) that hold each assistant's content and
    /// the end-of-turn marker after it, from where the model writes the turn (`answer_start`).
    /// Turns are found in order; a system turn may be placed anywhere.
    pub fn assistant_spans(&self, text: &str, messages: &[Message]) -> Result<Vec<Range<usize>>, String> {
        let starts = self.content_starts(text, messages);
        let mut cursor = 0;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let needle = m.content.trim();
            let found = match &starts {
                Some(starts) => Some(starts[i]),
                None => text[cursor..].find(needle).map(|p| cursor + p),
            };
            match (m.role.as_str(), found) {
                ("assistant", None) => {
                    return Err(format!(
                        "turn {}: the chat template ({}) does not write this assistant turn's content as it is, so its tokens cannot be found",
                        i + 1,
                        self.origin
                    ))
                }
                ("assistant", Some(start)) => {
                    // A template that writes the content untrimmed leaves its trailing whitespace before the marker.
                    let trailing = &m.content[m.content.trim_end().len()..];
                    let end = start + needle.len() + if text[start + needle.len()..].starts_with(trailing) { trailing.len() } else { 0 };
                    if !text[end..].starts_with(&self.end_of_turn) {
                        return Err(format!(
                            "turn {}: the chat template ({}) does not end this assistant turn with `{}` as it ends others",
                            i + 1,
                            self.origin,
                            self.end_of_turn
                        ));
                    }
                    spans.push(self.answer_start(text, &messages[..i], cursor, start)..end + self.end_of_turn.len());
                    cursor = end + self.end_of_turn.len();
                }
                ("user", Some(start)) => cursor = start + needle.len(),
                _ => {}
            }
        }
        Ok(spans)
    }
}

impl ChatTemplate {
    /// Where the model's writing of an assistant turn starts in `text`, the rendering of a conversation
    /// whose earlier turns are `before`: at `content` (where the turn's content starts), unless the
    /// template writes text of its own between the generation prompt and the content (Qwen3's empty
    /// `<think>\n\n</think>\n\n` on the last turn). The model must learn to write that text, since a
    /// prompt rendered for generation stops before it: then the turn starts where the generation
    /// prompt of `before` ends, when `text` starts with that prompt and it ends after `from` (the end
    /// of the turns found so far). Whitespace alone there (Mistral's space after `[/INST]`) is left as
    /// it was: the content's first token holds it.
    fn answer_start(&self, text: &str, before: &[Message], from: usize, content: usize) -> usize {
        match self.render(before, true) {
            Ok(prompt)
                if (from..content).contains(&prompt.len())
                    && text.starts_with(&prompt)
                    && !text[prompt.len()..content].trim().is_empty() =>
            {
                prompt.len()
            }
            _ => content,
        }
    }

    /// Where each turn's (trimmed) content starts in `text`, the rendering of `messages`: the template
    /// renders the conversation again with a placeholder for each content, and the text between the
    /// placeholders must match `text` around each content (as given, or trimmed). So a short answer
    /// such as `A` or `4` is found where the template put it, not inside a header that happens to hold
    /// that letter. None when the template writes contents otherwise (then they are searched for).
    fn content_starts(&self, text: &str, messages: &[Message]) -> Option<Vec<usize>> {
        let mark = |i: usize| format!("\u{E000}ftexp turn {i}\u{E001}");
        let placed: Vec<Message> =
            messages.iter().enumerate().map(|(i, m)| Message { role: m.role.clone(), content: mark(i) }).collect();
        let shape = self.render(&placed, false).ok()?;
        let mut marks = Vec::with_capacity(messages.len());
        let mut from = 0;
        for i in 0..messages.len() {
            let at = from + shape[from..].find(&mark(i))?;
            from = at + mark(i).len();
            marks.push(at..from);
        }
        let (mut starts, mut cursor) = (Vec::with_capacity(messages.len()), 0);
        for (i, m) in messages.iter().enumerate() {
            let before = &shape[if i == 0 { 0 } else { marks[i - 1].end }..marks[i].start];
            let after = &shape[marks[i].end..marks.get(i + 1).map_or(shape.len(), |r| r.start)];
            if text.get(cursor..cursor + before.len()) != Some(before) {
                return None;
            }
            cursor += before.len();
            let c = m.content.as_str();
            let written = [c, c.trim_start(), c.trim_end(), c.trim()]
                .into_iter()
                .find(|w| text[cursor..].starts_with(w) && text[cursor + w.len()..].starts_with(after))?;
            starts.push(cursor + written.len() - written.trim_start().len());
            cursor += written.len();
        }
        Some(starts)
    }
}

/// The work one rendering may do, in minijinja's fuel (about one unit per instruction): far above what
/// a real template needs for a long conversation, and used up in well under a second.
pub const FUEL: u64 = 5_000_000;

/// The most bytes one rendering may write: 1 MiB, plus 16 for each byte of the conversation's text.
pub fn output_limit(messages: &[Message]) -> usize {
    (1 << 20) + 16 * messages.iter().map(|m| m.content.len()).sum::<usize>()
}

/// A rendering's output, refused past `limit` bytes.
struct Capped {
    text: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("the chat template's output is too long"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A minijinja error in one line: what went wrong, and where in the template.
fn describe(e: &Error) -> String {
    let what = e.detail().map(String::from).unwrap_or_else(|| e.kind().to_string());
    match e.line() {
        Some(line) => format!("{what} (template line {line})"),
        None => what,
    }
}
