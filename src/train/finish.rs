//! The end of a completed run (all its steps, or stopped early): the final val and test losses, the
//! last plot, the `final` checkpoint, the exported model of a `full` run, and the results in run.json.

use super::trainer::Trainer;
use super::{peak_rss_mib, split_loss, Progress};
use crate::config::{Config, ExportFormat, MethodKind};
use crate::data::Prepared;
use crate::error::Problems;
use crate::experiment::metrics::Metrics;
use crate::experiment::{plot, Experiment, Results};
use crate::methods::export::{export, Source, DEFAULT_SHARD_BYTES};

/// The title of a run's loss plot.
pub fn title(exp: &Experiment, c: &Config) -> String {
    format!("{} v{} · {}", exp.name, exp.version, c.method.kind)
}

pub(super) fn finish(
    c: &Config,
    trainer: &mut Trainer,
    writer: Option<(&Experiment, &mut Metrics)>,
    data: &Prepared,
    (progress, stopped_early): (&Progress, bool),
) -> Result<(), Problems> {
    let final_val = split_loss(trainer, data.split("val"), None)?;
    let final_test = split_loss(trainer, data.split("test"), None)?;
    super::best::after_final(c, trainer, writer.as_ref().map(|w| w.0), final_val)?;
    let Some((exp, metrics)) = writer else { return Ok(()) };
    let last_row = metrics.rows.last().cloned();
    if let (Some(v), Some(mut row)) = (final_val, last_row.clone()) {
        row.val_loss = Some(v);
        metrics.push(row)?;
    }
    plot::loss_png(&exp.dir.join("loss.png"), &title(exp, c), &metrics.rows)?;
    let final_dir = trainer.save(&exp.dir, "final")?;
    // `full` runs always leave a hub checkpoint (so they can be the base of another run).
    let format = c.export.format.or((c.method.kind == MethodKind::Full).then_some(ExportFormat::Hf));
    if let Some(format) = format {
        let out = final_dir.join(if format == ExportFormat::Hf { "model" } else { "peft" });
        let built = &mut trainer.built;
        let src = Source {
            config: c,
            base_dir: &built.base_dir,
            tokenizer_dir: &built.tokenizer_dir,
            config_json: &built.config_json,
        };
        export(&mut built.model, &src, format, c.export.dtype, DEFAULT_SHARD_BYTES, &out)?;
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
        stopped_early,
        best_step: state.best_step,
        best_val_loss: state.best_val_loss,
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
