//! Chat data: the model's own template rendered as transformers renders it, assistant turns supervised
//! exactly, conversations from JSON Lines and Parquet, `ftexp prepare`/`run`/`generate` on chat data,
//! and bad input.
use std::path::{Path, PathBuf};

use ftexp::config::{Columns, DataConfig, DataFormat, SplitRatios, TrainOn};
use ftexp::data::chat::{ChatTemplate, Message};
use ftexp::data::prepare::{prepare, Inputs, IGNORE};
use ftexp::data::Split;
use ftexp::tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::common::{fixtures, ftexp, stderr, stdout, tree};

fn family(name: &str) -> PathBuf {
    fixtures().join("chat").join(name)
}

/// The end-of-turn marker each family's template writes after an assistant's answer (OLMo 2's is its
/// EOS; Phi-3's `<|end|>`, before the `\n<|endoftext|>` that closes a conversation).
const FAMILIES: [(&str, &str); 8] = [
    ("llama3", "<|eot_id|>"),
    ("qwen2", "<|im_end|>"),
    ("mistral", "</s>"),
    ("qwen3", "<|im_end|>"),
    ("gemma2", "<end_of_turn>"),
    ("gemma3", "<end_of_turn>"),
    ("phi3", "<|end|>"),
    ("olmo2", "<|endoftext|>"),
];

/// What a family's template writes of its own before the last assistant's content, which the model
/// writes after the generation prompt and so learns: Qwen3's empty think block.
fn lead(name: &str) -> &'static str {
    if name == "qwen3" {
        "<think>\n\n</think>\n\n"
    } else {
        ""
    }
}

/// Gemma 2's template refuses a system turn (Gemma 3's folds it into the first user turn).
fn takes_system(name: &str) -> bool {
    name != "gemma2"
}

pub fn chat_config(path: &Path) -> DataConfig {
    let split = SplitRatios { train: 1.0, val: 0.0, test: 0.0 };
    DataConfig { format: DataFormat::Chat, split, ..crate::data::data_config(path) }
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("chat/expected.json")).unwrap()).unwrap()
}

/// Text and ids of every conversation (with and without a system turn, one and two exchanges, with and
/// without the generation prompt) equal what transformers' `apply_chat_template` gives
/// (`scripts/make_chat_fixtures.py` recorded it), and where the template raises there (Gemma 2 and a
/// system turn), rendering fails with its message.
#[test]
fn templates_render_and_tokenize_as_transformers_does() {
    let expected = expected();
    for (name, eot) in FAMILIES {
        let template = ChatTemplate::load(&family(name), None).unwrap();
        assert_eq!(template.end_of_turn, eot, "{name}");
        let tokenizer = Tokenizer::from_dir(&family(name)).unwrap();
        let cases = expected[name].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        for case in cases {
            let m = messages(&case["messages"]);
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            if let Some(error) = case["error"].as_str() {
                assert!(!takes_system(name) && m[0].role == "system", "{name}: {error}");
                let err = template.render(&m, gen).unwrap_err();
                assert!(err.contains(error), "{name}: want {error:?} in {err}");
                continue;
            }
            let text = template.render(&m, gen).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{name}: {m:?}");
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tokenizer.encode(&text, false).unwrap(), ids, "{name}: {m:?}");
        }
    }
}

