//! The one schema: every key a config file may set, its type, its default and what it means.
//! The defaults layer, the unknown-key check, the type check, `ftexp keys` and docs/config.md's
//! key table all read this table, so they cannot drift apart.
use serde::{Deserialize, Serialize};

use super::choices::{
    quoted_list, DataFormat, DeviceSetting, ExportDtype, ExportFormat, Init, LongSamples, LrSchedule, MethodKind,
    ModelType, Precision, Quantize, TrainOn,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Str,
    /// A whole number ≥ 0.
    Int,
    /// A number; whole numbers are accepted too.
    Float,
    Bool,
    StrList,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A device name: `auto`, `cpu`, `cuda`, `cuda:N`.
    Device,
    /// A whole number ≥ 1, or `"auto"`.
    IntOrAuto,
    /// An amount of memory: `"24GB"`, `"80GiB"`, `"512MiB"`.
    Bytes,
    /// `true`, `false`, or `"auto"`.
    BoolOrAuto,
}

impl Kind {
    pub fn describe(&self) -> String {
        match self {
            Kind::Str => "a string".into(),
            Kind::Int => "a whole number".into(),
            Kind::Float => "a number".into(),
            Kind::Bool => "true or false".into(),
            Kind::StrList => "a list of strings".into(),
            Kind::Choice(options) => format!("one of {}", quoted_list(options)),
            Kind::Device => DeviceSetting::DESCRIBE.into(),
            Kind::IntOrAuto => "a positive whole number or \"auto\"".into(),
            Kind::Bytes => "an amount of memory such as \"24GB\" or \"80GiB\"".into(),
            Kind::BoolOrAuto => "true, false or \"auto\"".into(),
        }
    }
}

