//! The one tensor layout: every tensor of a model (and of the method applied to it) with its address
//! in the model, its ftexp name, its hub name, its shape and its role. Loading, export, visiting,
//! parameter counts, trainability and weight decay all derive from this table.
use super::spec::{ModelSpec, Norm, NormPlacement, QkNorm, Qkv};
use crate::config::{MethodConfig, MethodKind};

/// A module of the model that holds tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    Embed,
    /// The norm before attention (and, when shared, before the MLP) of block `i`.
    Norm1(usize),
    /// The MLP's own norm of block `i`.
    Norm2(usize),
    /// The norm of attention's output of block `i` (Gemma, OLMo 2).
    PostAttnNorm(usize),
    /// The norm of the MLP's output of block `i` (Gemma, OLMo 2).
    PostMlpNorm(usize),
    /// The RMSNorm of the queries, and of the keys, of block `i` (Qwen3, Gemma 3, OLMo 2).
    QNorm(usize),
    KNorm(usize),
    Linear(usize, Proj),
    /// The LLaMA-Adapter prompt of block `i`.
    Adapter(usize),
    FinalNorm,
    Head,
}

/// The linear layers of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    /// Attention's output projection.
    O,
    /// SwiGLU's gate (`silu(gate(x)) · up(x)`); GELU MLPs have none.
    Gate,
    /// hidden → intermediate (`fc` of GELU MLPs).
    Up,
    /// intermediate → hidden (`proj` of GELU MLPs).
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];
}

impl Proj {
    fn name(self) -> &'static str {
        match self {
            Proj::Q => "q",
            Proj::K => "k",
            Proj::V => "v",
            Proj::O => "o",
            Proj::Gate => "mlp.gate",
            Proj::Up => "mlp.up",
            Proj::Down => "mlp.down",
        }
    }

    fn is_mlp(self) -> bool {
        matches!(self, Proj::Gate | Proj::Up | Proj::Down)
    }
}

/// Which tensor of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    Weight,
    Bias,
    LoraA,
    LoraB,
    AdapterPrefix,
    AdapterGate,
    AdapterScale,
    AdapterBias,
}

impl Param {
    fn suffix(self) -> &'static str {
        match self {
            Param::Weight => "weight",
            Param::Bias => "bias",
            Param::LoraA => "lora_a",
            Param::LoraB => "lora_b",
            Param::AdapterPrefix => "adapter_prefix",
            Param::AdapterGate => "adapter_gate",
            Param::AdapterScale => "adapter_scale",
            Param::AdapterBias => "adapter_bias",
        }
    }
}

/// What a tensor is for: decides which methods train it and whether weight decay applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding,
    /// The norms before attention and the MLP, and the final norm (which adapter v2 trains, as litgpt).
    Norm,
    /// The norms after attention and the MLP, and those of the queries and keys.
    InnerNorm,
    Attention,
    Mlp,
    Head,
    LoraA,
    LoraB,
    AdapterPrefix,
    AdapterGate,
    AdapterScale,
    AdapterBias,
}

/// Where a tensor lives in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct At {
    pub module: Module,
    pub param: Param,
}

/// How several of ftexp's tensors share one checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fusion {
    /// q/k/v rows interleaved per key/value group: its query heads, its key, its value (Falcon, GPT-NeoX).
    QkvInterleaved,
    /// The rows of q, then k, then v (Phi-3).
    QkvConcat,
    /// The rows of the gate, then up (Phi-3).
    GateUp,
}

impl Fusion {
    /// The rows of each part (q, k, v; or gate, up).
    pub fn part_rows(self, spec: &ModelSpec) -> Vec<i64> {
        let (q, kv) = (spec.n_head * spec.head_size, spec.n_query_groups * spec.head_size);
        match self {
            Fusion::QkvInterleaved | Fusion::QkvConcat => vec![q, kv, kv],
            Fusion::GateUp => vec![spec.intermediate_size; 2],
        }
    }
}

