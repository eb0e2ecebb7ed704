//! The in situ report: runs aggregated per (workload, mode, execution,
//! size) into a table, and the in-situ share against problem size as an
//! SVG plot, like the XASM paper's Figures 7 and 8.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::coupling::{Exec, Mode};
use crate::error::{Error, Result};
use crate::run::{median, PairReport, Workload};

/// One line of the report: the medians of the repetitions of one
/// configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The simulation.
    pub workload: Workload,
    /// The coupling mode.
    pub mode: Mode,
    /// None for the isolated run (mode none has no execution mode).
    pub exec: Option<Exec>,
    /// Cells or grid points per dimension.
    pub size: usize,
    /// Time steps per run.
    pub steps: u64,
    /// Runs (repetitions) aggregated into this row.
    pub runs: usize,
    /// Median states made available to the analytics (none, stub: 0).
    pub published: u64,
    /// Median states the analytics analysed (sync: every step).
    pub consumed: u64,
    /// States read torn (checksum mismatch), summed over the runs (not a median); must be 0.
    pub torn: u64,
    /// Median in situ time per step, µs.
    pub per_step_insitu_us: f64,
    /// Median in situ share of the simulation's time-step loop.
    pub share: f64,
    /// Median time-step loop, s.
    pub total_s: f64,
    /// (total / total of the isolated run at this size) - 1, when measured.
    pub overhead: Option<f64>,
}

impl Row {
    /// The row's name in the table and the plot's legend: the mode, and the execution
    /// unless the mode is `none` (e.g. `xasm sync`, `none`).
    pub fn label(&self) -> String {
        match self.exec {
            Some(e) if self.mode != Mode::None => format!("{} {}", self.mode, e),
            _ => self.mode.to_string(),
        }
    }
}

type Key = (Workload, Mode, Option<Exec>, usize, u64);
/// Sort order of a key: workload, mode, execution, size, steps.
type Order = (u8, u8, u8, usize, u64);

/// Aggregate runs (any order, repetitions included) into rows, sorted by
/// workload, mode, execution and size; overheads against the mode-none
/// rows of the same workload, size and steps.
pub fn rows(runs: &[PairReport]) -> Vec<Row> {
    let mut groups: BTreeMap<Order, (Key, Vec<&PairReport>)> = BTreeMap::new();
    for r in runs {
        let s = &r.sim;
        let exec = (s.mode != Mode::None).then_some(s.exec);
        let key = (s.workload, s.mode, exec, s.size, s.steps);
        let order = (
            s.workload as u8,
            s.mode as u8,
            exec.map_or(0, |e| e as u8 + 1),
            s.size,
            s.steps,
        );
        groups
            .entry(order)
            .or_insert_with(|| (key, Vec::new()))
            .1
            .push(r);
    }
    let mut out: Vec<Row> = groups
        .into_values()
        .map(|((workload, mode, exec, size, steps), rs)| {
            let med = |f: &dyn Fn(&PairReport) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let medu = |f: &dyn Fn(&PairReport) -> u64| med(&|r| f(r) as f64).round() as u64;
            Row {
                workload,
                mode,
                exec,
                size,
                steps,
                runs: rs.len(),
                published: medu(&|r| r.sim.publish.published),
                consumed: medu(&|r| r.analytics.as_ref().map_or(0, |a| a.consumed)),
                torn: rs
                    .iter()
                    .map(|r| r.analytics.as_ref().map_or(0, |a| a.torn))
                    .sum(),
                per_step_insitu_us: med(&|r| r.sim.per_step_insitu_us),
                share: med(&|r| r.sim.share),
                total_s: med(&|r| r.sim.total_s),
                overhead: None,
            }
        })
        .collect();
    let isolated: BTreeMap<(u8, usize, u64), f64> = out
        .iter()
        .filter(|r| r.mode == Mode::None)
        .map(|r| ((r.workload as u8, r.size, r.steps), r.total_s))
        .collect();
    for r in &mut out {
        if let Some(base) = isolated.get(&(r.workload as u8, r.size, r.steps)) {
            r.overhead = Some(r.total_s / base - 1.0);
        }
    }
    out
}

/// The rows as a text table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:<14} {:>5} {:>6} {:>9} {:>9} {:>5} {:>14} {:>9} {:>10} {:>9}",
        "workload",
        "mode",
        "size",
        "steps",
        "published",
        "consumed",
        "torn",
        "in situ/step",
        "share",
        "loop (s)",
        "overhead"
    );
    for r in rows {
        let overhead = r
            .overhead
            .map_or_else(|| "-".to_string(), |o| format!("{:+.2}%", o * 100.0));
        let _ = writeln!(
            s,
            "{:<8} {:<14} {:>5} {:>6} {:>9} {:>9} {:>5} {:>11.1} µs {:>8.3}% {:>10.3} {:>9}",
            r.workload.name(),
            r.label(),
            r.size,
            r.steps,
            r.published,
            r.consumed,
            r.torn,
            r.per_step_insitu_us,
            r.share * 100.0,
            r.total_s,
            overhead
        );
    }
    s
}

const COLORS: [RGBColor; 7] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(127, 127, 127),
    RGBColor(140, 86, 75),
];