pub struct KeyDoc {
    /// Dotted path, e.g. `train.learning_rate`.
    pub key: &'static str,
    pub kind: Kind,
    /// The default as a TOML literal; `None` means unset (the doc says what unset means).
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

pub const PROMPT_STYLES: &[&str] = &["alpaca", "plain", "none"];

macro_rules! key {
    ($key:literal, $kind:expr, $default:expr, $doc:literal) => {
        KeyDoc { key: $key, kind: $kind, default: $default, doc: $doc }
    };
}

use Kind::*;

pub const KEYS: &[KeyDoc] = &[
    key!("name", Str, None,
        "The experiment's name: outputs go to `experiments/<name>/v<N>/`. Letters, digits, `-`, `_` and `.` only. Unset: the config file's name without `.toml`."),
    key!("seed", Int, Some("1337"),
        "The random seed. The same seed gives the same train/val/test split, the same data order and the same initial weights, so a run can be reproduced; the number itself does not matter, keeping it does."),
    key!("extends", StrList, Some("[]"),
        "Other config files this one builds on, paths relative to this file. They are read first, in order; this file's values win. Tables merge key by key, lists are replaced whole."),
    key!("model.checkpoint", Str, None,
        "The base model to fine-tune: a hub repo id (`tiiuae/falcon-7b-instruct`, looked for in `checkpoints/<org>/<name>/`) or a local directory holding `config.json`, `*.safetensors` and `tokenizer.json`. Required."),
    key!("model.revision", Str, None,
        "The hub revision (branch, tag or commit) to download. Unset: `main`."),
    key!("model.precision", Choice(Precision::NAMES), Some("\"auto\""),
        "Number format for weights and maths. `32-true`: full 32-bit floats (safest, most memory); `bf16-true`: 16-bit bfloat everywhere (half the memory, needs a recent GPU); `bf16-mixed`: 16-bit maths with 32-bit trainable weights; `16-true`: 16-bit floats. `auto`: `32-true` on CPU, `bf16-true` on CUDA."),
    key!("model.device", Device, Some("\"auto\""),
        "Where to run: `cpu`, `cuda` (the first GPU), `cuda:N` (GPU number N), or `auto` (a GPU when there is one, else the CPU)."),
    key!("model.init", Choice(Init::NAMES), Some("\"pretrained\""),
        "`pretrained`: start from the weights of `checkpoint`. `random`: start from random weights shaped by `[model.architecture]` (training from scratch, what litgpt calls pretraining; needs `method.kind = \"full\"` and `model.tokenizer`), or, with `[model.architecture]` unset, by the checkpoint's `config.json` alone (no weights needed: how `ftexp bench` measures a large model offline)."),
    key!("model.device_memory", Bytes, None,
        "The memory of the device to plan for, such as `\"24GB\"` or `\"80GiB\"`: `ftexp plan` says whether the run fits in it, `train.micro_batch_size = \"auto\"` picks the micro-batch that fits in 90% of it, and on the CPU tensors past it fail to allocate (a way to try a card's limit before renting it). Unset: the GPU's own memory, or the machine's on the CPU, and no limit is enforced."),
    key!("model.quantize", Choice(Quantize::NAMES), Some("\"none\""),
        "Hold the frozen base's layer weights in fewer bits (QLoRA), for `lora`, `adapter` and `adapter_v2`: `nf4` (4-bit NormalFloat in blocks of 64 with a scale per block, as bitsandbytes; about 4.5 bits per weight), `nf4-dq` (its scales quantized again to 8 bits; about 4.1 bits), `int8` (8 bits in blocks of 64). A 7B model's weights then take about 3.9 or 7 GB instead of 13.5 GB in bf16. Each weight is turned back into the compute dtype one layer at a time where it is used, so a quantized run also turns on `train.activation_checkpointing`. The embedding and the LM head stay as they are; `full` cannot train quantized weights. `\"auto\"`: the plan picks `none` when the run fits 90% of the device's memory without it, else `int8`, else `nf4`, and says why (with `full`, always `none`)."),
    key!("model.quantize_cache", Bool, Some("false"),
        "With `model.quantize`: keep the quantized weights next to the base (in its `.ftexp-quantized/` folder, about a third of a 16-bit base's size for `nf4`), keyed by the SHA-256 of its `config.json` and weight files, so the next run on the same base reads them instead of quantizing again. A cache made from other files is refused (delete it to make a new one); a base folder that cannot be written is said and the run goes on."),
    key!("model.allow_unknown_config_keys", Bool, Some("false"),
        "Load a checkpoint whose `config.json` has keys ftexp does not implement (a setting that would change what the model computes, such as `attn_logit_softcapping`). Off: such a checkpoint is refused, naming the keys, because ftexp would silently compute a different model than transformers does. On: the keys are ignored, and the plan (and run.json) lists them; the model then differs from the checkpoint's own. Keys that change nothing (token ids, dtype, generation defaults) and neutral values (`attention_dropout = 0`, `null`) never need this."),
    key!("model.tokenizer", Str, None,
        "A directory holding the `tokenizer.json` to use. Unset: the checkpoint's own. Required with `init = \"random\"` and `[model.architecture]` (`ftexp tokenizer` trains one)."),
    key!("model.architecture.model_type", Choice(ModelType::NAMES), None,
        "With `init = \"random\"`: the family, as a hub `config.json` names it."),
    key!("model.architecture.hidden_size", Int, None, "With `init = \"random\"`: the width of the model."),
    key!("model.architecture.num_hidden_layers", Int, None, "With `init = \"random\"`: how many transformer blocks."),
    key!("model.architecture.num_attention_heads", Int, None, "With `init = \"random\"`: attention heads per block."),
    key!("model.architecture.num_key_value_heads", Int, None, "With `init = \"random\"`: key/value heads (grouped-query attention). Unset: as many as attention heads."),
    key!("model.architecture.intermediate_size", Int, None, "With `init = \"random\"`: the MLP's width. Unset: 4 × hidden_size (required for llama and qwen2)."),
    key!("model.architecture.head_dim", Int, None, "With `init = \"random\"`: the width of one attention head. Unset: the family's default (hidden_size / num_attention_heads; 128 for qwen3, 256 for gemma2 and gemma3_text, as transformers)."),
    key!("model.architecture.max_position_embeddings", Int, None, "With `init = \"random\"`: the longest context the model is meant for. Unset: 2048."),
    key!("model.architecture.tie_word_embeddings", Bool, None, "With `init = \"random\"`: share the input embedding with the output head. Unset: the family's default."),
    key!("data.path", Str, None,
        "Your data set: a `.json` (an array of records) or `.jsonl` (one record per line), `.csv` (a header row naming the columns) or `.parquet` file; a directory of such files (its shards, read in name order); or a data set on the hub, `hf://datasets/<org>/<name>[@<revision>][/<file, folder or glob>]` (e.g. `hf://datasets/org/chats/data/train-*.parquet`), whose data files are downloaded into the hub cache (`HF_HOME`, with `HF_TOKEN` and `HF_ENDPOINT` as for models) and fetched again only when the revision points to a new commit (when the hub cannot be reached, or `HF_HUB_OFFLINE=1`, the revision's last download is used). Every format holds the same records, read through `data.columns`. Relative paths are relative to the directory you run `ftexp` from. Required."),
    key!("data.columns.instruction", Str, Some("\"instruction\""),
        "The field of each record that holds the instruction, for data sets with other names (e.g. `\"question\"`)."),
    key!("data.columns.input", Str, Some("\"input\""),
        "The field that holds the optional input (context for the instruction). Records without it have an empty input."),
    key!("data.columns.output", Str, Some("\"output\""),
        "The field that holds the response the model should learn to give."),
    key!("data.columns.messages", Str, Some("\"messages\""),
        "With `format = \"chat\"`: the field of each record that holds the conversation, a list of turns (`\"conversations\"` in ShareGPT-style data)."),
    key!("data.columns.role", Str, Some("\"role\""),
        "With `format = \"chat\"`: the field of each turn that says who speaks (`\"from\"` in ShareGPT-style data)."),
    key!("data.columns.content", Str, Some("\"content\""),
        "With `format = \"chat\"`: the field of each turn that holds what was said (`\"value\"` in ShareGPT-style data)."),
    key!("data.columns.user", Str, Some("\"user\""),
        "With `format = \"chat\"`: the role name your data uses for the person asking (`\"human\"` in ShareGPT-style data); it becomes `user` for the chat template."),
    key!("data.columns.assistant", Str, Some("\"assistant\""),
        "With `format = \"chat\"`: the role name your data uses for the model's answers (`\"gpt\"` in ShareGPT-style data); it becomes `assistant`. These turns are what the model learns to say."),
    key!("data.columns.system", Str, Some("\"system\""),
        "With `format = \"chat\"`: the role name your data uses for an optional first turn of instructions to the model (the system prompt); it becomes `system`."),
    key!("data.format", Choice(DataFormat::NAMES), Some("\"alpaca\""),
        "The data set's format. `alpaca`: records with `instruction`, optional `input`, and `output`. `chat`: records holding a conversation (a list of turns, each with a role and its content), put into text by the model's own chat template; see `data.columns.*`, `data.train_on` and `data.chat_template`. `text`: a plain-text corpus (UTF-8; documents separated by blank lines, each ended with the end-of-text token) packed into blocks of `max_seq_length` tokens, every token learned — for training a base model."),
    key!("data.prompt_style", Str, Some("\"alpaca\""),
        "How a record becomes the prompt the model sees. `alpaca`: the Stanford Alpaca template; `plain`: instruction and input, then the response; `none`: the instruction alone; or your own template with `{instruction}` and `{input}` placeholders."),
    key!("data.chat_template", Str, None,
        "With `format = \"chat\"`: how a conversation becomes text. Unset: the tokenizer's own chat template (`chat_template` in `tokenizer_config.json`, or `chat_template.jinja`), as the model was trained to read it. `\"chatml\"`: the ChatML layout (`<|im_start|>role … <|im_end|>`) for a tokenizer without a template; or the path of a Jinja template file."),
    key!("data.train_on", Choice(TrainOn::NAMES), Some("\"assistant\""),
        "With `format = \"chat\"`: which tokens count in the loss. `assistant`: only the assistant's turns, each with the template's end-of-turn marker, so the model learns to answer and to stop; `all`: every token of the conversation."),
    key!("data.packing", Bool, Some("false"),
        "Pack several samples into each row of `max_seq_length` tokens instead of padding every sample to the longest of its micro-batch: less compute wasted on padding when lengths vary. Each sample still sees only itself (its positions restart and attention stays inside it), so losses are exactly as without packing; `micro_batch_size` then counts rows. `ftexp prepare` reports how full the rows would be."),
    key!("data.split.train", Float, Some("0.8"),
        "Share of the records used for training (the model learns from these). The three shares must add up to 1; 80/10/10, 70/15/15 and 60/20/20 are common."),
    key!("data.split.val", Float, Some("0.1"),
        "Share of the records used for validation: the loss on these, measured during training, tells you whether the model is still improving on data it has not learned from."),
    key!("data.split.test", Float, Some("0.1"),
        "Share of the records kept for the final test, never seen during training."),
    key!("data.max_seq_length", Int, Some("512"),
        "The longest sample, in tokens, the model is trained on. Longer samples cost more memory; lower it if you run out of memory."),
    key!("data.long_samples", Choice(LongSamples::NAMES), Some("\"truncate\""),
        "What to do with a sample longer than `max_seq_length`: `truncate` keeps the whole prompt and cuts the response, still ending it with the end-of-text token; `drop` leaves the sample out. Either way `ftexp prepare` reports how many. A sample whose prompt leaves no room for one response token and the end-of-text token is always dropped."),
    key!("data.mask_inputs", Bool, Some("true"),
        "Learn only the response: the prompt's tokens do not count in the loss. Usually what you want for instruction tuning."),
    key!("method.kind", Choice(MethodKind::NAMES), Some("\"lora\""),
        "How the model is fine-tuned. `full`: every weight trains (best quality, most memory); `lora`: small low-rank updates beside chosen weight matrices; `adapter`: LLaMA-Adapter, a few learned prompt vectors per layer; `adapter_v2`: adapter plus trainable biases, scales and norms. The last three train well under 1% of the weights."),
    key!("method.lora_r", Int, Some("8"),
        "LoRA rank: the size of the low-rank update. Higher learns more and costs more; 8 or 16 is typical."),
    key!("method.lora_alpha", Float, Some("16"),
        "LoRA scaling: the update is multiplied by `lora_alpha / lora_r`. Often twice the rank."),
    key!("method.lora_dropout", Float, Some("0.05"),
        "Share of the LoRA branches' inputs randomly dropped during training, against overfitting (one mask per input, shared by the branches that read it, as litgpt does for q, k and v). 0 to less than 1."),
    key!("method.lora_query", Bool, Some("true"), "Apply LoRA to the attention query projection."),
    key!("method.lora_key", Bool, Some("false"), "Apply LoRA to the attention key projection."),
    key!("method.lora_value", Bool, Some("true"), "Apply LoRA to the attention value projection."),
    key!("method.lora_projection", Bool, Some("false"), "Apply LoRA to the attention output projection."),
    key!("method.lora_mlp", Bool, Some("false"), "Apply LoRA to the feed-forward (MLP) layers."),
    key!("method.lora_head", Bool, Some("false"), "Apply LoRA to the output head that turns hidden states into token scores."),
    key!("method.adapter_prompt_length", Int, Some("10"),
        "Adapter methods: how many learned prompt vectors each adapted layer gets."),
    key!("method.adapter_start_layer", Int, Some("2"),
        "Adapter methods: the first layer (counting from 0) that gets adapter prompts; earlier layers are left alone."),
    key!("train.learning_rate", Float, Some("3e-4"),
        "How strongly each optimizer step changes the weights. Too high and the model forgets what it knew (catastrophic forgetting) or the loss explodes; too low and it learns nothing. The seed's adapter runs used 0.009; LoRA usually wants 1e-4 to 3e-4."),
    key!("train.epochs", Int, Some("1"),
        "How many times training goes through `epoch_size` samples. Ignored when `max_steps` is set."),
    key!("train.epoch_size", Int, None,
        "How many samples make one epoch. Unset: the number of records in the train split."),
    key!("train.max_steps", Int, None,
        "Stop after this many optimizer steps, whatever `epochs` says. Unset: `epochs` × (`epoch_size` ÷ `batch_size`, rounded down, at least 1)."),
    key!("train.batch_size", Int, Some("16"),
        "Samples per optimizer step (the weights change once per batch). Must be a multiple of `micro_batch_size` × `devices`. The seed writes it as `128 / devices`."),
    key!("train.micro_batch_size", IntOrAuto, Some("1"),
        "Samples processed at once. Gradients of `batch_size / (micro_batch_size × devices)` micro-batches are added up before each optimizer step (gradient accumulation), so this only trades memory for speed, not results. Lower it if you run out of memory. `\"auto\"`: the largest that divides `batch_size / devices` and that the memory plan fits in 90% of the device's memory (`model.device_memory`), confirmed by one trial step and halved if that runs out of memory; the choice is shown by `ftexp plan` and recorded in run.json."),
    key!("train.devices", Int, Some("1"),
        "How many GPUs (or, with `model.device = \"cpu\"`, CPU processes) to train on, on this machine. Each holds a copy of the model and works through its share of every batch; their gradients are added up before each optimizer step, so the result is the same as on one device with the same `batch_size`, only faster. Under torchrun (several machines) it is the processes per machine."),
    key!("train.allow_oversubscribe", Bool, Some("false"),
        "With `model.device = \"cpu\"`: allow more training processes (`devices`) than this machine has CPU cores. Off, such a run is refused, since the processes would only slow each other down (and each holds a copy of the model); the plan adds up their memory against the machine's either way."),
    key!("train.run_over_plan", Bool, Some("false"),
        "Start a run even when the memory plan says it does not fit the device. Off, such a run is refused with the plan's advice; the plan assumes every row is `data.max_seq_length` long, so a data set of short rows may train anyway (a step that runs out of memory ends the run with the last checkpoint kept)."),
    key!("train.activation_checkpointing", BoolOrAuto, Some("false"),
        "Keep only each layer's input during the forward pass and compute the layer again when the backward pass reaches it: the activations then take about one layer's worth instead of all of them, for about a third more compute per step. Losses and gradients are the same as without it. `\"auto\"`: on only when the plan does not fit 90% of the device's memory without it (the plan says which it chose and why)."),
    key!("train.sync_timeout_s", Int, Some("120"),
        "With several devices: how many seconds a process waits for the others (to start, or to exchange gradients) before the run stops with an error. Raise it when saving a checkpoint of a large model takes longer."),
    key!("train.weight_decay", Float, Some("0.0"),
        "Pulls weights slightly towards zero at every step, against overfitting (AdamW's decoupled decay). Applies to weight matrices and LoRA/adapter weights, never to biases, norms or adapter gates. Too high underfits; 0.01–0.1 is typical."),
    key!("train.warmup_iters", Int, Some("100"),
        "Optimizer steps over which the learning rate rises linearly from 0 to `learning_rate`, so the first batches cannot wreck the base model."),
    key!("train.lr_schedule", Choice(LrSchedule::NAMES), Some("\"cosine\""),
        "The learning rate after warm-up: `cosine` falls smoothly to `min_lr` by the last step; `constant` stays at `learning_rate`."),
    key!("train.min_lr", Float, Some("0.0"),
        "The learning rate the cosine schedule ends at. At most `learning_rate`."),
    key!("train.max_grad_norm", Float, Some("1.0"),
        "Gradients are scaled down when their overall size (L2 norm) exceeds this, which keeps one bad batch from spoiling training. 0 turns clipping off."),
    key!("train.eval_interval", Int, Some("100"),
        "Every this many optimizer steps, the loss on the validation split is measured and logged."),
    key!("train.eval_iters", Int, Some("100"),
        "How many validation micro-batches each of those evaluations averages over (not weight updates: evaluation never changes the weights)."),
    key!("train.save_interval", Int, Some("1000"),
        "Every this many optimizer steps a checkpoint is saved (and always at the end)."),
    key!("train.log_interval", Int, Some("1"),
        "Every this many optimizer steps a row is written to `metrics.csv` and a progress line is printed."),
    key!("train.save_best", Bool, None,
        "Keep the best model so far in `checkpoints/best/`: after each evaluation whose val loss is the lowest yet, the trained weights are saved there (replacing the previous best), so the model you use need not be the last one, which may have begun to overfit. Use it with `--step best` (`ftexp generate`, `eval`, `export`) or `model.checkpoint = \"experiment:<name>@best\"`. Unset: on when `early_stopping` is set, else off."),
    key!("train.early_stopping", Int, None,
        "Stop training when the val loss has not improved for this many evaluations in a row (every `eval_interval` steps), instead of running all the steps: the model has stopped learning anything that carries over to new data. The run still finishes normally (final losses, `final` checkpoint, export) and run.json says `stopped_early`. Needs a val split. Unset or 0: never stop early."),
    key!("train.min_delta", Float, Some("0.0"),
        "How much lower than the best so far the val loss must be for an evaluation to count as an improvement for `early_stopping`. 0: any decrease counts; raise it (e.g. 0.01) so tiny wobbles do not keep a run going."),
    key!("export.format", Choice(ExportFormat::NAMES), None,
        "Export the model when the run completes, as `ftexp export` does: `hf`, a hub checkpoint with the method merged in (into `checkpoints/final/model/`, where `model.checkpoint = \"experiment:<name>\"` finds it), or `peft`, a LoRA run's adapter (into `checkpoints/final/peft/`). Unset: `full` runs export as `hf`; a LoRA run exports as `hf` on first use as another run's base."),
    key!("export.dtype", Choice(ExportDtype::NAMES), None,
        "The number format of exported weights. Unset: the base checkpoint's own."),
    key!("track.tensorboard", Bool, Some("false"),
        "Write the run's curves for TensorBoard, into `tensorboard/` in the run directory: train loss, learning rate, tokens/s and gradient norm at every logged step, val loss at every evaluation, the final val and test loss, and the resolved config as text. Watch them with `tensorboard --logdir experiments/<name>`. A resumed run adds a file to the same directory and its steps continue. Writing never holds up training: when the directory cannot be written, the run says so once and goes on without it."),
];

pub fn find(key: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|k| k.key == key)
}

