//! The plan as text (`ftexp plan`) and as JSON (`ftexp plan --json`).
use std::fmt::Write;

use super::{RunPlan as Plan, STEPS_SHOWN};
use crate::config::{Resolved, KEYS};
use crate::methods::memory::{mib_text as bytes, MemoryPlan};

/// `1234567` → `1,234,567`.
pub fn thousands(n: impl Into<i128>) -> String {
    let s = n.into().to_string();
    let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

/// The resolved config as TOML, each value followed by where it was set.
pub fn render_config(r: &Resolved) -> String {
    let value = toml::Value::try_from(&r.config).expect("config serializes");
    let mut out = String::new();
    let mut table = "";
    for key in KEYS.iter().filter(|k| k.key != "extends") {
        let (head, local) = match key.key.split_once('.') {
            Some((t, rest)) => (t, rest),
            None => ("", key.key),
        };
        if head != table {
            let _ = write!(out, "\n[{head}]\n");
            table = head;
        }
        let found = key.key.split('.').try_fold(&value, |v, part| v.get(part));
        let line = match found {
            Some(v) => format!("{local} = {v}"),
            None => format!("# {local} = (unset)"),
        };
        let _ = writeln!(out, "{line:<44} # {}", r.source(key.key));
    }
    if !r.config.extends.is_empty() {
        out = format!("# extends = {:?}\n{out}", r.config.extends);
    }
    out.trim_start().to_string()
}

pub fn render(r: &Resolved, plan: &Plan) -> String {
    let mut out = render_config(r);
    let opt = |v: Option<u64>| v.map(thousands).unwrap_or_else(|| "unknown (see data above)".into());
    let list = |steps: &[u64], total: Option<u64>| {
        let mut s = steps.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        if steps.len() == STEPS_SHOWN && total.is_none_or(|t| steps[STEPS_SHOWN - 1] < t) {
            s.push_str(", …");
        }
        if total.is_some() {
            s.push_str(if steps.is_empty() { "the last step only" } else { " and the last step" });
        }
        s
    };
    let _ = writeln!(out, "\n# plan");
    let missing_gpu = plan.device.starts_with("cuda") && !tch::Cuda::is_available();
    let note = if missing_gpu { "; no CUDA device on this machine: a run here would fail" } else { "" };
    let _ = writeln!(out, "device:                     {} ({}){note}", plan.device, plan.precision);
    match (&plan.data, &plan.data_missing) {
        (Some(d), _) => {
            let _ = writeln!(
                out,
                "data:                       {} records → train {}, val {}, test {}",
                thousands(d.records as u64),
                thousands(d.train as u64),
                thousands(d.val as u64),
                thousands(d.test as u64)
            );
            if plan.data_prepared {
                let _ = writeln!(out, "                            (samples as prepared, long ones dropped)");
            }
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "data:                       not read: {why}");
        }
        _ => {}
    }
    let t = &r.config.train;
    write_processes(&mut out, plan, t);
    let samples = plan.epoch_size.map(|e| format!("{} samples", thousands(e)));
    let _ = writeln!(out, "epoch size:                 {}", samples.unwrap_or_else(|| opt(None)));
    let _ = writeln!(out, "optimizer steps per epoch:  {}", opt(plan.steps_per_epoch));
    let how = if t.max_steps.is_some() { "(train.max_steps)".to_string() } else { format!("({} epochs)", t.epochs) };
    let _ = writeln!(out, "optimizer steps in total:   {} {how}", opt(plan.total_steps));
    let _ = writeln!(out, "warm-up steps:              {}", opt(plan.warmup_steps));
    let _ = writeln!(out, "evaluations at steps:       {}", list(&plan.eval_steps, plan.total_steps));
    let _ = writeln!(out, "checkpoints at steps:       {}", list(&plan.save_steps, plan.total_steps));
    let _ = writeln!(out, "tokens per optimizer step:  at most {}", thousands(plan.max_tokens_per_step));
    let st = &plan.strategies;
    let _ = writeln!(
        out,
        "memory strategies:          activation checkpointing {}, quantization {}, sharding {}",
        if st.activation_checkpointing { "on" } else { "off" },
        st.quantization,
        st.sharding
    );
    if let Some(why) = &st.quantization_reason {
        let _ = writeln!(out, "model.quantize = \"auto\":   {why}");
    }
    if let Some(why) = &st.activation_checkpointing_reason {
        let _ = writeln!(out, "activation checkpointing:   {why}");
    }
    write_model(&mut out, plan, r);
    if let Some(memory) = &plan.memory {
        write_memory(&mut out, plan, memory, r);
    }
    for why in &plan.refusals {
        let _ = writeln!(out, "refused: a run of this plan stops before training: {why}");
    }
    out
}