/// Plot the in situ share (percent of the simulation's run time) against
/// the problem size, one line per mode and execution (the isolated run,
/// which has no in situ time, is left out). The y axis is logarithmic when
/// the shares span more than two decades.
pub fn plot_share(rows: &[Row], path: &Path, title: &str) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::io("plot", path.display().to_string(), e);
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.mode != Mode::None) {
        lines
            .entry(r.label())
            .or_default()
            .push((r.size as f64, (r.share * 100.0).max(1e-4)));
    }
    if lines.is_empty() {
        return Err(err(&"no coupled runs to plot"));
    }
    for pts in lines.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all = || lines.values().flatten();
    let xmin = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = all().map(|p| p.0).fold(0.0, f64::max);
    let ymin = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax = all().map(|p| p.1).fold(0.0, f64::max);
    let (xlo, xhi) = (xmin / 1.15, xmax * 1.15);

    let root = SVGBackend::new(path, (960, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    let sizes: Vec<f64> = {
        let mut v: Vec<f64> = all().map(|p| p.0).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
        v
    };
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("problem size (cells per dimension)")
                .y_desc("time in situ (% of the simulation's run time)")
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 16))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v}"))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, (name, pts)) in lines.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let width = if name.starts_with("xasm") { 3 } else { 2 };
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
                    .map_err(|e| err(&e))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    let x = (xlo..xhi).log_scale().with_key_points(sizes);
    if ymax / ymin > 100.0 {
        let chart = builder
            .build_cartesian_2d(x, (ymin / 2.0..ymax * 2.0).log_scale())
            .map_err(|e| err(&e))?;
        draw!(chart);
    } else {
        let chart = builder
            .build_cartesian_2d(x, 0.0..ymax * 1.15)
            .map_err(|e| err(&e))?;
        draw!(chart);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coupling::PublishStats;
    use crate::run::{AnalyticsKind, AnalyticsReport, SimReport};

    fn pair(mode: Mode, exec: Exec, size: usize, total: f64, insitu: f64) -> PairReport {
        PairReport {
            sim: SimReport {
                workload: Workload::Snap,
                size,
                steps: 10,
                mode,
                exec,
                region: "r".into(),
                state_bytes: 8192,
                setup_s: 0.0,
                compute_s: total - insitu,
                insitu_s: insitu,
                total_s: total,
                per_step_insitu_us: insitu * 1e5,
                per_step_compute_us: 0.0,
                share: insitu / total,
                publish: PublishStats {
                    published: if mode.exchanges() { 10 } else { 0 },
                    ..Default::default()
                },
                checksum: 1.0,
                residual: None,
            },
            analytics: mode.exchanges().then(|| AnalyticsReport {
                kind: AnalyticsKind::Spectrum,
                mode,
                exec: Some(exec),
                region: "r".into(),
                consumed: 9,
                torn: 0,
                first_step: 1,
                last_step: 10,
                skipped: 1,
                analysis_s: 0.0,
                per_version_us: 0.0,
                wall_s: 0.0,
                spectrum: None,
                stream: None,
            }),
        }
    }

    #[test]
    fn rows_take_medians_and_overheads_against_the_isolated_run() {
        let runs = vec![
            pair(Mode::None, Exec::Async, 8, 1.0, 0.0),
            pair(Mode::None, Exec::Sync, 8, 1.2, 0.0),
            pair(Mode::None, Exec::Async, 8, 1.1, 0.0),
            pair(Mode::Xasm, Exec::Async, 8, 1.05, 0.01),
            pair(Mode::Xasm, Exec::Async, 8, 1.155, 0.02),
            pair(Mode::Xasm, Exec::Async, 8, 2.0, 0.03),
            pair(Mode::Spinlock, Exec::Sync, 16, 3.0, 1.0),
        ];
        let rows = rows(&runs);
        assert_eq!(rows.len(), 3);
        let none = &rows[0];
        assert_eq!((none.mode, none.exec, none.runs), (Mode::None, None, 3));
        assert_eq!(none.total_s, 1.1);
        assert_eq!(none.overhead, Some(0.0));
        let xasm = &rows[1];
        assert_eq!(
            (xasm.mode, xasm.runs, xasm.published, xasm.consumed),
            (Mode::Xasm, 3, 10, 9)
        );
        assert!((xasm.overhead.unwrap() - 0.05).abs() < 1e-9);
        // Shares 0.0095, 0.0173, 0.015: the median share, not the share of the median run.
        assert!((xasm.share - 0.015).abs() < 1e-12);
        // No isolated run at size 16: no overhead.
        assert_eq!(rows[2].overhead, None);
        let t = table(&rows);
        assert!(t.contains("xasm async") && t.contains("+5.00%"), "{t}");
    }

    #[test]
    fn plots_share_against_size() {
        let runs: Vec<PairReport> = [8, 16, 32]
            .iter()
            .flat_map(|&n| {
                [
                    pair(Mode::None, Exec::Async, n, 1.0, 0.0),
                    pair(Mode::Stub, Exec::Sync, n, 1.0, 1e-6),
                    pair(Mode::Xasm, Exec::Sync, n, 1.0, 0.1 / n as f64),
                    pair(Mode::Spinlock, Exec::Sync, n, 1.0, 0.5 / n as f64),
                ]
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("share.svg");
        plot_share(&rows(&runs), &path, "in situ share").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("xasm sync") && svg.contains("spinlock sync")
        );
        assert!(!svg.contains(">none<"));
        assert!(plot_share(&rows(&runs[..1]), &path, "t").is_err());
    }
}