/// Whether `key` names a table of the schema (`train`, `data.split`), not a value.
pub fn is_table(key: &str) -> bool {
    let prefix = format!("{key}.");
    KEYS.iter().any(|k| k.key.starts_with(&prefix))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub name: String,
    pub seed: u64,
    #[serde(default, skip_serializing)]
    pub extends: Vec<String>,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub method: MethodConfig,
    pub train: TrainConfig,
    #[serde(default, skip_serializing_if = "ExportConfig::is_empty")]
    pub export: ExportConfig,
    #[serde(default)]
    pub track: TrackConfig,
}

/// Where a run's curves go besides metrics.csv and loss.png.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrackConfig {
    /// TensorBoard event files in the run's `tensorboard/`.
    #[serde(default)]
    pub tensorboard: bool,
}

/// What a run exports when it completes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExportConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ExportFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<ExportDtype>,
}

impl ExportConfig {
    pub fn is_empty(&self) -> bool {
        *self == ExportConfig::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    #[serde(default)]
    pub checkpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub precision: Precision,
    pub device: DeviceSetting,
    pub init: Init,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<String>,
    #[serde(default = "no_quantize")]
    pub quantize: Quantize,
    #[serde(default)]
    pub quantize_cache: bool,
    #[serde(default)]
    pub allow_unknown_config_keys: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    #[serde(default, skip_serializing_if = "Architecture::is_empty")]
    pub architecture: Architecture,
}

/// `config.json` keys for a model trained from scratch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Architecture {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<ModelType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_hidden_layers: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_attention_heads: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
}