/// A tensor's hub name; for a fused tensor, how it is fused and which part it is (0 q, 1 k, 2 v; or
/// 0 gate, 1 up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubName {
    pub name: String,
    pub fused: Option<(Fusion, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub at: At,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// The ftexp name: `embed`, `layers.3.q.lora_a`, `layers.0.mlp.up.weight`, `head.weight`.
    pub fn name(&self) -> String {
        let param = self.at.param.suffix();
        match self.at.module {
            Module::Embed => "embed".into(),
            Module::Norm1(i) => format!("layers.{i}.norm1.{param}"),
            Module::Norm2(i) => format!("layers.{i}.norm2.{param}"),
            Module::PostAttnNorm(i) => format!("layers.{i}.post_attn_norm.{param}"),
            Module::PostMlpNorm(i) => format!("layers.{i}.post_mlp_norm.{param}"),
            Module::QNorm(i) => format!("layers.{i}.q_norm.{param}"),
            Module::KNorm(i) => format!("layers.{i}.k_norm.{param}"),
            Module::Linear(i, p) => format!("layers.{i}.{}.{param}", p.name()),
            Module::Adapter(i) => format!("layers.{i}.{param}"),
            Module::FinalNorm => format!("final_norm.{param}"),
            Module::Head => format!("head.{param}"),
        }
    }

    pub fn role(&self) -> Role {
        match (self.at.param, self.at.module) {
            (Param::LoraA, _) => Role::LoraA,
            (Param::LoraB, _) => Role::LoraB,
            (Param::AdapterPrefix, _) => Role::AdapterPrefix,
            (Param::AdapterGate, _) => Role::AdapterGate,
            (Param::AdapterScale, _) => Role::AdapterScale,
            (Param::AdapterBias, _) => Role::AdapterBias,
            (_, Module::Embed) => Role::Embedding,
            (_, Module::Norm1(_) | Module::Norm2(_) | Module::FinalNorm) => Role::Norm,
            (_, Module::PostAttnNorm(_) | Module::PostMlpNorm(_) | Module::QNorm(_) | Module::KNorm(_)) => {
                Role::InnerNorm
            }
            (_, Module::Linear(_, p)) if p.is_mlp() => Role::Mlp,
            (_, Module::Linear(..) | Module::Adapter(_)) => Role::Attention,
            (_, Module::Head) => Role::Head,
        }
    }

    /// Whether a method adds this tensor (the checkpoint has only weights and biases).
    pub fn is_method(&self) -> bool {
        !matches!(self.at.param, Param::Weight | Param::Bias)
    }

    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// The checkpoint's name for this tensor; `None` for the tensors a method adds.
    pub fn hub_name(&self, spec: &ModelSpec) -> Option<HubName> {
        let suffix = match self.at.param {
            Param::Weight | Param::Bias => self.at.param.suffix(),
            _ => return None,
        };
        let names = spec.names();
        let plain = |module: String| Some(HubName { name: format!("{module}.{suffix}"), fused: None });
        let layer = |i: usize, local: &str| format!("{}.{i}.{local}", names.layers);
        match self.at.module {
            Module::Embed => plain(names.embed.into()),
            Module::Norm1(i) => plain(layer(i, names.norm1)),
            Module::Norm2(i) => plain(layer(i, names.norm2)),
            Module::PostAttnNorm(i) => plain(layer(i, names.post_attn_norm)),
            Module::PostMlpNorm(i) => plain(layer(i, names.post_mlp_norm)),
            Module::QNorm(i) => plain(layer(i, names.q_norm)),
            Module::KNorm(i) => plain(layer(i, names.k_norm)),
            Module::FinalNorm => plain(names.final_norm.into()),
            Module::Head => plain(names.head.into()),
            Module::Adapter(_) => None,
            Module::Linear(i, proj) => {
                let part = |p: usize| match proj {
                    Proj::Q => p,
                    Proj::K => p + 1,
                    _ => p + 2,
                };
                let gate_up = if names.gate_up_fused { Some(Fusion::GateUp) } else { None };
                let (local, fused) = match (proj, names.qkv) {
                    (Proj::Q | Proj::K | Proj::V, Qkv::Fused(n)) => (n, Some((Fusion::QkvInterleaved, part(0)))),
                    (Proj::Q | Proj::K | Proj::V, Qkv::Concat(n)) => (n, Some((Fusion::QkvConcat, part(0)))),
                    (Proj::Q, Qkv::Split(q, _, _)) => (q, None),
                    (Proj::K, Qkv::Split(_, k, _)) => (k, None),
                    (Proj::V, Qkv::Split(_, _, v)) => (v, None),
                    (Proj::O, _) => (names.attn_out, None),
                    (Proj::Gate, _) => (names.mlp_gate, gate_up.map(|f| (f, 0))),
                    (Proj::Up, _) => (names.mlp_up, gate_up.map(|f| (f, 1))),
                    (Proj::Down, _) => (names.mlp_down, None),
                };
                Some(HubName { name: format!("{}.{suffix}", layer(i, local)), fused })
            }
        }
    }
}

