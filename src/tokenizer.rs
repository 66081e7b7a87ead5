//! The checkpoint's `tokenizer.json`, with BOS/EOS ids found the way transformers finds them:
//! `generation_config.json`, then `config.json`, then the tokens named in `tokenizer_config.json`.
use std::path::Path;

use serde_json::Value;

use crate::error::Problems;

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    /// Generation stops at any of these.
    pub eos_ids: Vec<u32>,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// `5`, `[5, 7]` → ids.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
        _ => vec![],
    }
}

impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Tokenizer, Problems> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Problems::one(format!(
                "{}: not found; ftexp needs the fast tokenizer file tokenizer.json next to config.json",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Problems::one(format!("{}: cannot load the tokenizer: {e}", path.display())))?;
        let generation = read_json(&dir.join("generation_config.json"));
        let config = read_json(&dir.join("config.json"));
        let tok_config = read_json(&dir.join("tokenizer_config.json"));
        let named = |key: &str| -> Vec<u32> {
            let token = tok_config.as_ref().and_then(|t| t.get(key)).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
                _ => None,
            });
            token.and_then(|t| inner.token_to_id(&t)).into_iter().collect()
        };
        let pick = |key: &str| -> Vec<u32> {
            let from_gen = ids(generation.as_ref().and_then(|g| g.get(key)));
            if !from_gen.is_empty() {
                return from_gen;
            }
            let from_config = ids(config.as_ref().and_then(|c| c.get(key)));
            if !from_config.is_empty() {
                return from_config;
            }
            named(&key.replace("_id", ""))
        };
        Ok(Tokenizer { bos_id: pick("bos_token_id").first().copied(), eos_ids: pick("eos_token_id"), inner })
    }

    /// Token ids of `text`, with the special tokens the tokenizer's own post-processor adds (e.g. BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, Problems> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Problems::one(format!("cannot tokenize: {e}")))
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The end-of-text token of tokenizers ftexp trains; id 0.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Trains a byte-level BPE tokenizer of `vocab_size` tokens on the text files `corpus` and writes
/// `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` into `out`.
pub fn train(corpus: &[std::path::PathBuf], vocab_size: usize, out: &Path) -> Result<Tokenizer, Problems> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};
    for file in corpus {
        if !file.is_file() {
            return Err(Problems::one(format!("{}: corpus file not found", file.display())));
        }
    }
    let fail = |e: String| Problems::one(format!("{}: cannot train the tokenizer: {e}", out.display()));
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer: tokenizers::TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = tokenizers::TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .with_post_processor(Some(byte_level.into()))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let files: Vec<String> = corpus.iter().map(|p| p.display().to_string()).collect();
    tokenizer.train_from_files(&mut trainer, files).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(|e| fail(e.to_string()))?;
    tokenizer.save(out.join("tokenizer.json"), false).map_err(|e| fail(e.to_string()))?;
    let write = |name: &str, json: serde_json::Value| {
        std::fs::write(out.join(name), serde_json::to_string_pretty(&json).expect("json"))
            .map_err(|e| fail(e.to_string()))
    };
    write("tokenizer_config.json", serde_json::json!({"eos_token": END_OF_TEXT, "bos_token": END_OF_TEXT}))?;
    write("generation_config.json", serde_json::json!({"eos_token_id": 0, "bos_token_id": 0}))?;
    Tokenizer::from_dir(out)
}
