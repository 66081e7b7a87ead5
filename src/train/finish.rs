//! The end of a completed run: the final val and test losses, the last plot, the `final` checkpoint,
//! the exported model of a `full` run, and the results in run.json.
use std::path::Path;

use tch::Tensor;

use super::trainer::Trainer;
use super::{peak_rss_mib, Progress};
use crate::config::{Config, MethodKind};
use crate::data::Prepared;
use crate::error::Problems;
use crate::eval::mean_loss;
use crate::experiment::metrics::Metrics;
use crate::experiment::{plot, Experiment, Results};
use crate::methods::Built;

/// The title of a run's loss plot.
pub fn title(exp: &Experiment, c: &Config) -> String {
    format!("{} v{} · {}", exp.name, exp.version, c.method.kind)
}

pub(super) fn finish(
    c: &Config,
    trainer: &mut Trainer,
    exp: &Experiment,
    data: &Prepared,
    metrics: &mut Metrics,
    progress: &Progress,
) -> Result<(), Problems> {
    let micro = (c.train.micro_batch_size as usize).max(1);
    let final_val = mean_loss(trainer.model(), data.split("val"), micro, None);
    let final_test = mean_loss(trainer.model(), data.split("test"), micro, None);
    let last_row = metrics.rows.last().cloned();
    if let (Some(v), Some(mut row)) = (final_val, last_row.clone()) {
        row.val_loss = Some(v);
        metrics.push(row)?;
    }
    plot::loss_png(&exp.dir.join("loss.png"), &title(exp, c), &metrics.rows)?;
    let final_dir = trainer.save(&exp.dir, "final")?;
    if c.method.kind == MethodKind::Full {
        export_model(&mut trainer.built, &final_dir.join("model"))?;
    }
    let state = &trainer.state;
    let results = Results {
        steps: state.step,
        final_train_loss: last_row.and_then(|r| r.train_loss),
        final_val_loss: final_val,
        val_perplexity: final_val.map(f64::exp),
        test_loss: final_test,
        test_perplexity: final_test.map(f64::exp),
        tokens: state.tokens,
        tokens_per_s: progress.tokens_per_s(state.tokens),
        peak_rss_mib: peak_rss_mib(),
        train_seconds: state.elapsed_s,
    };
    println!(
        "done: {} — val loss {} test loss {} ({:.0} tokens/s)",
        exp.dir.display(),
        final_val.map_or("-".into(), |v| format!("{v:.4}")),
        final_test.map_or("-".into(), |v| format!("{v:.4}")),
        results.tokens_per_s
    );
    exp.update(|i| i.results = Some(results))
}

/// Writes the trained model as a hub-layout checkpoint (config.json, model.safetensors, tokenizer
/// files), usable as `--checkpoint` and as `model.checkpoint = "experiment:<name>"`.
fn export_model(built: &mut Built, dir: &Path) -> Result<(), Problems> {
    let fail = |e: String| Problems::one(format!("{}: cannot export the model: {e}", dir.display()));
    let tmp = dir.with_file_name(".model.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail(e.to_string()))?;
    let weights: Vec<(String, Tensor)> =
        built.model.hub_weights().into_iter().map(|(n, t)| (n, t.detach().contiguous())).collect();
    Tensor::write_safetensors(&weights, tmp.join("model.safetensors")).map_err(|e| fail(e.to_string()))?;
    let config = serde_json::to_string_pretty(&built.config_json).expect("json");
    std::fs::write(tmp.join("config.json"), config).map_err(|e| fail(e.to_string()))?;
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"] {
        let src = built.tokenizer_dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, tmp.join(name)).map_err(|e| fail(e.to_string()))?;
        }
    }
    std::fs::rename(&tmp, dir).map_err(|e| fail(e.to_string()))
}
