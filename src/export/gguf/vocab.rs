//! The tokenizer as GGUF metadata, for byte-level BPE tokenizers (GPT-2's kind: Llama 3, Qwen2, and
//! the tokenizers ftexp trains): `tokenizer.ggml.model = "gpt2"`, the tokens by id with their types
//! (1 normal, 3 control for special added tokens, 4 user-defined for other added tokens, 5 unused for
//! the embedding rows past the tokenizer), the merges, the pre-tokenizer llama.cpp must apply (named
//! by the regular expression `tokenizer.json` splits with), the special token ids, and the chat template.
use std::path::Path;

use serde_json::Value as Json;

use super::writer::Value;
use crate::tokenizer::Tokenizer;

/// Llama 3's split expression (llama.cpp's `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (llama.cpp's `qwen2`): Llama 3's with single digits.
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the tokenizer metadata is made from.
pub struct VocabSource<'a> {
    pub dir: &'a Path,
    pub tokenizer: &'a Tokenizer,
    /// The model's embedding rows (at least the tokenizer's tokens).
    pub rows: usize,
    /// The chat template the run was trained with (or the tokenizer's own), and what ends a turn in it.
    pub chat_template: Option<(String, String)>,
}

/// The `tokenizer.*` metadata, or why this tokenizer cannot be written.
pub fn metadata(src: &VocabSource) -> Result<Vec<(String, Value)>, String> {
    let path = src.dir.join("tokenizer.json");
    let json: Json = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| format!("{}: cannot read the tokenizer", path.display()))?;
    let model = &json["model"];
    if model["type"] != "BPE" || json["decoder"]["type"] != "ByteLevel" || !json["normalizer"].is_null() {
        return Err(format!(
            "{}: --format gguf writes byte-level BPE tokenizers (GPT-2's kind, with no normalizer); this one is a {} model with a {} decoder",
            path.display(),
            model["type"],
            json["decoder"]["type"]
        ));
    }
    let pre = pre_tokenizer(&json["pre_tokenizer"]).ok_or_else(|| {
        format!(
            "{}: its pre-tokenizer ({}) is none llama.cpp names that ftexp knows (GPT-2's, Llama 3's, Qwen2's, Falcon's); export with --format hf",
            path.display(),
            json["pre_tokenizer"]
        )
    })?;
    let (tokens, types) = tokens(&json, src.rows)?;
    let merges = merges(&model["merges"]);
    let mut kv = vec![
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str(pre.into())),
        ("tokenizer.ggml.tokens", Value::Strs(tokens)),
        ("tokenizer.ggml.token_type", Value::I32s(types)),
        ("tokenizer.ggml.merges", Value::Strs(merges)),
    ];
    kv.extend(special_ids(src));
    if let Some((template, _)) = &src.chat_template {
        kv.push(("tokenizer.chat_template", Value::Str(template.clone())));
    }
    Ok(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// llama.cpp's name of the pre-tokenizer: GPT-2's ByteLevel split, or Llama 3's or Qwen2's expression
/// before a ByteLevel that does not split again.
fn pre_tokenizer(pre: &Json) -> Option<&'static str> {
    let byte_level =
        |p: &Json, regex: bool| p["type"] == "ByteLevel" && p["use_regex"] == regex && p["add_prefix_space"] == false;
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let steps = pre["pretokenizers"].as_array().filter(|_| pre["type"] == "Sequence")?;
    // Falcon's: punctuation runs, GPT-2's split, digit runs, then groups of three digits
    if let [punct, byte, digits, split] = steps.as_slice() {
        let falcon = punct["type"] == "Punctuation"
            && byte_level(byte, true)
            && digits["type"] == "Digits"
            && digits["individual_digits"] == false
            && split["type"] == "Split"
            && split["pattern"]["Regex"] == "[0-9][0-9][0-9]";
        return falcon.then_some("falcon");
    }
    let [split, last] = steps.as_slice() else { return None };
    if split["type"] != "Split" || !byte_level(last, false) {
        return None;
    }
    match split["pattern"]["Regex"].as_str()? {
        LLAMA3_REGEX => Some("llama-bpe"),
        QWEN2_REGEX => Some("qwen2"),
        _ => None,
    }
}

/// The tokens by id, `rows` of them (`[PAD<id>]` where the tokenizer has none), and their types.
fn tokens(json: &Json, rows: usize) -> Result<(Vec<String>, Vec<i32>), String> {
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; rows];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<(), String> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            format!("the tokenizer's token {text:?} has id {id}, past the model's {rows} embedding rows")
        })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    for (text, id) in json["model"]["vocab"].as_object().into_iter().flatten() {
        put(id.as_u64().unwrap_or(u64::MAX), text, 1)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let ty = if added["special"] == true { 3 } else { 4 };
        put(added["id"].as_u64().unwrap_or(u64::MAX), added["content"].as_str().unwrap_or(""), ty)?;
    }
    Ok(tokens.into_iter().enumerate().map(|(id, t)| t.unwrap_or_else(|| (format!("[PAD{id}]"), 5))).unzip())
}

/// The merges as `"left right"` (tokenizer.json holds them as pairs or as such strings).
fn merges(merges: &Json) -> Vec<String> {
    let one = |m: &Json| match m {
        Json::String(s) => s.clone(),
        Json::Array(pair) => pair.iter().map(|p| p.as_str().unwrap_or("")).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    };
    merges.as_array().into_iter().flatten().map(one).collect()
}

/// BOS, EOS, padding and end-of-turn ids, and whether encoding adds BOS or EOS (as the tokenizer's
/// own post-processor does).
fn special_ids(src: &VocabSource) -> Vec<(&'static str, Value)> {
    let t = src.tokenizer;
    let mut kv = Vec::new();
    let plain = t.encode("a", false).unwrap_or_default();
    let special = t.encode("a", true).unwrap_or_default();
    if let Some(bos) = t.bos_id {
        kv.push(("tokenizer.ggml.bos_token_id", Value::U32(bos)));
        kv.push(("tokenizer.ggml.add_bos_token", Value::Bool(special.len() > plain.len() && special[0] == bos)));
    }
    if let Some(&eos) = t.eos_ids.first() {
        kv.push(("tokenizer.ggml.eos_token_id", Value::U32(eos)));
        kv.push((
            "tokenizer.ggml.add_eos_token",
            Value::Bool(special.len() > plain.len() && special.last() == Some(&eos)),
        ));
    }
    let config: Option<Json> =
        std::fs::read_to_string(src.dir.join("tokenizer_config.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
    let pad = config.as_ref().and_then(|c| match &c["pad_token"] {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(String::from),
        _ => None,
    });
    if let Some(id) = pad.and_then(|p| t.inner.token_to_id(&p)) {
        kv.push(("tokenizer.ggml.padding_token_id", Value::U32(id)));
    }
    let end_of_turn = src.chat_template.as_ref().map(|(_, e)| e.trim()).filter(|e| !e.is_empty());
    if let Some(id) = end_of_turn.and_then(|e| t.inner.token_to_id(e)).filter(|id| !t.eos_ids.contains(id)) {
        kv.push(("tokenizer.ggml.eot_token_id", Value::U32(id)));
    }
    kv
}