impl Architecture {
    pub fn is_empty(&self) -> bool {
        *self == Architecture::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataConfig {
    #[serde(default)]
    pub path: String,
    pub columns: Columns,
    pub format: DataFormat,
    pub prompt_style: String,
    pub split: SplitRatios,
    pub max_seq_length: u64,
    pub long_samples: LongSamples,
    pub mask_inputs: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    pub train_on: TrainOn,
    pub packing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Hash)]
pub struct Columns {
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub messages: String,
    pub role: String,
    pub content: String,
    pub user: String,
    pub assistant: String,
    pub system: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SplitRatios {
    pub train: f64,
    pub val: f64,
    pub test: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodConfig {
    pub kind: MethodKind,
    pub lora_r: u64,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_query: bool,
    pub lora_key: bool,
    pub lora_value: bool,
    pub lora_projection: bool,
    pub lora_mlp: bool,
    pub lora_head: bool,
    pub adapter_prompt_length: u64,
    pub adapter_start_layer: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub epochs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    pub batch_size: u64,
    /// `0` stands for `"auto"` (written back as `"auto"`): resolved to a number before training.
    #[serde(with = "auto_or_count")]
    pub micro_batch_size: u64,
    pub devices: u64,
    #[serde(default)]
    pub allow_oversubscribe: bool,
    #[serde(default)]
    pub run_over_plan: bool,
    #[serde(default)]
    pub activation_checkpointing: Switch,
    pub sync_timeout_s: u64,
    pub weight_decay: f64,
    pub warmup_iters: u64,
    pub lr_schedule: LrSchedule,
    pub min_lr: f64,
    pub max_grad_norm: f64,
    pub eval_interval: u64,
    pub eval_iters: u64,
    pub save_interval: u64,
    pub log_interval: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_best: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<u64>,
    #[serde(default)]
    pub min_delta: f64,
}

impl TrainConfig {
    /// Evaluations without improvement after which training stops; `None`: never.
    pub fn patience(&self) -> Option<u64> {
        self.early_stopping.filter(|n| *n > 0)
    }

    /// Whether `checkpoints/best` is kept: `save_best`, by default on with early stopping.
    pub fn keeps_best(&self) -> bool {
        self.save_best.unwrap_or(self.patience().is_some())
    }

    /// `micro_batch_size = "auto"`, still to be resolved.
    pub fn auto_micro_batch(&self) -> bool {
        self.micro_batch_size == 0
    }
}

fn no_quantize() -> Quantize {
    Quantize::None
}

/// A setting that is on, off, or left to the plan (`true`, `false`, `"auto"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Switch {
    #[default]
    Off,
    On,
    Auto,
}

impl Serialize for Switch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Switch::Off => s.serialize_bool(false),
            Switch::On => s.serialize_bool(true),
            Switch::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Switch, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(on) => Ok(if on { Switch::On } else { Switch::Off }),
            Raw::Word(w) if w == "auto" => Ok(Switch::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("`{w}` is neither true, false nor \"auto\""))),
        }
    }
}

/// A count that may be written `"auto"`, held as 0.
mod auto_or_count {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        match n {
            0 => s.serialize_str("auto"),
            n => s.serialize_u64(*n),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(n),
            Raw::Word(w) if w == "auto" => Ok(0),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("`{w}` is neither a whole number nor \"auto\""))),
        }
    }
}

impl ModelConfig {
    /// `model.device_memory` in bytes (checked when the config was read).
    pub fn device_memory_bytes(&self) -> Option<u64> {
        self.device_memory.as_deref().and_then(|s| parse_bytes(s).ok())
    }
}

/// `"24GB"`, `"80GiB"`, `"512 MiB"`, `"1.5TB"`, or a plain number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let value: f64 = number.parse().map_err(|_| format!("`{text}` does not start with a number"))?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        "tib" => 1099511627776.0,
        _ => return Err(format!("`{text}` has the unit `{unit}`; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")),
    };
    match value * scale {
        bytes if (1.0..1e18).contains(&bytes) => Ok(bytes as u64),
        _ => Err(format!("`{text}` is not a usable amount of memory")),
    }
}
