//! The XEMEM time-to-availability plot: time against size, log-log, as SVG.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// Line colours, the first (ours) the most prominent.
const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(31, 119, 180),
    RGBColor(127, 127, 127),
    RGBColor(255, 127, 14),
];

/// One line of the plot: a name and one time (µs) per size.
pub struct Series<'a> {
    pub name: &'a str,
    pub micros: Vec<f64>,
}

/// "4 KiB", "16 MiB", "1 GiB".
pub fn fmt_size(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.0} {}", UNITS[unit])
}

fn fmt_micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.0} ms", us / 1e3)
    } else if us >= 1.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us} µs")
    }
}

/// Draw `series` against `sizes` (bytes), both axes logarithmic.
pub fn tta_svg(path: &Path, title: &str, sizes: &[usize], series: &[Series]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", path.display());
    let xs: Vec<f64> = sizes.iter().map(|&s| s as f64).collect();
    let (xmin, xmax) = (xs[0] / 1.5, xs[xs.len() - 1] * 1.5);
    let all = series.iter().flat_map(|s| s.micros.iter().copied());
    let ymin = all.clone().fold(f64::INFINITY, f64::min).max(1e-3) / 2.0;
    let ymax = all.fold(0.0, f64::max) * 2.0;
    // Decades, for the y ticks: 0.01 µs .. 10 s.
    let decades: Vec<f64> = (-2..=7)
        .map(|e| 10f64.powi(e))
        .filter(|v| (ymin..=ymax).contains(v))
        .collect();

    let root = SVGBackend::new(path, (960, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (xmin..xmax).log_scale().with_key_points(xs.clone()),
            (ymin..ymax).log_scale().with_key_points(decades),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("segment size")
        .y_desc("time to availability (median)")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|v| fmt_size(*v))
        .y_label_formatter(&|v| fmt_micros(*v))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let width = if i == 0 { 3 } else { 2 };
        let points: Vec<(f64, f64)> = xs.iter().copied().zip(s.micros.iter().copied()).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
            .map_err(|e| err(&e))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .margin(12)
        .legend_area_size(36)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(fmt_size(4096.0), "4 KiB");
        assert_eq!(fmt_size((1u64 << 30) as f64), "1 GiB");
        assert_eq!(fmt_size(512.0), "512 B");
    }

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        let series = [
            Series {
                name: "a",
                micros: vec![1.0, 10.0, 1000.0],
            },
            Series {
                name: "b",
                micros: vec![2.0, 20.0, 3000.0],
            },
        ];
        tta_svg(&path, "t", &[4096, 1 << 20, 1 << 30], &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("1 GiB"));
    }
}
