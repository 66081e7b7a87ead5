//! Strict config.json: a key that would change what the model computes and that ftexp does not
//! implement is refused by name (one line, the file named), unless `model.allow_unknown_config_keys`
//! lets it through, which the plan records; every fixture and published config still loads.
use std::path::{Path, PathBuf};

use ftexp::model::spec::ModelSpec;
use serde_json::{json, Value};

use crate::common::{doubling_project, fixtures, ftexp, json_file, stderr, stdout};

/// Every config.json the tests hold: the tiny models', the chat fixtures' and the published ones.
fn every_config() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["models", "chat"] {
        for entry in std::fs::read_dir(fixtures().join(dir)).unwrap().flatten() {
            let config = entry.path().join("config.json");
            if config.is_file() {
                files.push(config);
            }
        }
    }
    for entry in std::fs::read_dir(fixtures().join("hub-configs")).unwrap().flatten() {
        files.push(entry.path());
    }
    files.sort();
    files
}

#[test]
fn every_fixture_and_published_config_loads_with_nothing_ignored() {
    let files = every_config();
    assert!(files.len() >= 14, "{files:?}");
    for path in files {
        let spec = ModelSpec::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(spec.ignored_config_keys.is_empty(), "{}: {:?}", path.display(), spec.ignored_config_keys);
    }
}

fn fixture_config(name: &str) -> Value {
    json_file(&fixtures().join("models").join(name).join("config.json"))
}

/// `config` with `key` set to `value`.
fn with(mut config: Value, key: &str, value: Value) -> Value {
    config[key] = value;
    config
}

#[test]
fn unknown_keys_are_refused_by_name_unless_allowed() {
    let llama = fixture_config("llama");
    let capped = with(llama.clone(), "attn_logit_softcapping", json!(50.0));
    let err = ModelSpec::from_json(&capped).unwrap_err();
    assert!(err.contains("does not implement key `attn_logit_softcapping = 50.0` of this llama config.json"), "{err}");
    assert!(err.contains("set model.allow_unknown_config_keys = true") && !err.contains('\n'), "{err}");
    let spec = ModelSpec::from_json_allowing(&capped, true).unwrap();
    assert_eq!(spec.ignored_config_keys, ["attn_logit_softcapping = 50.0"]);
    assert_eq!(ModelSpec { ignored_config_keys: Vec::new(), ..spec }, ModelSpec::from_json(&llama).unwrap());

    let invented = with(with(llama.clone(), "frobnicate_heads", json!(true)), "attention_dropout", json!(0.1));
    let err = ModelSpec::from_json(&invented).unwrap_err();
    assert!(err.contains("keys `attention_dropout = 0.1`, `frobnicate_heads = true`"), "{err}");
}

/// Keys that change the computation are harmless at their neutral value, and refused at any other.
#[test]
fn neutral_values_load_and_others_are_refused() {
    let (llama, qwen, neox, falcon) = (
        fixture_config("llama"),
        fixture_config("qwen2"),
        fixture_config("gpt-neox"),
        fixture_config("falcon-7b-style"),
    );
    let fine = [
        with(llama.clone(), "attention_dropout", json!(0)),
        with(llama.clone(), "rope_scaling", Value::Null),
        with(llama.clone(), "sliding_window", Value::Null),
        with(llama.clone(), "sliding_window", json!(256)), // max_position_embeddings: never reached
        with(llama.clone(), "attn_logit_softcapping", Value::Null),
        with(llama.clone(), "hidden_act", json!("silu")),
        with(with(llama.clone(), "attention_bias", json!(true)), "mlp_bias", json!(true)), // biases everywhere
        with(falcon.clone(), "apply_residual_connection_post_layernorm", json!(false)),
        with(falcon.clone(), "hidden_dropout", json!(0.0)),
        with(neox.clone(), "classifier_dropout", json!(0.3)),
        with(qwen.clone(), "temperature", json!(0.7)),
    ];
    for config in fine {
        let spec = ModelSpec::from_json(&config).unwrap_or_else(|e| panic!("{e}"));
        assert!(spec.ignored_config_keys.is_empty());
    }
    let mut rope = llama["rope_parameters"].clone();
    rope["partial_rotary_factor"] = json!(0.5);
    // Every family's rotary embeddings take every scaling kind; an entry the kind has not is refused.
    let linear = json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0});
    let spec = ModelSpec::from_json(&with(falcon.clone(), "rope_parameters", linear.clone())).unwrap();
    assert!(matches!(spec.rope.scaling, ftexp::model::rope::RopeScaling::Linear { factor } if factor == 2.0));
    let mut linear_extra = linear;
    linear_extra["beta_fast"] = json!(3);
    let refused = [
        (with(llama.clone(), "sliding_window", json!(8)), "`sliding_window = 8`"),
        (with(llama.clone(), "hidden_act", json!("gelu")), "`hidden_act = \"gelu\"`"),
        (with(llama.clone(), "mlp_bias", json!(true)), "`mlp_bias = true`"),
        (with(llama.clone(), "rope_parameters", rope), "`rope_parameters.partial_rotary_factor = 0.5`"),
        (with(falcon.clone(), "activation", json!("relu")), "`activation = \"relu\"`"),
        (with(falcon.clone(), "rope_parameters", linear_extra), "`rope_parameters.beta_fast = 3`"),
        (with(neox.clone(), "hidden_dropout", json!(0.1)), "`hidden_dropout = 0.1`"),
        (with(qwen.clone(), "attention_bias", json!(true)), "`attention_bias = true`"),
        (with(llama.clone(), "quantization_config", json!({"quant_method": "gptq"})), "`quantization_config = "),
    ];
    for (config, want) in refused {
        let err = ModelSpec::from_json(&config).unwrap_err();
        assert!(err.contains(want) && err.contains("model.allow_unknown_config_keys"), "{want}: {err}");
    }
}

/// A copy of the llama fixture whose config.json has `key = value`.
fn llama_with(key: &str, value: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("models/llama");
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let config = with(fixture_config("llama"), key, value);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn the_commands_refuse_in_one_line_and_the_plan_records_what_was_let_through() {
    let model = llama_with("attn_logit_softcapping", json!(50.0));
    let d = model.path().display().to_string();
    let out = ftexp(Path::new("."), &["generate", "--checkpoint", &d, "--prompt", "x"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("config.json: ftexp does not implement key `attn_logit_softcapping = 50.0`")
            && !err.contains("panicked"),
        "{err}"
    );

    let config = format!(
        "name = \"k\"\n[model]\ncheckpoint = \"{d}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"plain\"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\n[train]\nmax_steps = 1\nbatch_size = 2\nmicro_batch_size = 2\n"
    );
    let p = doubling_project(&config);
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`attn_logit_softcapping = 50.0`"), "{}", stderr(&out));

    let allow = ["--set", "model.allow_unknown_config_keys=true"];
    let out = ftexp(p.path(), &[&["plan", "exp.toml"][..], &allow[..]].concat(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = "ignored config.json keys:   attn_logit_softcapping = 50.0 (model.allow_unknown_config_keys)";
    assert!(text.contains(line), "{text}");
    let out = ftexp(p.path(), &[&["plan", "exp.toml", "--json"][..], &allow[..]].concat(), &[]);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["plan"]["architecture"]["ignored_config_keys"], json!(["attn_logit_softcapping = 50.0"]));
    assert_eq!(json["config"]["model"]["allow_unknown_config_keys"], true);
}
