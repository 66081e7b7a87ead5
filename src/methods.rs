//! Fine-tuning methods as switches on the one model: which extra tensors a method adds (LoRA
//! matrices, adapter prompts and gates, adapter-v2 scales and biases) and which tensors train.
//! `ftexp plan` counts parameters from the same shape lists that `apply` builds the tensors from.
use tch::{Kind, Tensor};

use crate::config::schema::MethodConfig;
use crate::model::gpt::{Adapter, AdapterV2, Linear, Lora};
use crate::model::spec::{Mlp, ModelSpec, Norm};
use crate::model::Gpt;

/// The model's own tensors by ftexp name and shape, exactly as [`Gpt::visit`] yields them.
pub fn base_shapes(spec: &ModelSpec) -> Vec<(String, Vec<i64>)> {
    let (h, hs) = (spec.hidden_size, spec.head_size);
    let (q, kv, ff) = (spec.n_head * hs, spec.n_query_groups * hs, spec.intermediate_size);
    let mut out = vec![("embed".to_string(), vec![spec.vocab_size, h])];
    let norm = |out: &mut Vec<(String, Vec<i64>)>, p: String| {
        out.push((format!("{p}.weight"), vec![h]));
        if spec.norm == Norm::LayerNorm {
            out.push((format!("{p}.bias"), vec![h]));
        }
    };
    for i in 0..spec.n_layer {
        let p = format!("layers.{i}");
        norm(&mut out, format!("{p}.norm1"));
        if !spec.shared_attention_norm {
            norm(&mut out, format!("{p}.norm2"));
        }
        for (name, rows, cols, bias) in linears(spec, q, kv, ff) {
            out.push((format!("{p}.{name}.weight"), vec![rows, cols]));
            if bias {
                out.push((format!("{p}.{name}.bias"), vec![rows]));
            }
        }
    }
    norm(&mut out, "final_norm".into());
    if !spec.tie_embeddings {
        out.push(("head.weight".into(), vec![spec.vocab_size, h]));
    }
    out
}

/// The linear layers of a block: name, output rows, input columns, whether it has a bias.
fn linears(spec: &ModelSpec, q: i64, kv: i64, ff: i64) -> Vec<(String, i64, i64, bool)> {
    let h = spec.hidden_size;
    let mut out = vec![
        ("q".to_string(), q, h, spec.qkv_bias),
        ("k".into(), kv, h, spec.qkv_bias),
        ("v".into(), kv, h, spec.qkv_bias),
        ("o".into(), h, q, spec.proj_bias),
    ];
    let mlp: Vec<(i64, i64)> = match spec.mlp {
        Mlp::Gelu | Mlp::GeluTanh => vec![(ff, h), (h, ff)],
        Mlp::SwiGlu => vec![(ff, h), (ff, h), (h, ff)],
    };
    out.extend(mlp.into_iter().enumerate().map(|(j, (r, c))| (format!("mlp.{j}"), r, c, spec.proj_bias)));
    out
}

fn lora_targets(m: &MethodConfig, linear: &str) -> bool {
    match linear {
        "q" => m.lora_query,
        "k" => m.lora_key,
        "v" => m.lora_value,
        "o" => m.lora_projection,
        "head" => m.lora_head,
        mlp => mlp.starts_with("mlp.") && m.lora_mlp,
    }
}

/// The tensors `m` adds to the model, by ftexp name and shape.
pub fn method_shapes(spec: &ModelSpec, m: &MethodConfig) -> Vec<(String, Vec<i64>)> {
    let (h, hs) = (spec.hidden_size, spec.head_size);
    let (q, kv, ff) = (spec.n_head * hs, spec.n_query_groups * hs, spec.intermediate_size);
    let mut all_linears: Vec<(String, i64, i64)> = Vec::new();
    for i in 0..spec.n_layer {
        for (name, rows, cols, _) in linears(spec, q, kv, ff) {
            all_linears.push((format!("layers.{i}.{name}"), rows, cols));
        }
    }
    all_linears.push(("head".into(), spec.vocab_size, h));
    let mut out = Vec::new();
    match m.kind.as_str() {
        "lora" => {
            let r = m.lora_r as i64;
            for (name, rows, cols) in &all_linears {
                if lora_targets(m, local_name(name)) {
                    out.push((format!("{name}.lora_a"), vec![r, *cols]));
                    out.push((format!("{name}.lora_b"), vec![*rows, r]));
                }
            }
        }
        "adapter" | "adapter_v2" => {
            for i in (m.adapter_start_layer as i64)..spec.n_layer {
                out.push((format!("layers.{i}.adapter_prefix"), vec![m.adapter_prompt_length as i64, h]));
                out.push((format!("layers.{i}.adapter_gate"), vec![1, spec.n_head, 1, 1]));
            }
            if m.kind == "adapter_v2" {
                for (name, rows, _) in &all_linears {
                    out.push((format!("{name}.adapter_scale"), vec![*rows]));
                    out.push((format!("{name}.adapter_bias"), vec![*rows]));
                }
            }
        }
        _ => {}
    }
    out
}

