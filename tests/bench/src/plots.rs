//! The report's SVG plots (plotters' SVG backend only, so no font or image libraries are needed).
//!
//! Bar charts of per-packet cost, connection rates, CPU per connection and forwarding rates by
//! CPUs, line charts of cost growth.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::packet::Sweep;

/// A horizontal bar per `(label, value)`, the value printed at its end.
pub fn bar_chart(path: &Path, title: &str, bars: &[(String, f64)]) -> Result<()> {
    bar_chart_digits(path, title, bars, 0)
}

/// [`bar_chart`] with `digits` decimals on the printed values (rates in Mpps need them).
pub fn bar_chart_digits(
    path: &Path,
    title: &str,
    bars: &[(String, f64)],
    digits: usize,
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 60 + 40 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..max, (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (*v, SegmentValue::Exact(i + 1)),
            ],
            BLUE.mix(0.6).filled(),
        )
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        Text::new(
            format!("{v:.digits$}"),
            (*v, SegmentValue::CenterOf(i)),
            ("sans-serif", 14),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// A sweep's points, evenly spaced by index (the x values grow geometrically), labelled with x.
pub fn line_chart(path: &Path, title: &str, x_label: &str, s: &Sweep) -> Result<()> {
    let root = SVGBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = s.points.iter().map(|p| p.ns_per_packet).fold(1.0, f64::max) * 1.3;
    let n = s.points.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..n.saturating_sub(1).max(1), 0.0..max)?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|i| {
            s.points
                .get(*i)
                .map(|p| p.x.to_string())
                .unwrap_or_default()
        })
        .x_desc(x_label)
        .y_desc("ns per packet")
        .draw()?;
    chart.draw_series(LineSeries::new(
        s.points
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.ns_per_packet)),
        &BLUE,
    ))?;
    chart.draw_series(
        s.points
            .iter()
            .enumerate()
            .map(|(i, p)| Circle::new((i, p.ns_per_packet), 4, BLUE.filled())),
    )?;
    root.present()?;
    Ok(())
}
