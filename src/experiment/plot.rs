//! Loss plots: `loss.png` of a run (train and val loss against the optimizer step), and the shared
//! drawing set-up `ftexp report` uses too.
use std::path::Path;
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::metrics::Row;
use crate::error::Problems;

static FONT: Once = Once::new();
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

pub type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
pub type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws into `path` through a temporary file, with the bundled font registered.
pub fn write_png(path: &Path, draw: impl FnOnce(&Path) -> DrawResult) -> Result<(), Problems> {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT_BYTES);
    });
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("plot.png");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()));
    if let Err(e) = draw(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Problems::one(format!("{}: cannot draw: {e}", path.display())));
    }
    std::fs::rename(&tmp, path).map_err(|e| Problems::io(format!("{}: cannot write: {e}", path.display())))
}

/// Whether a loss can be drawn: finite and within ±1e6 (a cross entropy never gets near; a tampered or
/// diverged value would stretch the axis until drawing it never ends).
pub fn plottable(loss: f64) -> bool {
    loss.is_finite() && loss.abs() <= 1e6
}

/// Axes for loss against the optimizer step, fitted to `points`.
pub fn loss_axes<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    points: &[(f64, f64)],
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let max_step = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = points
        .iter()
        .map(|p| p.1)
        .filter(|v| plottable(*v))
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_step, (lo - pad).max(0.0)..hi + pad)?;
    chart.configure_mesh().x_desc("optimizer step").y_desc(y_desc).label_style(("sans-serif", 15)).draw()?;
    Ok(chart)
}

/// Draws the loss curves of `rows` into `path`.
pub fn loss_png(path: &Path, title: &str, rows: &[Row]) -> Result<(), Problems> {
    write_png(path, |tmp| draw(tmp, title, rows))
}

fn draw(path: &Path, title: &str, rows: &[Row]) -> DrawResult {
    let train: Vec<(f64, f64)> =
        rows.iter().filter_map(|r| Some((r.step as f64, r.train_loss.filter(|v| plottable(*v))?))).collect();
    let val: Vec<(f64, f64)> =
        rows.iter().filter_map(|r| Some((r.step as f64, r.val_loss.filter(|v| plottable(*v))?))).collect();
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let mut chart = loss_axes(&root, title, "loss (cross entropy)", &[&train[..], &val[..]].concat())?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))?
        .label("train loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val.clone(), RED.stroke_width(2)))?
        .label("val loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}
