//! The typed settings a config chooses from. Each enum is the one list of its choices: the schema's
//! type check, `ftexp keys`, docs/config.md and the code that acts on a setting all read it.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `options` quoted and separated by commas, as error messages and the key table list them.
pub fn quoted_list(options: &[&str]) -> String {
    options.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(", ")
}

/// An enum of named choices, with `NAMES` (in the order `ftexp keys` lists them), `as_str` and `FromStr`.
macro_rules! choices {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(format!("is \"{s}\"; use one of {}", quoted_list(Self::NAMES))),
                }
            }
        }
    };
}

choices! {
    /// How the frozen base's linear weights are held.
    Quantize {
        None = "none",
        Nf4 = "nf4",
        Nf4Dq = "nf4-dq",
        Int8 = "int8",
        /// Chosen by the plan: none if the run fits 90% of the device without, else int8, else nf4.
        Auto = "auto",
    }
}

choices! {
    /// How the model is fine-tuned.
    MethodKind {
        Full = "full",
        Lora = "lora",
        Adapter = "adapter",
        AdapterV2 = "adapter_v2",
    }
}

impl MethodKind {
    /// Whether the method adds LLaMA-Adapter prompts (and their gates) to the model.
    pub fn has_adapter_prompts(self) -> bool {
        matches!(self, MethodKind::Adapter | MethodKind::AdapterV2)
    }
}

choices! {
    /// Number format of weights and maths.
    Precision {
        Auto = "auto",
        F32 = "32-true",
        Bf16 = "bf16-true",
        Bf16Mixed = "bf16-mixed",
        F16 = "16-true",
    }
}

choices! {
    /// Where the starting weights come from.
    Init {
        Pretrained = "pretrained",
        Random = "random",
    }
}

choices! {
    /// The data set's format.
    DataFormat {
        Alpaca = "alpaca",
        Chat = "chat",
        Text = "text",
    }
}

choices! {
    /// Which turns of a conversation count in the loss.
    TrainOn {
        Assistant = "assistant",
        All = "all",
    }
}

choices! {
    /// What happens to a sample longer than `max_seq_length`.
    LongSamples {
        Truncate = "truncate",
        Drop = "drop",
    }
}

choices! {
    /// The learning rate after warm-up.
    LrSchedule {
        Cosine = "cosine",
        Constant = "constant",
    }
}

choices! {
    /// A model family, as a hub `config.json` names it (`model_type`), for models built from scratch.
    ModelType {
        Llama = "llama",
        Mistral = "mistral",
        Qwen2 = "qwen2",
        Qwen3 = "qwen3",
        Gemma2 = "gemma2",
        Gemma3Text = "gemma3_text",
        Phi3 = "phi3",
        Olmo2 = "olmo2",
        GptNeox = "gpt_neox",
        Falcon = "falcon",
    }
}

choices! {
    /// The layout a run's model is exported in.
    ExportFormat {
        /// A hub checkpoint, as transformers saves one: the method merged into the weights.
        Hf = "hf",
        /// A PEFT LoRA adapter beside the base (LoRA runs).
        Peft = "peft",
    }
}

choices! {
    /// The number format of exported weights.
    ExportDtype {
        Bf16 = "bf16",
        Fp16 = "fp16",
        Fp32 = "fp32",
    }
}

/// `model.device`: `auto`, `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSetting {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSetting {
    pub const DESCRIBE: &'static str = "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\"";
}

impl FromStr for DeviceSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSetting::Auto),
            "cpu" => Ok(DeviceSetting::Cpu),
            "cuda" => Ok(DeviceSetting::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSetting::Cuda)
                .ok_or_else(|| format!("is \"{s}\"; use {}", Self::DESCRIBE)),
        }
    }
}

impl TryFrom<String> for DeviceSetting {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSetting> for String {
    fn from(d: DeviceSetting) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSetting::Auto => f.write_str("auto"),
            DeviceSetting::Cpu => f.write_str("cpu"),
            DeviceSetting::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
