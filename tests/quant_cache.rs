//! A quantized base loaded weight by weight, and its cache next to the base (`model.quantize_cache`):
//! written once, read by the next run to the same losses, refused when the base changed.
use ftexp::methods::quantized::cache_dir;
use ftexp::model::quant::{Quantized, Scheme};
use ftexp::model::{self, Held};
use tch::{Device, Kind, Tensor};

use crate::common::{copy_dir, doubling_project, fixtures, ftexp, stderr};

fn project(base: &std::path::Path) -> tempfile::TempDir {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\nquantize = \"nf4-dq\"\nquantize_cache = true\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\n[train]\nlearning_rate = 0.01\nmax_steps = 4\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 1\neval_interval = 2\neval_iters = 1\nsave_interval = 100\n",
        base.display()
    );
    doubling_project(&config)
}

fn metrics(p: &std::path::Path, version: u32) -> String {
    std::fs::read_to_string(p.join(format!("experiments/t/v{version}/metrics.csv"))).unwrap()
}

/// The losses column of a metrics file (its timings differ from run to run).
fn losses(text: &str) -> Vec<String> {
    text.lines().skip(1).map(|l| l.split(',').nth(5).unwrap_or("").to_string()).collect()
}

#[test]
fn a_quantized_base_loads_weight_by_weight_as_the_whole_model_quantized() {
    let dir = fixtures().join("models/llama");
    let spec = ftexp::model::spec::ModelSpec::from_file(&dir.join("config.json")).unwrap();
    let loaded = model::load_spec(&dir, spec, Kind::Float, Device::Cpu, Held::Quantize(Scheme::Nf4)).unwrap();
    let mut whole = model::load(&dir, Kind::Float, Device::Cpu).unwrap();
    let dense = whole.blocks[1].mlp.down.weight.to_dense();
    whole.quantize(Scheme::Nf4);
    let expected = Quantized::new(&dense, Scheme::Nf4);
    let ftexp::model::Weight::Quantized(q) = &loaded.blocks[1].mlp.down.weight else { panic!("not quantized") };
    assert!(q.codes.equal(&expected.codes), "the same codes as quantizing the loaded weight");
    let ids = Tensor::from_slice(&[1i64, 5, 9, 2]).view([1, 4]);
    let (a, b) = (loaded.forward(&ids, None), whole.forward(&ids, None));
    assert!((a - b).abs().max().double_value(&[]) == 0.0, "the same logits");
}

#[test]
fn the_quantized_cache_is_written_once_read_by_the_next_run_and_refused_for_another_base() {
    let bases = tempfile::tempdir().unwrap();
    let base = bases.path().join("llama");
    copy_dir(&fixtures().join("models/llama"), &base);
    let p = project(&base);
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = cache_dir(&base, Scheme::Nf4Dq, Kind::Float);
    assert!(cache.join("weights.safetensors").is_file() && cache.join("key.json").is_file(), "{}", cache.display());
    let leftovers: Vec<_> =
        std::fs::read_dir(cache.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "nothing but the cache: {leftovers:?}");
    // The next run reads the cache (the dense linear weights are never read) and trains the same.
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(losses(&metrics(p.path(), 1)), losses(&metrics(p.path(), 2)));
    // A cache is only ever read for the files it was made from.
    let shard = base.join("model-00002-of-00005.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("was made from a different base") && said.contains("model-00002-of-00005.safetensors"),
        "{said}"
    );
    assert!(said.contains("delete") && said.lines().count() <= 2, "{said}");
    assert!(!p.path().join("experiments/t/v3/metrics.csv").exists(), "no run written");
    // A cache of another layout is refused, not misread.
    std::fs::write(cache.join("key.json"), "{\"version\": 9}").unwrap();
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("key.json is not a quantized cache's key"), "{}", stderr(&out));
    // Deleted, it is made again.
    std::fs::remove_dir_all(&cache).unwrap();
    let out = ftexp(p.path(), &["run", "exp.toml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cache.join("weights.safetensors").is_file());
}
