//! Activation checkpointing and the chunked LM head: the staged backward pass gives the loss and the
//! gradients of the plain one, for every method, with packing and LoRA dropout, and a run with
//! checkpointing the losses of a run without.
use ftexp::config::resolve_with_env;
use ftexp::data::batches::{make, make_packed, pack, Batch};
use ftexp::data::prepare::Sample;
use ftexp::eval::Objective;
use ftexp::methods::{build, Built};
use ftexp::model::lora::row_seed;
use ftexp::model::staged::Staging;
use tch::{Device, Tensor};

use crate::common::{doubling_project, fixtures, ftexp, stderr, tree};

/// Samples of mixed lengths from the fixture vocabulary, the first tokens of each masked.
fn samples() -> Vec<Sample> {
    (0..6u32)
        .map(|n| {
            let len = [9, 30, 14, 22, 5, 17][n as usize];
            crate::common::sample((0..len).map(|i| (11 * n + 7 * i + 3) % 440 + 1).collect(), 2 + (n % 3) as usize)
        })
        .collect()
}

/// The llama fixture with `kind` (LoRA everywhere, dropout 0.1), its trainable tensors moved off
/// their initial values so that every gradient is non-trivial.
fn built(family: &str, kind: &str) -> Built {
    let dir = tree(&[("x.toml", "[model]\ncheckpoint = \"x\"\ndevice = \"cpu\"\n[data]\npath = \"d.json\"\n")]);
    let sets: Vec<String> = [
        &format!("method.kind={kind}"),
        "method.lora_dropout=0.1",
        "method.lora_mlp=true",
        "method.lora_head=true",
        "method.adapter_start_layer=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut c = resolve_with_env(&dir.path().join("x.toml"), &sets, std::iter::empty()).unwrap().config;
    c.model.checkpoint = fixtures().join("models").join(family).display().to_string();
    let built = build(&c).unwrap();
    tch::manual_seed(3);
    tch::no_grad(|| {
        for t in &built.trainable {
            let mut x = t.tensor.shallow_clone();
            let _ = x.f_add_(&(Tensor::randn_like(&x) * 0.05)).unwrap();
        }
    });
    built
}

/// The loss and every trainable gradient of one backward pass of `batch` done as `how` says.
fn gradients(b: &mut Built, batch: &Batch, how: Option<Staging>) -> (f64, Vec<Tensor>) {
    for t in &b.trainable {
        let mut g = t.tensor.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    b.model.training = true;
    b.model.dropout_seeds = (0..batch.inputs.size()[0] as u64).map(|n| row_seed(5, n)).collect();
    let loss = match how {
        None => Objective::Sft.backward(&b.model, batch, false, ftexp::model::staged::HEAD_CHUNK_BYTES, 0.1),
        Some(staging) => Objective::Sft.staged_backward(&b.model, batch, staging, 0.1),
    };
    (loss.double_value(&[]), b.trainable.iter().map(|t| t.tensor.grad().copy()).collect())
}

fn relative(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

#[test]
fn checkpointed_and_chunked_backward_passes_give_the_plain_loss_and_gradients() {
    let samples = samples();
    let refs: Vec<&Sample> = samples.iter().collect();
    let padded = make(&refs, Device::Cpu);
    let packed = make_packed(&pack(&refs, 64), Device::Cpu);
    for family in ["llama", "gpt-neox", "mistral", "gemma2", "olmo2"] {
        for kind in ["full", "lora", "adapter", "adapter_v2"] {
            let mut b = built(family, kind);
            for (layout, batch) in [("padded", &padded), ("packed", &packed)] {
                let (want_loss, want) = gradients(&mut b, batch, None);
                for staging in [
                    Staging { checkpoint: true, head_chunk: None },
                    Staging { checkpoint: false, head_chunk: Some(7) },
                    Staging { checkpoint: true, head_chunk: Some(1) },
                ] {
                    let (loss, got) = gradients(&mut b, batch, Some(staging));
                    let what = format!("{family} {kind} {layout} {staging:?}");
                    assert!((loss - want_loss).abs() <= 1e-6 * want_loss.abs(), "{what}: loss {loss} vs {want_loss}");
                    // Chunks add the head's gradients up in another order: rounding, 1e-6 at most here.
                    let tolerance = if staging.head_chunk.is_some() { 1e-5 } else { 1e-6 };
                    for ((t, g), w) in b.trainable.iter().zip(&got).zip(&want) {
                        let d = relative(g, w);
                        assert!(d <= tolerance, "{what}: gradient of {} differs by {d:e}", t.name);
                    }
                }
            }
        }
    }
}

#[test]
fn a_run_with_activation_checkpointing_has_the_losses_of_one_without() {
    let config = format!(
        "name = \"t\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\npacking = true\n[method]\nkind = \"lora\"\nlora_dropout = 0.1\n[train]\nlearning_rate = 0.01\nmax_steps = 6\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 2\neval_interval = 3\neval_iters = 2\nsave_interval = 100\n",
        fixtures().join("models/llama").display()
    );
    let p = doubling_project(&config);
    let plain = ftexp(p.path(), &["run", "exp.toml"], &[("OMP_NUM_THREADS", "1")]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let set = ["run", "exp.toml", "--set", "train.activation_checkpointing=true"];
    let checkpointed = ftexp(p.path(), &set, &[("OMP_NUM_THREADS", "1")]);
    assert!(checkpointed.status.success(), "{}", stderr(&checkpointed));
    let losses = |v: u32| -> Vec<f64> {
        let text = std::fs::read_to_string(p.path().join(format!("experiments/t/v{v}/metrics.csv"))).unwrap();
        text.lines().skip(1).flat_map(|l| l.split(',').nth(5).and_then(|x| x.parse().ok())).collect()
    };
    let (a, b) = (losses(1), losses(2));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "{x} vs {y}");
    }
    let info = crate::common::json_file(&p.path().join("experiments/t/v2/run.json"));
    assert_eq!(info["plan"]["strategies"]["activation_checkpointing"], true);
}