/// The base's architecture and parameter counts.
fn write_model(out: &mut String, plan: &Plan, r: &Resolved) {
    let _ = writeln!(out, "\n# model ({})", plan.checkpoint_dir.display());
    match (&plan.architecture, &plan.architecture_missing) {
        (Some(a), _) => {
            let _ = writeln!(out, "family:                     {:?} ({})", a.family, a.model_type);
            let _ = writeln!(out, "layers:                     {}", a.layers);
            let _ = writeln!(out, "attention heads:            {} ({} key/value groups)", a.heads, a.query_groups);
            let _ = writeln!(out, "hidden size:                {} (MLP {})", a.hidden_size, a.intermediate_size);
            if let Some((window, layers)) = a.sliding_window {
                let _ = writeln!(out, "sliding window:             {window} positions, on {layers} of the layers");
            }
            let _ = writeln!(out, "vocabulary:                 {}", thousands(a.vocab_size));
            let _ = writeln!(out, "parameters:                 {}", thousands(a.parameters));
            let share = 100.0 * a.trainable_parameters as f64 / a.parameters_with_method.max(1) as f64;
            let _ = writeln!(
                out,
                "trainable ({}):{:>width$} of {} ({share:.3}%)",
                r.config.method.kind,
                thousands(a.trainable_parameters),
                thousands(a.parameters_with_method),
                width = 14usize.saturating_sub(r.config.method.kind.as_str().len())
                    + thousands(a.trainable_parameters).len()
            );
            if !a.ignored_config_keys.is_empty() {
                let keys = a.ignored_config_keys.join(", ");
                let _ = writeln!(out, "ignored config.json keys:   {keys} (model.allow_unknown_config_keys)");
            }
            if !a.skipped_config_keys.is_empty() {
                let keys = a.skipped_config_keys.join(", ");
                let _ = writeln!(out, "harmless config.json keys:  {keys} (skipped)");
            }
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "not read: {why}");
        }
        _ => {}
    }
}

/// The plan's parts, each with what it holds.
fn memory_rows(plan: &Plan, m: &MemoryPlan, c: &crate::config::Config) -> [(String, u64); 7] {
    let trainable =
        if c.method.kind == crate::config::MethodKind::Full { "all weights" } else { "the method's tensors" };
    let layers = m.activations_per_layer.len().max(1) as u64;
    let per_layer = m.activations_per_layer.iter().max().copied().unwrap_or(0);
    [
        (
            match plan.strategies.quantization {
                "none" => format!("weights ({})", plan.precision),
                q => format!("weights ({}, layers' weights in {q} with their absmax)", plan.precision),
            },
            m.weights,
        ),
        (format!("gradients ({trainable})"), m.gradients),
        ("optimizer moments (AdamW, 2 × fp32)".to_string(), m.optimizer),
        (
            match plan.strategies.activation_checkpointing {
                true => format!(
                    "activations (checkpointed: {layers} layer inputs; one layer of {} recomputed at a time)",
                    bytes(per_layer)
                ),
                false => format!("activations ({layers} layers, up to {} each)", bytes(per_layer)),
            },
            m.activations,
        ),
        (format!("LM head (scores over {} tokens)", thousands(c.data.max_seq_length * m.micro_batch_size)), m.lm_head),
        (
            match plan.strategies.activation_checkpointing {
                true => "working memory (a recomputed layer beyond the LM head's, optimizer update)",
                false => "working memory (backward pass, optimizer update)",
            }
            .to_string(),
            m.working,
        ),
        ("runtime overhead".to_string(), m.overhead),
    ]
}

