//! `metrics.csv`: one row per logged optimizer step, val_loss filled at evaluation steps.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Problems;

pub const HEADER: &str = "step,epoch,iter,tokens,lr,train_loss,val_loss,tokens_per_s,elapsed_s";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub step: u64,
    pub epoch: f64,
    pub iter: u64,
    pub tokens: u64,
    pub lr: f64,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

pub struct Metrics {
    path: PathBuf,
    pub rows: Vec<Row>,
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

impl Metrics {
    /// A new file with the header, or, when resuming, the rows up to and including `keep_until_step`.
    pub fn open(dir: &Path, keep_until_step: Option<u64>) -> Result<Metrics, Problems> {
        let path = dir.join("metrics.csv");
        let rows = match keep_until_step {
            Some(step) => read(&path)?.into_iter().filter(|r| r.step <= step).collect(),
            None => Vec::new(),
        };
        let m = Metrics { path, rows };
        m.rewrite()?;
        Ok(m)
    }

    fn line(r: &Row) -> String {
        format!(
            "{},{:.4},{},{},{:.6e},{},{},{:.1},{:.3}",
            r.step,
            r.epoch,
            r.iter,
            r.tokens,
            r.lr,
            opt(r.train_loss),
            opt(r.val_loss),
            r.tokens_per_s,
            r.elapsed_s
        )
    }

    fn rewrite(&self) -> Result<(), Problems> {
        let mut text = format!("{HEADER}\n");
        for r in &self.rows {
            text.push_str(&Self::line(r));
            text.push('\n');
        }
        super::write_atomic(&self.path, text.as_bytes())
    }

    /// Appends a row (or fills in val_loss of the row for the same step).
    pub fn push(&mut self, row: Row) -> Result<(), Problems> {
        if let Some(last) = self.rows.last_mut().filter(|r| r.step == row.step) {
            last.val_loss = row.val_loss.or(last.val_loss);
            last.train_loss = row.train_loss.or(last.train_loss);
            return self.rewrite();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Problems::one(format!("{}: cannot append: {e}", self.path.display())))?;
        writeln!(f, "{}", Self::line(&row))
            .map_err(|e| Problems::one(format!("{}: cannot append: {e}", self.path.display())))?;
        self.rows.push(row);
        Ok(())
    }
}

pub fn read(path: &Path) -> Result<Vec<Row>, Problems> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))?;
    reader
        .deserialize()
        .collect::<Result<Vec<Row>, _>>()
        .map_err(|e| Problems::one(format!("{}: invalid metrics row: {e}", path.display())))
}
