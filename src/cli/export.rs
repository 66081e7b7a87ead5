//! `ftexp export`.
use std::path::PathBuf;

use ftexp::config::{ExportDtype, ExportFormat};
use ftexp::error::Problems;
use ftexp::export::gguf::{export_gguf, GgufRequest};
use ftexp::export::{export_run, ExportRequest};

use super::args::{print_json, BaseArg, JsonArg};
use ftexp::experiment::checkpoint::Pick;

/// Write a run's fine-tuned model as a hub checkpoint (safetensors, config.json, tokenizer files):
/// `full` runs as trained, `lora` runs with W + (alpha/r)·B·A merged into every targeted weight. It loads
/// in transformers (`AutoModelForCausalLM.from_pretrained(DIR)`) and as `ftexp --checkpoint DIR`. Or,
/// with --format peft, a LoRA run's adapter (`PeftModel.from_pretrained(base, DIR)`); or, with
/// --format gguf, the merged model as one GGUF file for llama.cpp, Ollama and LM Studio.
#[derive(clap::Args)]
pub struct Args {
    /// The run directory, experiments/<name>/v<N>.
    run_dir: PathBuf,
    /// The checkpoint of this step instead of the final one; `best`: the run's best checkpoint (train.save_best).
    #[arg(long)]
    step: Option<Pick>,
    /// hf: a hub checkpoint with the method merged in; peft: a LoRA run's adapter for peft; gguf: the
    /// merged model as a GGUF file for llama.cpp.
    #[arg(long, default_value = "hf", value_parser = parse_format)]
    format: Format,
    /// With --format gguf: the format of the matrices, f16 (default), bf16 or q8_0.
    #[arg(long)]
    quant: Option<String>,
    /// The directory (or, with --format gguf, the file) to create; it must not exist yet.
    #[arg(long)]
    out: PathBuf,
    /// The number format of the weights: bf16, fp16 or fp32. Default: the base checkpoint's own.
    #[arg(long, value_parser = |s: &str| s.parse::<ExportDtype>())]
    dtype: Option<ExportDtype>,
    /// The largest safetensors file, in bytes (suffixes KB, MB, GB): larger models are sharded.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    max_shard_size: u64,
    #[command(flatten)]
    base: BaseArg,
    #[command(flatten)]
    json: JsonArg,
}

/// `--format`: the library's export formats, and gguf.
#[derive(Clone, Copy)]
enum Format {
    Hub(ExportFormat),
    Gguf,
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "gguf" => Ok(Format::Gguf),
        other => other.parse::<ExportFormat>().map(Format::Hub).map_err(|_| {
            let names: Vec<String> = ExportFormat::NAMES.iter().chain(&["gguf"]).map(|n| format!("\"{n}\"")).collect();
            format!("is \"{other}\"; use one of {}", names.join(", "))
        }),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let upper = s.trim().to_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => upper.split_at(i),
        None => (upper.as_str(), ""),
    };
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("\"{s}\" is not a size like 5GB, 500MB or 1000000")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("\"{s}\" is not a size like 5GB, 500MB or 1000000"))
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    let format = match a.format {
        Format::Gguf => return exec_gguf(a),
        Format::Hub(f) => f,
    };
    if a.quant.is_some() {
        return Err(Problems::one(format!("--quant is for --format gguf; --format {format} takes --dtype")).into());
    }
    let req = ExportRequest {
        format,
        step: a.step,
        dtype: a.dtype,
        max_shard_bytes: a.max_shard_size,
        allow_changed_base: a.base.allow_changed_base,
    };
    let done = export_run(&a.run_dir, &a.out, &req)?;
    if a.json.json {
        return print_json(&done);
    }
    println!("{} → {} ({} export, {})", a.run_dir.display(), done.out.display(), done.format, done.dtype);
    Ok(())
}

fn exec_gguf(a: Args) -> anyhow::Result<()> {
    if a.dtype.is_some() {
        return Err(Problems::one("--dtype is for --format hf; --format gguf takes --quant f16, bf16 or q8_0").into());
    }
    let req = GgufRequest {
        step: a.step,
        quant: a.quant.unwrap_or_else(|| "f16".into()),
        allow_changed_base: a.base.allow_changed_base,
    };
    let done = export_gguf(&a.run_dir, &a.out, &req)?;
    if a.json.json {
        return print_json(&done);
    }
    println!("{} → {} (gguf export, {}, {})", a.run_dir.display(), done.out.display(), done.architecture, done.quant);
    Ok(())
}
