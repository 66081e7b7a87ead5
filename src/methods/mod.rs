//! Fine-tuning methods as switches on the one model: the tensors a method adds come from the layout
//! table ([`crate::model::layout`]), their initial values from the method's own file
//! (`model/lora.rs`, `model/adapter.rs`), and which tensors train from their role.
mod build;
pub mod export;
mod locate;
mod located;
pub mod memory;
pub mod quantized;
pub mod staging;

use tch::{Kind, Tensor};

pub use build::{build_located, check_vocab, is_swiglu, legacy_name, load_trained, quant_scheme, recorded_base, Built};
pub use locate::{build, build_on, locate, locate_base, random_architecture};
pub use located::Located;

use crate::config::{MethodConfig, MethodKind};
use crate::device::Placement;
use crate::experiment::ParamCount;
use crate::model::layout::{self, Param};
use crate::model::spec::ModelSpec;
use crate::model::{adapter, lora, Gpt, Role};

/// Whether a tensor of `role` trains under method `kind`.
pub fn is_trainable(kind: MethodKind, role: Role) -> bool {
    layout::method_def(kind).trains.is_none_or(|roles| roles.contains(&role))
}

/// Whether AdamW's weight decay applies: weight matrices, embeddings, LoRA matrices and adapter
/// prompts do; biases, norms, gates and adapter-v2 scales and biases do not.
pub fn decays(role: Role, shape: &[i64]) -> bool {
    shape.len() >= 2 && role != Role::AdapterGate
}

pub fn count(spec: &ModelSpec, m: &MethodConfig) -> ParamCount {
    let all = layout::tensors(spec, Some(m));
    ParamCount {
        total: all.iter().map(|t| t.numel()).sum(),
        trainable: all.iter().filter(|t| is_trainable(m.kind, t.role())).map(|t| t.numel()).sum(),
    }
}

/// `Err` with what to change when the method does not fit the model (an adapter starting past the
/// last layer).
pub fn check_fits(spec: &ModelSpec, m: &MethodConfig) -> Result<(), String> {
    if m.kind.has_adapter_prompts() && m.adapter_start_layer as i64 >= spec.n_layer {
        return Err(format!(
            "method.adapter_start_layer = {} but the model has {} layers (0 to {}), so no layer would get an adapter; lower it",
            m.adapter_start_layer,
            spec.n_layer,
            spec.n_layer - 1
        ));
    }
    Ok(())
}

/// `Err` with what to change when the weights of `spec` with method `m` alone need more memory than
/// the device has (checked before anything is allocated; the full estimate is `ftexp plan`'s).
pub fn check_memory(spec: &ModelSpec, m: &MethodConfig, placement: &Placement) -> Result<(), String> {
    let Some(available) = placement.memory_bytes() else { return Ok(()) };
    let params = count(spec, m).total as u64;
    let needed = params.saturating_mul(placement.weight_bytes());
    if needed > available {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(format!(
            "the model's {params} parameters need {:.1} GiB in {} alone, more than the {:.1} GiB of memory of {}; use a smaller model, a 16-bit model.precision, or another device",
            gib(needed),
            placement.precision,
            gib(available),
            placement.device_name()
        ));
    }
    Ok(())
}

/// Adds the method's tensors to `model`, in `kind` on its device, so that before the first step the
/// model computes exactly what the base model does. Seeded by `seed`.
pub fn apply(model: &mut Gpt, m: &MethodConfig, seed: u64, kind: Kind) {
    let device = model.device();
    let all = layout::tensors(&model.spec, Some(m));
    crate::native::rng::seeded(seed as i64, || {
        tch::no_grad(|| {
            for t in all.iter().filter(|t| t.is_method()) {
                let fresh = match t.at.param {
                    Param::LoraA | Param::LoraB => lora::init(t.at.param, &t.shape, device),
                    _ => adapter::init(t.at.param, &t.shape, device),
                };
                *model.slot(t.at) = fresh.to_kind(kind);
            }
        })
    });
    model.layout = all;
    model.lora = lora::LoraScaling { scale: m.lora_alpha / m.lora_r as f64, dropout: m.lora_dropout };
}

/// A tensor that trains, by its ftexp name.
pub struct Trainable {
    pub name: String,
    pub tensor: Tensor,
    /// Whether AdamW's weight decay applies to it.
    pub decays: bool,
}

/// Marks the method's trainable tensors (moving them to `kind`), freezes the rest, and returns the
/// trainable ones, in the layout's order.
pub fn trainable(model: &mut Gpt, method: MethodKind, kind: Kind) -> Vec<Trainable> {
    let mut out = Vec::new();
    // A quantized weight is frozen as made (touching it as a tensor would dequantize it).
    let layout: Vec<_> = model.layout.iter().filter(|t| !model.is_quantized(t.at)).cloned().collect();
    for spec in &layout {
        let t = model.slot(spec.at);
        if is_trainable(method, spec.role()) {
            if t.kind() != kind {
                *t = tch::no_grad(|| t.to_kind(kind));
            }
            *t = t.detach().set_requires_grad(true);
            let decays = decays(spec.role(), &spec.shape);
            out.push(Trainable { name: spec.name(), tensor: t.shallow_clone(), decays });
        } else {
            *t = t.detach().set_requires_grad(false);
        }
    }
    model.retie();
    out
}
