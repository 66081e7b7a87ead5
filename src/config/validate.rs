//! Checks: per layer (unknown keys, wrong types) and on the merged config (values that make no sense
//! together). Every problem is collected, so a user fixes a file in one go.
use super::choices::{quoted_list, DataFormat, DeviceSetting, ExportFormat, Init, MethodKind};
use super::layers::{remove_path, Layer};
use super::resolved::Resolved;
use super::schema::{self, Config, Kind, KEYS, PROMPT_STYLES};
use crate::error::{did_you_mean, Problems};

/// Reports this layer's unknown keys and wrong types, in the order of the file's lines, and leaves
/// those values out of the layer, so the values that remain are still merged and checked together.
pub fn check_layer(layer: &mut Layer, problems: &mut Problems) {
    let mut found = Vec::new();
    let mut bad_keys = Vec::new();
    for (key, value) in layer.leaves() {
        if let Some(msg) = check_leaf(layer, &key, value) {
            found.push(msg);
            bad_keys.push(key);
        }
    }
    for key in bad_keys {
        remove_path(&mut layer.table, &key);
    }
    let line = |msg: &String| msg.split(": ").next().and_then(|at| at.rsplit(':').next()?.parse::<usize>().ok());
    found.sort_by_key(|m| line(m).unwrap_or(0));
    problems.0.extend(found);
}

fn check_leaf(layer: &Layer, key: &str, value: &toml::Value) -> Option<String> {
    let at = layer.label_for(key);
    let Some(doc) = schema::find(key) else {
        return Some(if schema::is_table(key) {
            format!("{at}: `{key}` is a table of settings, not a value; set its keys, e.g. `{key}.<key> = …`")
        } else {
            format!("{at}: unknown key `{key}`; {}", suggestion(key))
        });
    };
    if let (Kind::IntOrAuto, toml::Value::Integer(0)) = (doc.kind, value) {
        // 0 once stood for "auto"; a count is at least 1, and "auto" is written as a word.
        return Some(format!("{at}: `{key}` is 0; use a positive whole number, or \"auto\" to choose one"));
    }
    if kind_matches(doc.kind, value) {
        return None;
    }
    let mut msg = format!("{at}: `{key}` is {value}, but must be {}", doc.kind.describe());
    if let (Kind::Choice(options), Some(s)) = (doc.kind, value.as_str()) {
        if let Some(best) = did_you_mean(s, options.iter().copied()) {
            msg.push_str(&format!("; did you mean \"{best}\"?"));
        }
    }
    Some(msg)
}

/// Names become directory names: keep them to one plain path component.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || !ok_chars || name.starts_with('.') {
        return Err(format!(
            "is \"{name}\"; an experiment name uses only letters, digits, '-', '_' and '.', and does not start with '.'"
        ));
    }
    Ok(())
}

fn suggestion(key: &str) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let same_leaf = KEYS.iter().find(|k| k.key.rsplit('.').next() == Some(leaf)).map(|k| k.key);
    let tables =
        ["model", "model.architecture", "data", "data.split", "data.columns", "method", "train", "export", "track"];
    let candidates = KEYS.iter().map(|k| k.key).chain(tables);
    match same_leaf.or_else(|| did_you_mean(key, candidates)) {
        Some(best) => format!("did you mean `{best}`?"),
        None => "`ftexp keys` lists every key".into(),
    }
}

fn kind_matches(kind: Kind, value: &toml::Value) -> bool {
    use toml::Value as V;
    match (kind, value) {
        (Kind::Str, V::String(_)) | (Kind::Bool, V::Boolean(_)) => true,
        (Kind::Int, V::Integer(i)) => *i >= 0,
        (Kind::Float, V::Integer(_) | V::Float(_)) => true,
        (Kind::StrList, V::Array(items)) => items.iter().all(|v| v.is_str()),
        (Kind::Choice(options), V::String(s)) => options.contains(&s.as_str()),
        (Kind::Device, V::String(s)) => s.parse::<DeviceSetting>().is_ok(),
        (Kind::IntOrAuto, V::Integer(i)) => *i >= 1,
        (Kind::IntOrAuto, V::String(s)) => s == "auto",
        (Kind::Bytes, V::String(s)) => super::schema::parse_bytes(s).is_ok(),
        (Kind::BoolOrAuto, V::Boolean(_)) => true,
        (Kind::BoolOrAuto, V::String(s)) => s == "auto",
        _ => false,
    }
}

