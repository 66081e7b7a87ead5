//! Packing (`data.packing`): samples share rows with positions restarting per sample and attention
//! confined to each sample, so logits, per-sample losses and a run's loss curve are as unpacked.
use ftexp::data::batches::{make, make_packed, pack};
use ftexp::data::prepare::Sample;
use ftexp::eval::supervised_loss;
use ftexp::model::load;
use tch::{Device, Kind, Tensor};

use crate::common::{doubling_project, fixtures, ftexp, stderr};

/// Samples of mixed lengths (3 to 40 tokens) from the fixture vocabulary, the first few tokens masked.
fn samples() -> Vec<Sample> {
    (0..9u32)
        .map(|n| {
            let len = [3, 40, 7, 12, 25, 5, 18, 9, 31][n as usize];
            crate::common::sample((0..len).map(|i| (7 * n + 13 * i + 5) % 440 + 1).collect(), (n % 3) as usize)
        })
        .collect()
}

/// The largest difference between `a` and `b`, relative to the size of `b`'s values (at least 1):
/// the same maths on rows of other widths runs through other matrix kernels, which round differently.
fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0)
}

#[test]
fn a_packed_micro_batch_gives_the_logits_and_per_sample_losses_of_the_unpacked_samples() {
    let families = [
        "llama",
        "qwen2",
        "gpt-neox",
        "falcon-7b-style",
        "mistral",
        "qwen2-sliding",
        "qwen3",
        "gemma2",
        "gemma3",
        "phi3",
        "olmo2",
    ];
    for family in families {
        let model = load(&fixtures().join("models").join(family), Kind::Float, Device::Cpu).unwrap();
        let samples = samples();
        let refs: Vec<&Sample> = samples.iter().collect();
        let rows = pack(&refs, 64);
        assert!(
            rows.len() < samples.len() && rows.iter().all(|r| r.iter().map(|s| s.input_ids.len()).sum::<usize>() <= 64)
        );
        assert_eq!(rows, pack(&refs, 64), "packing is deterministic");
        let packed = make_packed(&rows, Device::Cpu);
        let per_token = tch::no_grad(|| supervised_loss(&model, &packed, tch::Reduction::None));
        // The packed batch's supervised positions follow the rows' samples in order.
        let order: Vec<&Sample> = rows.iter().flatten().copied().collect();
        let mut at = 0;
        for s in order {
            let alone = make(&[s], Device::Cpu);
            let n = alone.supervised;
            let want = tch::no_grad(|| supervised_loss(&model, &alone, tch::Reduction::None));
            let got = per_token.narrow(0, at, n);
            let d = max_difference(&got, &want);
            assert!(d < 1e-5, "{family}: sample of {} tokens: {d}", s.input_ids.len());
            at += n;
        }
        assert_eq!(at, per_token.size()[0]);
        // Logits at every real position equal those of the sample alone.
        let hidden = tch::no_grad(|| {
            let p = packed.packed.as_ref().unwrap();
            model.logits(&model.hidden_packed(&packed.inputs, &p.positions, &p.segments))
        });
        let s = rows[0][1];
        let offset = rows[0][0].input_ids.len() as i64;
        let ids: Vec<i64> = s.input_ids.iter().map(|&i| i as i64).collect();
        let alone = tch::no_grad(|| model.forward(&Tensor::from_slice(&ids).unsqueeze(0), None));
        let len = ids.len() as i64;
        assert!(max_difference(&hidden.get(0).narrow(0, offset, len), &alone.get(0)) < 1e-5, "{family}");
    }
}

/// A packed run and an unpacked run of the same samples per step have the same loss curve.
#[test]
fn a_packed_run_has_the_loss_curve_of_the_unpacked_run() {
    let config = format!(
        "name = \"p\"\nseed = 3\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"plain\"\nmax_seq_length = 64\n[method]\nkind = \"lora\"\nlora_dropout = 0.0\n[train]\nlearning_rate = 1e-2\nmax_steps = 6\nbatch_size = 8\nmicro_batch_size = 2\nwarmup_iters = 1\neval_interval = 3\neval_iters = 1\n",
        fixtures().join("models/llama").display()
    );
    let p = doubling_project(&config);
    let losses = |packing: &str| -> Vec<f64> {
        let out = ftexp(p.path(), &["run", "exp.toml", "--set", &format!("data.packing={packing}")], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let runs = std::fs::read_dir(p.path().join("experiments/p")).unwrap().count();
        let csv = std::fs::read_to_string(p.path().join(format!("experiments/p/v{runs}/metrics.csv"))).unwrap();
        let mut lines = csv.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = head.iter().position(|h| *h == "train_loss").unwrap();
        lines.filter_map(|l| l.split(',').nth(col)?.parse().ok()).collect()
    };
    let (plain, packed) = (losses("false"), losses("true"));
    assert_eq!(plain.len(), 6);
    for (a, b) in plain.iter().zip(&packed) {
        assert!((a - b).abs() < 1e-4, "{plain:?} vs {packed:?}");
    }
    let out = ftexp(p.path(), &["prepare", "exp.toml", "--set", "data.packing=true"], &[]);
    assert!(crate::common::stdout(&out).contains("packing: train samples fill rows of 64 tokens to "));
}
