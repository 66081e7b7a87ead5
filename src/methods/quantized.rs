//! A quantized base (`model.quantize`), loaded one weight at a time, and with `model.quantize_cache`
//! its quantized weights kept next to the base (in `.ftexp-quantized/<scheme>-<dtype>/`), keyed by
//! the SHA-256 of the base's `config.json` and weight files, so later runs read them instead of
//! quantizing again.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::Problems;
use crate::experiment::provenance::{self, FileRecord};
use crate::model::quant::{Quantized, Scheme};
use crate::model::spec::ModelSpec;
use crate::model::{self, gpt, layout, Gpt, Held};

/// The cache's layout version: a cache of another version is refused, not misread.
const VERSION: u32 = 1;
const WEIGHTS: &str = "weights.safetensors";
const KEY: &str = "key.json";

/// What a cache was made from.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Key {
    version: u32,
    scheme: String,
    dtype: String,
    /// The base's `config.json` and weight files when the cache was made.
    files: BTreeMap<String, FileRecord>,
}

fn scheme_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Nf4 => "nf4",
        Scheme::Nf4Dq => "nf4-dq",
        Scheme::Int8 => "int8",
    }
}

/// Where the cache of `base` for `scheme` and compute `kind` lives.
pub fn cache_dir(base: &Path, scheme: Scheme, kind: Kind) -> PathBuf {
    base.join(".ftexp-quantized").join(format!("{}-{}", scheme_name(scheme), dtype_name(kind)))
}

fn dtype_name(kind: Kind) -> String {
    format!("{kind:?}").to_lowercase()
}

fn base_files(base: &Path) -> BTreeMap<String, FileRecord> {
    provenance::record_where(base, |n| n == "config.json" || n.ends_with(".safetensors"))
}

/// The base in `dir` with its blocks' linear weights quantized by `scheme`: read from the cache when
/// `cache` is on and one was made from these very files, else quantized as they load (and, with
/// `cache`, stored for the next run; a base directory that cannot be written is said, not an error).
pub fn load(
    dir: &Path,
    spec: ModelSpec,
    kind: Kind,
    device: Device,
    scheme: Scheme,
    cache: bool,
) -> Result<Gpt, Problems> {
    let at = cache_dir(dir, scheme, kind);
    if !cache {
        return model::load_spec(dir, spec, kind, device, Held::Quantize(scheme));
    }
    if at.exists() {
        let mut stored = read(&at, dir, &spec, kind, device, scheme)?;
        let model = model::load_spec(dir, spec, kind, device, Held::Stored(&mut stored))?;
        return Ok(model);
    }
    let model = model::load_spec(dir, spec, kind, device, Held::Quantize(scheme))?;
    if let Err(why) = write(&at, dir, &model, scheme, kind) {
        eprintln!("warning: the quantized base was not cached ({why}); the next run quantizes it again");
    }
    Ok(model)
}

/// The cached weights of the base in `base`, checked to be made from its current files.
fn read(
    at: &Path,
    base: &Path,
    spec: &ModelSpec,
    kind: Kind,
    device: Device,
    scheme: Scheme,
) -> Result<HashMap<String, Quantized>, Problems> {
    let fix = format!("delete {} to quantize the base again, or set model.quantize_cache = false", at.display());
    let bad = |what: String| Problems::one(format!("{}: {what}; {fix}", at.display()));
    let text = std::fs::read_to_string(at.join(KEY)).map_err(|e| bad(format!("cannot read {KEY}: {e}")))?;
    let key: Key =
        serde_json::from_str(&text).map_err(|e| bad(format!("{KEY} is not a quantized cache's key: {e}")))?;
    let wanted = (VERSION, scheme_name(scheme).to_string(), dtype_name(kind));
    if (key.version, key.scheme.clone(), key.dtype.clone()) != wanted {
        return Err(bad(format!(
            "holds {} {} weights of layout {}, not {} {} of layout {VERSION}",
            key.scheme, key.dtype, key.version, wanted.1, wanted.2
        )));
    }
    if let Some((path, how)) = provenance::first_change(base, &key.files) {
        return Err(bad(format!("was made from a different base: {} {how}", path.display())));
    }
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(at.join(WEIGHTS))
        .map_err(|e| bad(format!("cannot read {WEIGHTS}: {e}")))?
        .into_iter()
        .collect();
    let mut out = HashMap::new();
    for t in layout::tensors(spec, None).into_iter().filter(|t| gpt::quantizable(t.at)) {
        let name = t.name();
        let q = Quantized::from_stored(
            scheme,
            |part| tensors.get(&format!("{name}.{part}")).map(Tensor::shallow_clone),
            &t.shape,
            kind,
            device,
        )
        .map_err(|why| bad(format!("{WEIGHTS}: {name}: {why}")))?;
        out.insert(name, q);
    }
    Ok(out)
}

/// Stores `model`'s quantized weights at `at`, whole or not at all (written beside it, then renamed).
fn write(at: &Path, base: &Path, model: &Gpt, scheme: Scheme, kind: Kind) -> Result<(), String> {
    let mut tensors = Vec::new();
    for t in layout::tensors(&model.spec, None).into_iter().filter(|t| gpt::quantizable(t.at)) {
        let layout::Module::Linear(i, proj) = t.at.module else { continue };
        let Some(linear) = model.blocks[i].linear_ref(proj) else { continue };
        let crate::model::Weight::Quantized(q) = &linear.weight else {
            return Err(format!("{} is not quantized", t.name()));
        };
        for (part, tensor) in q.stored() {
            tensors.push((format!("{}.{part}", t.name()), tensor.to_device(Device::Cpu)));
        }
    }
    let key =
        Key { version: VERSION, scheme: scheme_name(scheme).into(), dtype: dtype_name(kind), files: base_files(base) };
    let parent = at.parent().expect("the cache lives in a folder");
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| {
        std::fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        Tensor::write_safetensors(&tensors, tmp.join(WEIGHTS)).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let text = serde_json::to_string_pretty(&key).expect("a key serializes");
        std::fs::write(tmp.join(KEY), text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, at).map_err(|e| format!("{}: {e}", at.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}