/// Values that are well-typed but cannot work, named with where they were set.
pub fn check_config(r: &Resolved, problems: &mut Problems) {
    let c = &r.config;
    // A key nobody set is reported against the config file itself.
    let top = r.files.last().map(|f| f.display().to_string()).unwrap_or_default();
    let at = |key: &str| r.sources.get(key).cloned().unwrap_or_else(|| top.clone());
    let mut bad = |key: &str, msg: String| problems.push(format!("{}: `{key}` {msg}", at(key)));
    if let Err(msg) = check_name(&c.name) {
        bad("name", msg);
    }
    if !matches!(c.model.quantize, super::Quantize::None | super::Quantize::Auto) && c.method.kind == MethodKind::Full {
        bad(
            "model.quantize",
            format!("is \"{}\" but method.kind = \"full\" trains every weight, and quantized weights cannot train; use method.kind = \"lora\" (QLoRA), \"adapter\" or \"adapter_v2\", or model.quantize = \"none\"", c.model.quantize),
        );
    }
    check_model(c, &mut bad);
    check_data(c, &mut bad);
    check_train(c, &mut bad);
    check_best(c, &mut bad);
    check_method(c, &mut bad);
}

fn check_model(c: &Config, bad: &mut impl FnMut(&str, String)) {
    if c.model.init == Init::Random
        && (c.model.architecture.model_type.is_some() || c.model.checkpoint.trim().is_empty())
    {
        let a = &c.model.architecture;
        let required = [
            ("model.architecture.model_type", a.model_type.is_none()),
            ("model.architecture.hidden_size", a.hidden_size.is_none()),
            ("model.architecture.num_hidden_layers", a.num_hidden_layers.is_none()),
            ("model.architecture.num_attention_heads", a.num_attention_heads.is_none()),
            ("model.tokenizer", c.model.tokenizer.is_none()),
        ];
        for (key, missing) in required {
            if missing {
                bad(
                    key,
                    "is not set; `model.init = \"random\"` builds the model from it (or from `model.checkpoint`'s config.json)"
                        .into(),
                );
            }
        }
    } else if c.model.checkpoint.trim().is_empty() {
        bad(
            "model.checkpoint",
            "is not set; name a hub repo id like \"tiiuae/falcon-7b-instruct\" or a local model directory".into(),
        );
    }
}

fn check_data(c: &Config, bad: &mut impl FnMut(&str, String)) {
    if c.data.path.trim().is_empty() {
        bad("data.path", "is not set; name your data file (JSON, JSON Lines, CSV or Parquet) or directory".into());
    }
    if c.data.chat_template.is_some() && c.data.format != DataFormat::Chat {
        bad(
            "data.chat_template",
            format!("is set but data.format is \"{}\"; a chat template formats `chat` data only: unset it or set data.format = \"chat\"", c.data.format),
        );
    }
    let style = &c.data.prompt_style;
    if !PROMPT_STYLES.contains(&style.as_str()) && !style.contains("{instruction}") {
        bad(
            "data.prompt_style",
            format!(
                "is \"{style}\": use one of {} or a template containing {{instruction}}",
                quoted_list(PROMPT_STYLES)
            ),
        );
    }
    let split = c.data.split;
    for (name, ratio) in [("train", split.train), ("val", split.val), ("test", split.test)] {
        if !(0.0..=1.0).contains(&ratio) {
            bad(&format!("data.split.{name}"), format!("is {ratio}; a share must be between 0 and 1"));
        }
    }
    let sum = split.train + split.val + split.test;
    if (sum - 1.0).abs() > 1e-6 {
        bad(
            "data.split.train",
            format!("+ val + test add up to {}; the three shares must add up to 1", (sum * 1e6).round() / 1e6),
        );
    }
    if split.train <= 0.0 {
        bad("data.split.train", "is 0; training needs some data".into());
    }
}