/// `layers.3.mlp.1` → `mlp.1`; `head` → `head`.
fn local_name(name: &str) -> &str {
    match name.strip_prefix("layers.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, local)| local),
        None => name,
    }
}

/// Whether the tensor called `name` trains under method `kind`.
pub fn is_trainable(kind: &str, name: &str) -> bool {
    let adapter = name.ends_with("adapter_prefix") || name.ends_with("adapter_gate");
    match kind {
        "full" => true,
        "lora" => name.contains(".lora_"),
        "adapter" => adapter,
        "adapter_v2" => adapter || name.contains(".adapter_") || name.contains("norm"),
        _ => false,
    }
}

/// Whether AdamW's weight decay applies: weight matrices, embeddings, LoRA matrices and adapter
/// prompts do; biases, norms, gates and adapter-v2 scales and biases do not.
pub fn decays(name: &str, shape: &[i64]) -> bool {
    shape.len() >= 2 && !name.ends_with("adapter_gate")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParamCount {
    pub total: i64,
    pub trainable: i64,
}

pub fn count(spec: &ModelSpec, m: &MethodConfig) -> ParamCount {
    let all: Vec<(String, Vec<i64>)> = base_shapes(spec).into_iter().chain(method_shapes(spec, m)).collect();
    let size = |s: &Vec<i64>| s.iter().product::<i64>();
    ParamCount {
        total: all.iter().map(|(_, s)| size(s)).sum(),
        trainable: all.iter().filter(|(n, _)| is_trainable(&m.kind, n)).map(|(_, s)| size(s)).sum(),
    }
}

/// Adds the method's tensors to `model`, in `kind` on its device: LoRA A Kaiming-uniform and B zero,
/// adapter prompts N(0, 1) and gates zero, adapter-v2 scales one and biases zero — so that before the
/// first step the model computes exactly what the base model does. Seeded by `seed`.
pub fn apply(model: &mut Gpt, m: &MethodConfig, seed: u64, kind: Kind) {
    tch::manual_seed(seed as i64);
    let device = model.device();
    let shapes: std::collections::HashMap<String, Vec<i64>> = method_shapes(&model.spec, m).into_iter().collect();
    let make = |name: &str| -> Option<Tensor> {
        let shape = shapes.get(name)?;
        Some(if name.ends_with("lora_a") {
            let bound = 1.0 / (shape[1] as f64).sqrt();
            Tensor::rand(shape.as_slice(), (Kind::Float, device)) * (2.0 * bound) - bound
        } else if name.ends_with("adapter_prefix") {
            Tensor::randn(shape.as_slice(), (Kind::Float, device))
        } else if name.ends_with("adapter_scale") {
            Tensor::ones(shape.as_slice(), (Kind::Float, device))
        } else {
            Tensor::zeros(shape.as_slice(), (Kind::Float, device))
        })
    };
    let attach = |lin: &mut Linear, name: &str| {
        if let (Some(a), Some(b)) = (make(&format!("{name}.lora_a")), make(&format!("{name}.lora_b"))) {
            let scale = m.lora_alpha / m.lora_r as f64;
            lin.lora = Some(Lora { a: a.to_kind(kind), b: b.to_kind(kind), scale, dropout: m.lora_dropout });
        }
        if let (Some(s), Some(b)) = (make(&format!("{name}.adapter_scale")), make(&format!("{name}.adapter_bias"))) {
            lin.adapter_v2 = Some(AdapterV2 { scale: s.to_kind(kind), bias: b.to_kind(kind) });
        }
    };
    tch::no_grad(|| {
        for (i, b) in model.blocks.iter_mut().enumerate() {
            let p = format!("layers.{i}");
            for (n, lin) in [("q", &mut b.q), ("k", &mut b.k), ("v", &mut b.v), ("o", &mut b.o)] {
                attach(lin, &format!("{p}.{n}"));
            }
            for (j, lin) in b.mlp.iter_mut().enumerate() {
                attach(lin, &format!("{p}.mlp.{j}"));
            }
            if let (Some(prefix), Some(gate)) =
                (make(&format!("{p}.adapter_prefix")), make(&format!("{p}.adapter_gate")))
            {
                b.adapter = Some(Adapter { prefix: prefix.to_kind(kind), gate: gate.to_kind(kind) });
            }
        }
        attach(&mut model.head, "head");
    });
}

/// Marks the method's trainable tensors (moving them to `kind`), freezes the rest, and returns the
/// trainable ones by name, in a fixed order.
pub fn trainable(model: &mut Gpt, method: &str, kind: Kind) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    model.visit(&mut |name, t| {
        if is_trainable(method, name) {
            if t.kind() != kind {
                *t = tch::no_grad(|| t.to_kind(kind));
            }
            *t = t.detach().set_requires_grad(true);
            out.push((name.to_string(), t.shallow_clone()));
        } else {
            *t = t.detach().set_requires_grad(false);
        }
    });
    model.retie();
    out
}