/// The prepared samples of those conversations: the same ids, and labels that count exactly the
/// assistants' contents and each one's end-of-turn marker (and Qwen3's think block before the last).
#[test]
fn only_assistant_turns_and_their_end_of_turn_are_supervised() {
    let expected = expected();
    for (name, eot) in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<&Value> = expected[name]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add_generation_prompt"] == false && c.get("error").is_none())
            .collect();
        let rows: Vec<String> = cases.iter().map(|c| json!({"messages": c["messages"]}).to_string()).collect();
        let path = dir.path().join("chats.jsonl");
        std::fs::write(&path, rows.join("\n")).unwrap();
        let tokenizer = Tokenizer::from_dir(&family(name)).unwrap();
        let tf = family(name).join("tokenizer.json");
        let data = chat_config(&path);
        let p = prepare(
            &Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None },
            &dir.path().join("c"),
        )
        .unwrap();
        let samples = p.split(Split::Train);
        assert_eq!(samples.len(), cases.len());
        for case in cases {
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let s = samples
                .iter()
                .find(|s| s.input_ids == ids)
                .unwrap_or_else(|| panic!("{name}: no sample has the ids of {}", case["text"]));
            let answers: Vec<String> =
                messages(&case["messages"]).into_iter().filter(|m| m.role == "assistant").map(|m| m.content).collect();
            let runs = supervised(&s.labels);
            assert_eq!(runs.len(), answers.len(), "{name}: {}", case["text"]);
            for (k, ((a, b), answer)) in runs.into_iter().zip(&answers).enumerate() {
                let text = tokenizer.inner.decode(&s.input_ids[a..b], false).unwrap();
                // The template writes the answer as it is (Qwen2, Mistral, Qwen3, Phi-3, OLMo 2) or
                // trimmed (Llama-3, Gemma), after Qwen3's think block on the last turn.
                let lead = if k + 1 == answers.len() { lead(name) } else { "" };
                let written = [answer.as_str(), answer.trim_start(), answer.trim()].map(|a| format!("{lead}{a}{eot}"));
                assert!(written.contains(&text.trim_start().to_string()), "{name}: {text:?} for {answer:?}");
            }
            assert_eq!(s.output, answers.last().unwrap().as_str());
            // The prompt is what the template renders for generation (and any whitespace the answer
            // starts with): the model learns what it writes after.
            let turns = case["messages"].as_array().unwrap();
            let prompt = expected[name]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| {
                    c["add_generation_prompt"] == true
                        && c["messages"].as_array().unwrap()[..] == turns[..turns.len() - 1]
                })
                .unwrap();
            let decoded = tokenizer.inner.decode(&s.input_ids_no_response, false).unwrap();
            let rest = decoded.strip_prefix(prompt["text"].as_str().unwrap());
            assert!(rest.is_some_and(|r| r.trim().is_empty()), "{name}: {decoded:?} for {}", prompt["text"]);
        }
        // train_on = "all": every token counts.
        let all = DataConfig { train_on: TrainOn::All, ..data.clone() };
        let p = prepare(
            &Inputs { data: &all, seed: 1, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None },
            &dir.path().join("c"),
        )
        .unwrap();
        assert!(p.split(Split::Train).iter().all(|s| s.labels.iter().all(|&l| l != IGNORE)));
    }
}

/// `[start, end)` runs of supervised positions.
fn supervised(labels: &[i64]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        if l == IGNORE {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.1 == i => r.1 = i + 1,
            _ => runs.push((i, i + 1)),
        }
    }
    runs
}

/// ShareGPT-style JSON Lines (`conversations`, `from`/`value`, `human`/`gpt`) through `data.columns`
/// and the same conversations in Parquet (a list of role/content structs) prepare to the same samples.
#[test]
fn sharegpt_jsonl_and_parquet_conversations_give_the_same_samples() {
    let tokenizer = Tokenizer::from_dir(&family("llama3")).unwrap();
    let tf = family("llama3").join("tokenizer.json");
    let dir = tempfile::tempdir().unwrap();
    let parquet = chat_config(&fixtures().join("data/chat.parquet"));
    let mut jsonl = chat_config(&fixtures().join("data/chat.jsonl"));
    jsonl.columns = Columns {
        messages: "conversations".into(),
        role: "from".into(),
        content: "value".into(),
        user: "human".into(),
        assistant: "gpt".into(),
        ..jsonl.columns
    };
    let split = SplitRatios { train: 0.5, val: 0.25, test: 0.25 };
    let (parquet, jsonl) = (DataConfig { split, ..parquet }, DataConfig { split, ..jsonl });
    let a =
        prepare(&Inputs { data: &parquet, seed: 3, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None }, dir.path())
            .unwrap();
    let b =
        prepare(&Inputs { data: &jsonl, seed: 3, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None }, dir.path())
            .unwrap();
    assert_eq!(a.splits, b.splits);
    assert_eq!(a.chats, b.chats);
    assert_eq!((a.split(Split::Train).len(), a.split(Split::Val).len(), a.split(Split::Test).len()), (6, 3, 3));
    let with_system = a.chats.values().flatten().filter(|c| c[0].role == "system").count();
    assert_eq!(with_system, 4);
}

fn project(config_extra: &str, rows: &str) -> tempfile::TempDir {
    let config = format!(
        "name = \"c\"\nseed = 2\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\nformat = \"chat\"\npath = \"chats.jsonl\"\nmax_seq_length = 128\nsplit = {{ train = 0.5, val = 0.25, test = 0.25 }}\n{config_extra}[method]\nkind = \"full\"\n[train]\nlearning_rate = 1e-2\nmax_steps = 6\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 1\neval_interval = 3\neval_iters = 1\n",
        family("llama3").display()
    );
    tree(&[("exp.toml", &config), ("chats.jsonl", rows)])
}