/// Counts that must be positive, the batch arithmetic, and the optimizer's and method's numbers.
fn check_train(c: &Config, bad: &mut impl FnMut(&str, String)) {
    let positive = [
        ("data.max_seq_length", c.data.max_seq_length),
        ("method.lora_r", c.method.lora_r),
        ("method.adapter_prompt_length", c.method.adapter_prompt_length),
        ("train.epochs", c.train.epochs),
        ("train.batch_size", c.train.batch_size),
        ("train.devices", c.train.devices),
        ("train.sync_timeout_s", c.train.sync_timeout_s),
        ("train.eval_interval", c.train.eval_interval),
        ("train.eval_iters", c.train.eval_iters),
        ("train.save_interval", c.train.save_interval),
        ("train.log_interval", c.train.log_interval),
    ];
    let optional = [("train.epoch_size", c.train.epoch_size), ("train.max_steps", c.train.max_steps)];
    for (key, value) in positive.into_iter().chain(optional.into_iter().filter_map(|(k, v)| Some((k, v?)))) {
        if value == 0 {
            bad(key, "is 0; it must be at least 1".into());
        }
    }
    // Upper bounds far above any real run, so sizes never overflow on their way to a tensor shape.
    let bounded = [
        ("data.max_seq_length", c.data.max_seq_length, 1 << 20),
        ("method.lora_r", c.method.lora_r, 1 << 16),
        ("method.adapter_prompt_length", c.method.adapter_prompt_length, 1 << 16),
        ("train.epochs", c.train.epochs, 1 << 20),
        ("train.batch_size", c.train.batch_size, 1 << 20),
        ("train.micro_batch_size", c.train.micro_batch_size, 1 << 20),
        ("train.devices", c.train.devices, 1 << 16),
        ("train.sync_timeout_s", c.train.sync_timeout_s, 1 << 20),
        ("train.eval_iters", c.train.eval_iters, 1 << 30),
    ];
    let optional = [("train.max_steps", c.train.max_steps), ("train.epoch_size", c.train.epoch_size)];
    let optional = optional.into_iter().filter_map(|(key, v)| Some((key, v?, 1 << 40)));
    for (key, value, max) in bounded.into_iter().chain(optional) {
        if value > max {
            bad(key, format!("is {value}; it must be at most {max}"));
        }
    }
    if c.train.auto_micro_batch() && !c.train.batch_size.is_multiple_of(c.train.devices.max(1)) {
        bad(
            "train.batch_size",
            format!("is {}, not a multiple of devices = {}; make it a multiple", c.train.batch_size, c.train.devices),
        );
    }
    let per_step = c.train.micro_batch_size.saturating_mul(c.train.devices);
    if per_step > 0 && !c.train.batch_size.is_multiple_of(per_step) {
        bad(
            "train.batch_size",
            format!(
                "is {}, not a multiple of micro_batch_size × devices = {} × {} = {per_step}; make it {} or {}",
                c.train.batch_size,
                c.train.micro_batch_size,
                c.train.devices,
                (c.train.batch_size / per_step).max(1) * per_step,
                (c.train.batch_size / per_step + 1) * per_step
            ),
        );
    }
    if c.train.learning_rate <= 0.0 || !c.train.learning_rate.is_finite() {
        bad("train.learning_rate", format!("is {}; it must be above 0", c.train.learning_rate));
    }
    if c.train.min_lr < 0.0 || c.train.min_lr > c.train.learning_rate {
        bad(
            "train.min_lr",
            format!("is {}; it must be between 0 and learning_rate ({})", c.train.min_lr, c.train.learning_rate),
        );
    }
    if c.train.weight_decay < 0.0 {
        bad("train.weight_decay", format!("is {}; it must be 0 or more", c.train.weight_decay));
    }
    if c.train.max_grad_norm < 0.0 {
        bad("train.max_grad_norm", format!("is {}; it must be 0 (no clipping) or more", c.train.max_grad_norm));
    }
    if !(0.0..1.0).contains(&c.method.lora_dropout) {
        bad("method.lora_dropout", format!("is {}; it must be at least 0 and below 1", c.method.lora_dropout));
    }
    if c.method.lora_alpha <= 0.0 {
        bad("method.lora_alpha", format!("is {}; it must be above 0", c.method.lora_alpha));
    }
}