/// The expected peak memory by part, and whether it fits the device.
fn write_memory(out: &mut String, plan: &Plan, m: &MemoryPlan, r: &Resolved) {
    let c = &r.config;
    let _ = writeln!(
        out,
        "\n# memory (the peak of one training step on each device: micro-batches of {} × {} positions, every position scored)",
        m.micro_batch_size, m.seq_len
    );
    for (what, n) in memory_rows(plan, m, c) {
        let _ = writeln!(out, "{:<52}{:>12}", format!("{what}:"), bytes(n));
    }
    let _ = writeln!(out, "{:<52}{:>12}", "total:", bytes(m.total));
    if let Some(all) = plan.processes_memory {
        let what = format!("all {} processes on this machine:", plan.local_processes);
        let _ = writeln!(out, "{what:<52}{:>12}", bytes(all));
    }
    let needed = plan.processes_memory.unwrap_or(m.total);
    if let Some(a) = &plan.auto_micro_batch {
        let tried: Vec<String> =
            a.weighed.iter().map(|(micro, total)| format!("{micro} → {}", bytes(*total))).collect();
        let verdict = if a.over_budget { "none fits; 1 is tried" } else { "the largest that fits" };
        let _ = writeln!(
            out,
            "micro_batch_size = \"auto\": {} ({verdict}; planned {}{}); a run confirms it with one trial step",
            a.chosen,
            tried.join(", "),
            a.budget.map(|b| format!(" against 90% of the memory, {}", bytes(b))).unwrap_or_default()
        );
    }
    let source = if c.model.device_memory.is_some() { "model.device_memory" } else { "the device's own" };
    let line = match (plan.fits, plan.device_memory) {
        (Some(true), Some(available)) => {
            format!("fits: yes, {:.0}% of {} ({source})", 100.0 * needed as f64 / available as f64, bytes(available))
        }
        (Some(false), Some(available)) => format!(
            "fits: NO, {} more than the {} of {} ({source}){}",
            bytes(needed - available),
            bytes(available),
            plan.device,
            other_changes(plan, r)
        ),
        _ => "fits: unknown (the device's memory is unknown; set model.device_memory)".to_string(),
    };
    let _ = writeln!(out, "{line}");
    if !plan.advice.is_empty() {
        let _ = writeln!(out, "to fit, change (each line planned with the ones above it):");
        for (i, a) in plan.advice.iter().enumerate() {
            let setting = format!("{}{}", if i == 0 { "  " } else { "  + " }, a.settings.last().map_or("", |s| s));
            let verdict = if a.fits { "fits" } else { "does not fit yet" };
            let _ = writeln!(out, "{setting:<52}{:>12}  {verdict}", bytes(a.total));
        }
    }
}

/// What else could make a run fit that the advice ladder does not weigh.
fn other_changes(plan: &Plan, r: &Resolved) -> String {
    let c = &r.config;
    let mut other = Vec::new();
    if plan.precision == "32-true" {
        other.push("a 16-bit model.precision (bf16-true) halves the weights");
    }
    if c.method.kind == crate::config::MethodKind::Full {
        other.push("method.kind = \"lora\" trains far fewer tensors");
    }
    if plan.processes_memory.is_some() {
        other.push("fewer CPU processes (train.devices), each holds its own copy");
    }
    match (other.is_empty(), plan.advice.last().is_some_and(|a| a.fits)) {
        (true, true) => String::new(),
        (true, false) => "; nothing ftexp can change makes it fit: use a device with more memory".into(),
        (false, _) => format!("; also: {}", other.join("; ")),
    }
}

pub fn to_json(r: &Resolved, plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "config": r.config,
        "extends": r.config.extends,
        "files": r.files,
        "sources": r.sources,
        "plan": plan,
    })
}

/// The processes of the run and the micro-batches each runs per optimizer step.
fn write_processes(out: &mut String, plan: &Plan, t: &crate::config::TrainConfig) {
    if plan.world_size > 1 {
        let _ = writeln!(
            out,
            "processes:                  {} ({}), gradients added up once per optimizer step",
            plan.world_size,
            grouped(&plan.rank_devices)
        );
    }
    let _ = writeln!(
        out,
        "gradient accumulation:      {} micro-batches of {} per optimizer step{} (batch_size {} ÷ ({} × {} devices))",
        plan.gradient_accumulation_iters,
        plan.micro_batch_size,
        if plan.world_size > 1 { " on each process" } else { "" },
        t.batch_size,
        plan.micro_batch_size,
        plan.world_size
    );
}

/// `a, a, a, b` → `3 × a, b`: the devices of many processes in one short line.
fn grouped(devices: &[String]) -> String {
    let mut groups: Vec<(usize, &str)> = Vec::new();
    for d in devices {
        match groups.last_mut() {
            Some((n, last)) if *last == d.as_str() => *n += 1,
            _ => groups.push((1, d)),
        }
    }
    let text = |(n, d): &(usize, &str)| if *n == 1 { d.to_string() } else { format!("{n} × {d}") };
    groups.iter().map(text).collect::<Vec<_>>().join(", ")
}
