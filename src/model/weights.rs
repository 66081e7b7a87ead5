//! Reading a checkpoint's safetensors (one file, or shards with an index), memory-mapped, checked
//! name by name and shape by shape against the architecture. Pickle `.bin` files are never read.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::layout::hub_tensors;
use super::spec::ModelSpec;
use crate::error::Problems;

/// The safetensors files of a checkpoint directory.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, Problems> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| Problems::one(format!("{}: cannot read: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Problems::one(format!("{}: invalid JSON: {e}", index.display())))?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| Problems::one(format!("{}: no `weight_map` object", index.display())))?;
        let names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        // Shards are files of this directory: a name with a path in it could point anywhere.
        if let Some(bad) = names.iter().find(|n| n.is_empty() || n.contains(['/', '\\']) || **n == ".." || **n == ".") {
            return Err(Problems::one(format!(
                "{}: names the shard `{bad}`, which is not a file name in {}; an index lists only file names",
                index.display(),
                dir.display()
            )));
        }
        let mut files: Vec<PathBuf> = names.iter().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.is_file() {
                return Err(Problems::one(format!(
                    "{}: names shard {} which is missing; download the checkpoint again",
                    index.display(),
                    f.display()
                )));
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let pickles = ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.00.pth"];
    if pickles.iter().any(|p| dir.join(p).exists()) {
        return Err(Problems::one(format!(
            "{}: has only PyTorch pickle weights (.bin/.pt), which ftexp never loads because unpickling can run code; use a revision of the model that has .safetensors files, or convert it with `transformers` (save_pretrained(..., safe_serialization=True))",
            dir.display()
        )));
    }
    Err(Problems::one(format!("{}: no model.safetensors or model.safetensors.index.json found", dir.display())))
}

/// The number format the checkpoint in `dir` stores its weights in (that of its first tensor).
pub fn stored_kind(dir: &Path) -> Option<Kind> {
    let file = weight_files(dir).ok()?.into_iter().next()?;
    let handle = std::fs::File::open(&file).ok()?;
    // SAFETY: read only, as in `load`.
    let mmap = unsafe { memmap2::Mmap::map(&handle) }.ok()?;
    let (_, metadata) = SafeTensors::read_metadata(&mmap).ok()?;
    let dtype = metadata.tensors().values().next()?.dtype;
    kind_of(dtype, "", &file).ok()
}

fn kind_of(dtype: Dtype, name: &str, file: &Path) -> Result<Kind, Problems> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        other => {
            return Err(Problems::one(format!(
                "{}: tensor {name} has dtype {other:?}; only float weights are supported",
                file.display()
            )))
        }
    })
}

/// Tensors a checkpoint may carry besides the weights (buffers older transformers saved).
fn is_ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
        || name.ends_with(".attention.bias")
        || name.ends_with(".attention.masked_bias")
}

/// Every weight of `spec` from `dir` that is `needed` (by hub name), converted to `kind` on `device`, by
/// hub name. The others are checked for their shape, not read.
pub fn load(
    dir: &Path,
    spec: &ModelSpec,
    kind: Kind,
    device: Device,
    needed: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>, Problems> {
    let expected: BTreeMap<String, Vec<i64>> = hub_tensors(spec).into_iter().collect();
    let head = format!("{}.weight", spec.names().head);
    let mut found = HashMap::new();
    let mut problems = Problems::default();
    for file in weight_files(dir)? {
        let handle =
            std::fs::File::open(&file).map_err(|e| Problems::one(format!("{}: cannot open: {e}", file.display())))?;
        // SAFETY: the file is only read; a checkpoint being rewritten while we load it is the user's race.
        let mmap = unsafe { memmap2::Mmap::map(&handle) }
            .map_err(|e| Problems::one(format!("{}: cannot map: {e}", file.display())))?;
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| Problems::one(format!("{}: not a valid safetensors file: {e}", file.display())))?;
        for (name, view) in st.tensors() {
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            match expected.get(&name) {
                None if is_ignorable(&name) => {}
                // Tied checkpoints sometimes store the head anyway: it must equal the embedding, so skip it.
                None if spec.tie_embeddings && name == head => {}
                None => problems.push(format!(
                    "{}: unexpected tensor {name} {shape:?}: it does not belong to a {:?} model with this config.json",
                    file.display(),
                    spec.family
                )),
                Some(want) if *want != shape => problems.push(format!(
                    "{}: tensor {name} has shape {shape:?}, config.json implies {want:?}",
                    file.display()
                )),
                Some(_) if !needed(&name) => {
                    found.insert(name, Tensor::new());
                }
                Some(_) => {
                    let tensor = Tensor::f_from_data_size(view.data(), &shape, kind_of(view.dtype(), &name, &file)?)
                        .map_err(|e| Problems::one(format!("{}: tensor {name}: {e}", file.display())))?;
                    found.insert(name, tensor.to_kind(kind).to_device(device));
                }
            }
        }
    }
    for name in expected.keys().filter(|n| !found.contains_key(*n)) {
        problems.push(format!("{}: tensor {name} is missing from the checkpoint", dir.display()));
    }
    problems.into_result()?;
    Ok(found)
}