/// Keeping the best checkpoint and stopping early both watch the val loss, so they need a val split.
fn check_best(c: &Config, bad: &mut impl FnMut(&str, String)) {
    let t = &c.train;
    if !(t.min_delta >= 0.0 && t.min_delta.is_finite()) {
        bad("train.min_delta", format!("is {}; it must be 0 or more", t.min_delta));
    }
    let watching = [("train.early_stopping", t.patience().is_some()), ("train.save_best", t.save_best == Some(true))];
    for (key, on) in watching {
        if on && c.data.split.val <= 0.0 {
            bad(
                key,
                "is set but data.split.val is 0, so there is no val loss to watch; give the val split a share (e.g. data.split.val = 0.1) or unset it".into(),
            );
        }
    }
}

/// Method rules that need no model: that LoRA has a target, and that an adapter starts inside a model
/// whose layers the config itself gives.
fn check_method(c: &Config, bad: &mut impl FnMut(&str, String)) {
    let m = &c.method;
    let targets = [m.lora_query, m.lora_key, m.lora_value, m.lora_projection, m.lora_mlp, m.lora_head];
    if m.kind == MethodKind::Lora && !targets.contains(&true) {
        bad(
            "method.kind",
            "is \"lora\" but every lora_* target is false; enable at least one, e.g. method.lora_query = true".into(),
        );
    }
    match (c.export.format, m.kind) {
        (Some(ExportFormat::Peft), kind) if kind != MethodKind::Lora => bad(
            "export.format",
            format!("is \"peft\" but method.kind is \"{kind}\": PEFT adapters hold LoRA runs; use export.format = \"hf\" or unset it"),
        ),
        (Some(_), kind) if kind.has_adapter_prompts() => bad(
            "export.format",
            format!("is set but method.kind is \"{kind}\": its adapter prompts have no place in an exported model; unset export.format"),
        ),
        _ => {}
    }
    if let Some(layers) = c.model.architecture.num_hidden_layers.filter(|_| m.kind.has_adapter_prompts()) {
        if m.adapter_start_layer >= layers {
            bad(
                "method.adapter_start_layer",
                format!(
                    "is {} but [model.architecture] has {layers} layers (0 to {}), so no layer would get an adapter; lower it",
                    m.adapter_start_layer,
                    layers.saturating_sub(1)
                ),
            );
        }
    }
}

/// Rules for a training run (`ftexp run`, and `ftexp plan`, which names where each key was set) that
/// `ftexp bench` does not need: a randomly initialised model trains every weight. Each problem is
/// `(key, what to change)`.
pub fn run_rules(c: &Config) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if c.model.init == Init::Random && c.method.kind != MethodKind::Full {
        out.push((
            "method.kind",
            format!("is \"{}\" but model.init = \"random\": a randomly initialised model must train every weight; use method.kind = \"full\" (`ftexp bench` measures other methods on random weights)", c.method.kind),
        ));
    }
    out
}

/// [`run_rules`] with where each key was set.
pub fn check_run(r: &Resolved) -> Result<(), Problems> {
    let mut problems = Problems::default();
    for (key, msg) in run_rules(&r.config) {
        problems.push(format!("{}: `{key}` {msg}", r.source(key)));
    }
    problems.into_result()
}