/// The linear layers of a block in order, with (output rows, input columns, has a bias).
fn projections(spec: &ModelSpec) -> Vec<(Proj, i64, i64, bool)> {
    let (h, ff) = (spec.hidden_size, spec.intermediate_size);
    let (q, kv) = (spec.n_head * spec.head_size, spec.n_query_groups * spec.head_size);
    let mut out = vec![
        (Proj::Q, q, h, spec.qkv_bias),
        (Proj::K, kv, h, spec.qkv_bias),
        (Proj::V, kv, h, spec.qkv_bias),
        (Proj::O, h, q, spec.o_bias),
    ];
    if spec.mlp.gated() {
        out.push((Proj::Gate, ff, h, spec.mlp_bias));
    }
    out.push((Proj::Up, ff, h, spec.mlp_bias));
    out.push((Proj::Down, h, ff, spec.mlp_bias));
    out
}

/// What a fine-tuning method adds beside linear layers and which tensors train: the one table of
/// methods (whether it adds adapter prompts is `MethodKind::has_adapter_prompts`, which config
/// validation reads too).
pub struct MethodDef {
    /// Tensors added beside each linear layer it targets.
    pub linear: &'static [Param],
    /// Whether every linear layer is a target (else `method.lora_*` pick them).
    pub every_linear: bool,
    /// The roles that train; `None`: every tensor.
    pub trains: Option<&'static [Role]>,
}

pub fn method_def(kind: MethodKind) -> MethodDef {
    use Role::*;
    match kind {
        MethodKind::Full => MethodDef { linear: &[], every_linear: false, trains: None },
        MethodKind::Lora => {
            MethodDef { linear: &[Param::LoraA, Param::LoraB], every_linear: false, trains: Some(&[LoraA, LoraB]) }
        }
        MethodKind::Adapter => {
            MethodDef { linear: &[], every_linear: false, trains: Some(&[AdapterPrefix, AdapterGate]) }
        }
        MethodKind::AdapterV2 => MethodDef {
            linear: &[Param::AdapterScale, Param::AdapterBias],
            every_linear: true,
            trains: Some(&[AdapterPrefix, AdapterGate, AdapterScale, AdapterBias, Norm]),
        },
    }
}

/// Whether `m` puts its linear-layer tensors beside `module`.
fn targets(m: &MethodConfig, module: Module) -> bool {
    if method_def(m.kind).every_linear {
        return true;
    }
    match module {
        Module::Linear(_, Proj::Q) => m.lora_query,
        Module::Linear(_, Proj::K) => m.lora_key,
        Module::Linear(_, Proj::V) => m.lora_value,
        Module::Linear(_, Proj::O) => m.lora_projection,
        Module::Linear(..) => m.lora_mlp,
        Module::Head => m.lora_head,
        _ => false,
    }
}

/// The shape of a method tensor beside a linear layer of `rows × cols`.
fn linear_param_shape(param: Param, rows: i64, cols: i64, m: &MethodConfig) -> Vec<i64> {
    let r = m.lora_r as i64;
    match param {
        Param::LoraA => vec![r, cols],
        Param::LoraB => vec![rows, r],
        _ => vec![rows],
    }
}