fn fixture_rows() -> String {
    std::fs::read_to_string(fixtures().join("data/chat.jsonl")).unwrap()
}

const SHAREGPT: &str = "columns = { messages = \"conversations\", role = \"from\", content = \"value\", user = \"human\", assistant = \"gpt\" }\n";

/// `ftexp prepare` shows a rendered sample with only the assistant's turns outside ⟦ ⟧ and exports the
/// conversations; a run trains on them, and `ftexp generate` prompts the run through the same template.
#[test]
fn prepare_run_and_generate_use_the_chat_template() {
    let p = project(SHAREGPT, &fixture_rows());
    let out = ftexp(p.path(), &["prepare", "exp.toml", "--export", "out"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("⟦<|begin_of_text|><|start_header_id|>"), "{text}");
    assert!(text.contains(" cups<|eot_id|>"), "{text}");
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(p.path().join("out/train.jsonl")).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    assert_eq!(first["messages"].as_array().unwrap().last().unwrap()["role"], "assistant");
    assert!(first["output"].as_str().unwrap().ends_with("cups"));

    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = p.path().join("experiments/c/v1");
    let out = ftexp(
        p.path(),
        &[
            "generate",
            "--checkpoint",
            run.to_str().unwrap(),
            "--prompt",
            "Double 4.",
            "--max-new-tokens",
            "3",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let generated: Value = serde_json::from_str(&stdout(&out)).unwrap();
    // <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nDouble 4.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
    let tokenizer = Tokenizer::from_dir(&family("llama3")).unwrap();
    let header = tokenizer
        .encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nDouble 4.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", false)
        .unwrap();
    assert_eq!(generated["prompt_tokens"], header.len());
}

/// Each bad conversation is one line naming the file, the record and what to change, and nothing is
/// cached.
#[test]
fn bad_conversations_are_one_line_each_and_nothing_is_cached() {
    let turn = |role: &str, content: &str| json!({"role": role, "content": content});
    let ok = json!({"messages": [turn("user", "Hi"), turn("assistant", "Hello")]}).to_string();
    let cases: Vec<(String, &str, &str)> = vec![
        (json!({"messages": [{"role": "user"}, turn("assistant", "x")]}).to_string(), "", "chats.jsonl: record 3 (line 3): `messages` turn 1 has no `content`"),
        (json!({"messages": [turn("user", "a"), turn("bot", "b")]}).to_string(), "", "chats.jsonl: record 3 (line 3): `messages` turn 2 has the unknown role `bot`"),
        (json!({"messages": [turn("user", "a"), turn("user", "b")]}).to_string(), "", "chats.jsonl: record 3 (line 3): the conversation has no assistant turn"),
        (
            json!({"messages": [turn("user", "a"), turn("user", "b"), turn("assistant", "c")]}).to_string(),
            "chat_template = \"tpl.jinja\"\n",
            "chats.jsonl: record 3 (line 3): the chat template (tpl.jinja) failed: After the optional system message, conversation roles must alternate",
        ),
        (
            json!({"messages": [turn("system", "s"), turn("user", "a"), turn("assistant", "c")]}).to_string(),
            "chat_template = \"gemma2.jinja\"\n",
            "chats.jsonl: record 3 (line 3): the chat template (gemma2.jinja) failed: System role not supported",
        ),
    ];
    let mistral: Value =
        serde_json::from_str(&std::fs::read_to_string(family("mistral").join("tokenizer_config.json")).unwrap())
            .unwrap();
    let gemma2: Value =
        serde_json::from_str(&std::fs::read_to_string(family("gemma2").join("tokenizer_config.json")).unwrap())
            .unwrap();
    for (bad, extra, want) in cases {
        let rows = format!("{ok}\n{ok}\n{bad}\n{ok}\n");
        let p = project(extra, &rows);
        std::fs::write(p.path().join("tpl.jinja"), mistral["chat_template"].as_str().unwrap()).unwrap();
        std::fs::write(p.path().join("gemma2.jinja"), gemma2["chat_template"].as_str().unwrap()).unwrap();
        let out = ftexp(p.path(), &["prepare", "exp.toml"], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
        let cached = std::fs::read_dir(p.path().join("data/.cache")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(cached, 0, "{err}");
    }
}

/// A Parquet file without the column `data.columns` names is refused, naming the file, the column, its
/// columns and the key to set; a tokenizer without a template says to set `data.chat_template`.
#[test]
fn a_parquet_file_without_the_mapped_column_and_a_tokenizer_without_a_template_are_refused() {
    let tokenizer = Tokenizer::from_dir(&family("llama3")).unwrap();
    let tf = family("llama3").join("tokenizer.json");
    let dir = tempfile::tempdir().unwrap();
    let mut data = chat_config(&fixtures().join("data/alpaca.parquet"));
    let err =
        prepare(&Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None }, dir.path())
            .unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].ends_with("alpaca.parquet: has no column `messages` (its columns: `instruction`, `input`, `output`); set `data.columns.messages` to the column that holds it"), "{}", err.0[0]);
    data.path = fixtures().join("data/chat.parquet").display().to_string();
    let plain = fixtures().join("models/llama");
    let plain_tok = Tokenizer::from_dir(&plain).unwrap();
    let tf = plain.join("tokenizer.json");
    let err =
        prepare(&Inputs { data: &data, seed: 1, tokenizer: &plain_tok, tokenizer_file: &tf, hub: None }, dir.path())
            .unwrap_err();
    assert!(
        err.0[0].contains("the tokenizer has no chat template") && err.0[0].contains("data.chat_template = \"chatml\""),
        "{}",
        err.0[0]
    );
    data.chat_template = Some("chatml".into());
    let p =
        prepare(&Inputs { data: &data, seed: 1, tokenizer: &plain_tok, tokenizer_file: &tf, hub: None }, dir.path())
            .unwrap();
    assert_eq!(p.split(Split::Train).len(), 12);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1);
}

/// A template that would run forever, recurse without end or write gigabytes is refused quickly, in
/// one line naming the template and the limit it hit.
#[test]
fn templates_that_hang_or_write_without_end_are_refused_quickly() {
    let cases = [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "did not finish within its limit of 5000000 steps",
        ),
        ("{% for i in range(10**9) %}x{% endfor %}", "range has too many elements"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
        (
            "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
            "writes more than 1049312 bytes for one conversation",
        ),
        ("{{ 'x' * 10**10 }}", "repeated string is too large"),
        ("{% for m in messages * 1000000 %}{{ m.content }}{% endfor %}", "writes more than"),
    ];
    for (source, want) in cases {
        let start = std::time::Instant::now();
        let origin = "hostile.jinja".to_string();
        let err = ChatTemplate::new(source.into(), origin, String::new(), String::new()).err().unwrap();
        assert_eq!(err.0.len(), 1, "{source}");
        assert!(err.0[0].starts_with("the chat template (hostile.jinja) "), "{}", err.0[0]);
        assert!(err.0[0].contains(want), "want {want:?} in {}", err.0[0]);
        assert!(start.elapsed().as_secs() < 10, "{source}: {:?}", start.elapsed());
    }
    let p = project("chat_template = \"tpl.jinja\"\n", &fixture_rows());
    std::fs::write(p.path().join("tpl.jinja"), cases[0].0).unwrap();
    let out = ftexp(p.path(), &["prepare", "exp.toml"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the chat template (tpl.jinja) did not finish within its limit"), "{err}");
}

/// One-letter answers (`A`, `4`, and letters the templates' own headers hold, even after a user turn
/// of that same letter) are valid data: each family supervises exactly that answer and its marker.
#[test]
fn one_letter_answers_are_supervised_where_the_template_put_them() {
    let turn = |role: &str, content: &str| json!({"role": role, "content": content});
    let answers = ["A", "4", "s", "t", "I", "N", "e"];
    for (name, eot) in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<String> = answers
            .iter()
            .map(|a| {
                let mut turns = vec![turn("user", a), turn("assistant", a)];
                if takes_system(name) {
                    turns.insert(0, turn("system", "Be brief."));
                }
                json!({ "messages": turns }).to_string()
            })
            .collect();
        let path = dir.path().join("chats.jsonl");
        std::fs::write(&path, rows.join("\n")).unwrap();
        let tokenizer = Tokenizer::from_dir(&family(name)).unwrap();
        let tf = family(name).join("tokenizer.json");
        let data = chat_config(&path);
        let p = prepare(
            &Inputs { data: &data, seed: 1, tokenizer: &tokenizer, tokenizer_file: &tf, hub: None },
            &dir.path().join("c"),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let samples = p.split(Split::Train);
        assert_eq!(samples.len(), answers.len(), "{name}");
        for s in samples {
            let runs = supervised(&s.labels);
            assert_eq!(runs.len(), 1, "{name}: {}", s.output);
            let text = tokenizer.inner.decode(&s.input_ids[runs[0].0..runs[0].1], false).unwrap();
            assert_eq!(text.trim_start(), format!("{}{}{eot}", lead(name), s.output), "{name}");
        }
    }
}