/// Every tensor of a model of `spec` with `method` applied (`None`: the checkpoint's own tensors), in
/// a fixed order: the embedding; per block its norms, linears (each weight, bias, then the method's
/// tensors) and adapter prompt; the final norm; the head. A tied head has no weight of its own.
pub fn tensors(spec: &ModelSpec, method: Option<&MethodConfig>) -> Vec<TensorSpec> {
    let h = spec.hidden_size;
    let mut out = Vec::new();
    let mut push =
        |module: Module, param: Param, shape: Vec<i64>| out.push(TensorSpec { at: At { module, param }, shape });
    let norm = |push: &mut dyn FnMut(Module, Param, Vec<i64>), module: Module| {
        push(module, Param::Weight, vec![norm_width(spec, module)]);
        if spec.norm == Norm::LayerNorm {
            push(module, Param::Bias, vec![h]);
        }
    };
    let linear = |push: &mut dyn FnMut(Module, Param, Vec<i64>), module, rows: i64, cols: i64, bias: bool| {
        if module != Module::Head || !spec.tie_embeddings {
            push(module, Param::Weight, vec![rows, cols]);
        }
        if bias {
            push(module, Param::Bias, vec![rows]);
        }
        if let Some(m) = method.filter(|m| targets(m, module)) {
            for &param in method_def(m.kind).linear {
                push(module, param, linear_param_shape(param, rows, cols, m));
            }
        }
    };
    push(Module::Embed, Param::Weight, vec![spec.vocab_size, h]);
    for i in 0..spec.n_layer as usize {
        for module in block_norms(spec, i) {
            norm(&mut push, module);
        }
        for (proj, rows, cols, bias) in projections(spec) {
            linear(&mut push, Module::Linear(i, proj), rows, cols, bias);
        }
        if let Some(m) = method.filter(|m| m.kind.has_adapter_prompts() && i as u64 >= m.adapter_start_layer) {
            push(Module::Adapter(i), Param::AdapterPrefix, vec![m.adapter_prompt_length as i64, h]);
            push(Module::Adapter(i), Param::AdapterGate, vec![1, spec.n_head, 1, 1]);
        }
    }
    norm(&mut push, Module::FinalNorm);
    linear(&mut push, Module::Head, spec.vocab_size, h, false);
    out
}

/// The norms of block `i`, in the layout's order.
pub fn block_norms(spec: &ModelSpec, i: usize) -> Vec<Module> {
    let mut out = Vec::new();
    if spec.norm_placement != NormPlacement::Post {
        out.push(Module::Norm1(i));
        if !spec.shared_attention_norm {
            out.push(Module::Norm2(i));
        }
    }
    if spec.norm_placement != NormPlacement::Pre {
        out.extend([Module::PostAttnNorm(i), Module::PostMlpNorm(i)]);
    }
    if spec.qk_norm.is_some() {
        out.extend([Module::QNorm(i), Module::KNorm(i)]);
    }
    out
}

/// The width a norm at `module` normalises.
fn norm_width(spec: &ModelSpec, module: Module) -> i64 {
    match (module, spec.qk_norm) {
        (Module::QNorm(_) | Module::KNorm(_), Some(QkNorm::PerHead)) => spec.head_size,
        (Module::QNorm(_), _) => spec.n_head * spec.head_size,
        (Module::KNorm(_), _) => spec.n_query_groups * spec.head_size,
        _ => spec.hidden_size,
    }
}

/// The checkpoint's tensors by hub name with their shapes, a fused q/k/v matrix once.
pub fn hub_tensors(spec: &ModelSpec) -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    for t in tensors(spec, None) {
        let Some(hub) = t.hub_name(spec) else { continue };
        match hub.fused {
            None => out.push((hub.name, t.shape.clone())),
            Some((fusion, 0)) => {
                let rows = fusion.part_rows(spec).iter().sum::<i64>();
                out.push((hub.name, [&[rows][..], &t.shape[1..]].concat()));
            }
            Some(_) => {}
        }
    }
    out
}

impl ModelSpec {
    /// The checkpoint's parameter count (from the layout, which knows every tensor's shape).
    pub fn num_params(&self) -> i64 {
        tensors(self, None).iter().map(|t| t.numel()).sum()
    }
}
