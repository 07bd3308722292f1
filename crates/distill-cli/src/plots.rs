//! The plots of a bench report, each written as SVG and PNG (plotters; the PNG is drawn into an RGB buffer
//! and encoded with the `image` crate the workspace already uses): metric vs parameters per domain (a
//! Pareto view of teacher, scratch and distilled students), training curves per run, and KD gain per run
//! with error bars, and the methods table as a forest plot (gain and interval per method, a panel per domain).
//!
//! Text needs a TrueType font: `$DISTILL_FONT`, else the first of a few usual system fonts (DejaVu Sans,
//! Liberation Sans, ...), else any `.ttf` under /usr/share/fonts. Without one no plot is drawn and the report
//! says why.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use distill_core::{
    report::{EpochRecord, PhaseSummary, Report, RunReport},
    train::files::PHASES,
};
use plotters::{
    coord::Shift,
    prelude::*,
    style::{register_font, FontStyle},
};

use crate::methods_table::{grids, MethodsGrid};
use crate::stats::{kd_gain_stat, noise_floor, standard_error};

/// A plot written as `<stem>.svg` and `<stem>.png` under the plots dir.
#[derive(Debug, Clone)]
pub struct Plot {
    /// What it shows.
    pub title: String,
    /// File stem (no extension), relative to the plots dir.
    pub stem: String,
}

const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

fn any_ttf(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in &entries {
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
            return Some(p.clone());
        }
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|p| any_ttf(p, depth - 1))
}

fn find_font() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DISTILL_FONT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("DISTILL_FONT={}: file not found", p.display()))
        };
    }
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| any_ttf(Path::new("/usr/share/fonts"), 3))
        .ok_or_else(|| {
            "no TrueType font found (looked for DejaVu Sans, Liberation Sans, FreeSans and any .ttf under \
             /usr/share/fonts); install one (e.g. fonts-dejavu-core) or set DISTILL_FONT=/path/to/font.ttf"
                .to_string()
        })
}

/// Registers the plots' font once; the path of the font used.
pub fn font() -> Result<&'static Path, String> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = find_font()?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
        Ok(path)
    })
    .as_ref()
    .map(|p| p.as_path())
    .map_err(|e| e.clone())
}

fn e<T: std::fmt::Debug>(x: T) -> String {
    format!("{x:?}")
}

/// A file-name-safe version of `s`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn human(v: f64) -> String {
    let short = |x: f64| {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if v >= 1e6 {
        format!("{}M", short(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", short(v / 1e3))
    } else {
        format!("{v:.0}")
    }
}

/// Whole epochs only on the x axis.
fn epoch_label(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

fn phase<'a>(run: &'a RunReport, name: &str) -> &'a PhaseSummary {
    match name {
        "teacher" => &run.teacher,
        "scratch" => &run.scratch,
        _ => &run.distilled,
    }
}

fn phase_color(name: &str) -> RGBColor {
    match name {
        "teacher" => RGBColor(31, 119, 180),
        "scratch" => RGBColor(255, 127, 14),
        _ => RGBColor(44, 160, 44),
    }
}

/// The domain of a run: its manifest's, else its plugin's name.
pub fn domain_of(run: &RunReport) -> String {
    run.domain.clone().unwrap_or_else(|| run.plugin.clone())
}

/// Domains in order of first appearance.
pub fn domains(report: &Report) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &report.runs {
        let d = domain_of(r);
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

fn pad(lo: f64, hi: f64, min_span: f64) -> (f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let span = (hi - lo).max(min_span);
    let mid = (hi + lo) / 2.0;
    (mid - span * 0.6, mid + span * 0.6)
}

fn pareto<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    domain: &str,
    runs: &[&RunReport],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(e)?;
    let params: Vec<f64> = runs
        .iter()
        .flat_map(|r| PHASES.iter().map(|p| phase(r, p).params.max(1) as f64))
        .collect();
    let (pmin, pmax) = params
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let ys: Vec<f64> = runs
        .iter()
        .flat_map(|r| {
            PHASES.iter().flat_map(|p| {
                let m = &phase(r, p).metric;
                [m.mean - m.std, m.mean + m.std]
            })
        })
        .collect();
    let (ylo, yhi) = pad(
        ys.iter().copied().fold(f64::MAX, f64::min),
        ys.iter().copied().fold(f64::MIN, f64::max),
        0.005,
    );
    let metric = runs
        .first()
        .map(|r| r.metric.name.clone())
        .unwrap_or_default();
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{metric} vs parameters: {domain}"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((pmin / 2.0..pmax * 2.0).log_scale(), ylo..yhi)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("parameters (log scale)")
        .y_desc(format!("test {metric} (mean ± std over seeds)"))
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| format!("{v:.3}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let point = |p: &str| {
            let s = phase(run, p);
            (s.params.max(1) as f64, s.metric.mean, s.metric.std)
        };
        // the KD arrow: scratch -> distilled (same parameters)
        let (sx, sy, _) = point("scratch");
        let (dx, dy, _) = point("distilled");
        chart
            .draw_series(LineSeries::new([(sx, sy), (dx, dy)], color.stroke_width(2)))
            .map_err(e)?
            .label(run.recipe.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        for p in PHASES {
            let (x, y, s) = point(p);
            chart
                .draw_series(std::iter::once(ErrorBar::new_vertical(
                    x,
                    y - s,
                    y,
                    y + s,
                    color.stroke_width(1),
                    8,
                )))
                .map_err(e)?;
            match p {
                "teacher" => chart
                    .draw_series(std::iter::once(TriangleMarker::new(
                        (x, y),
                        8,
                        color.filled(),
                    )))
                    .map(|_| ()),
                "scratch" => chart
                    .draw_series(std::iter::once(Circle::new(
                        (x, y),
                        6,
                        color.stroke_width(2),
                    )))
                    .map(|_| ()),
                _ => chart
                    .draw_series(std::iter::once(Circle::new((x, y), 6, color.filled())))
                    .map(|_| ()),
            }
            .map_err(e)?;
        }
    }
    // shape legend
    let (x0, y0) = (pmin, ylo);
    chart
        .draw_series(std::iter::once(Circle::new((x0, y0), 0, WHITE.filled())))
        .map_err(e)?
        .label("teacher (triangle)")
        .legend(|(x, y)| TriangleMarker::new((x + 7, y), 6, BLACK.filled()));
    chart
        .draw_series(std::iter::once(Circle::new((x0, y0), 0, WHITE.filled())))
        .map_err(e)?
        .label("scratch student (ring)")
        .legend(|(x, y)| Circle::new((x + 7, y), 5, BLACK.stroke_width(2)));
    chart
        .draw_series(std::iter::once(Circle::new((x0, y0), 0, WHITE.filled())))
        .map_err(e)?
        .label("distilled student (disc)")
        .legend(|(x, y)| Circle::new((x + 7, y), 5, BLACK.filled()));
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Points (epoch, value) of a curve.
type Curve = Vec<(f64, f64)>;

/// Mean over seeds at each epoch (over the seeds whose curve reaches it).
fn mean_curve(
    curves: &[Vec<EpochRecord>],
    f: impl Fn(&EpochRecord) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let len = curves.iter().map(Vec::len).max().unwrap_or(0);
    (0..len)
        .filter_map(|j| {
            let vals: Vec<f64> = curves
                .iter()
                .filter_map(|c| c.get(j).and_then(&f))
                .filter(|v| v.is_finite())
                .collect();
            (!vals.is_empty())
                .then(|| ((j + 1) as f64, vals.iter().sum::<f64>() / vals.len() as f64))
        })
        .collect()
}

fn curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    run: &RunReport,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!(
                "{} ({}): training curves, mean over {} seed(s)",
                run.recipe,
                domain_of(run),
                run.seeds.len()
            ),
            ("sans-serif", 20),
        )
        .map_err(e)?;
    let (w, _) = root.dim_in_pixel();
    let (left, right) = root.split_horizontally(w / 2);
    // the right panel is the validation metric per epoch (runs made before 2026-12-07 also evaluated test
    // after every epoch; their plots keep showing that when there is no validation curve)
    let has_val = PHASES.iter().any(|p| {
        phase(run, p)
            .curves
            .iter()
            .flatten()
            .any(|r| r.val_metric.is_some())
    });
    let (split_name, per_epoch): (&str, fn(&EpochRecord) -> Option<f64>) = if has_val {
        ("validation", |r| r.val_metric)
    } else {
        ("test", |r| r.test_metric)
    };
    let series: Vec<(&str, Curve, Curve)> = PHASES
        .iter()
        .map(|p| {
            let c = &phase(run, p).curves;
            (
                *p,
                mean_curve(c, |r| Some(r.train_loss).filter(|v| *v > 0.0)),
                mean_curve(c, per_epoch),
            )
        })
        .collect();
    let max_epoch = series
        .iter()
        .flat_map(|(_, a, b)| a.iter().chain(b).map(|p| p.0))
        .fold(1.0f64, f64::max);
    for (area, which) in [(&left, 0usize), (&right, 1usize)] {
        let pts: Vec<f64> = series
            .iter()
            .flat_map(|(_, a, b)| if which == 0 { a } else { b }.iter().map(|p| p.1))
            .collect();
        let lo = pts.iter().copied().fold(f64::MAX, f64::min);
        let hi = pts.iter().copied().fold(f64::MIN, f64::max);
        let x_range = 0.5..max_epoch + 0.5;
        if which == 0 {
            let (lo, hi) = if pts.is_empty() {
                (0.01, 1.0)
            } else {
                (lo / 1.5, hi * 1.5)
            };
            let mut chart = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range, (lo..hi).log_scale())
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_label_formatter(&epoch_label)
                .y_desc("training loss (log scale)")
                .y_label_formatter(&|v| format!("{v:.3}"))
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 14))
                .draw()
                .map_err(e)?;
            for (p, loss, _) in &series {
                let c = phase_color(p);
                chart
                    .draw_series(LineSeries::new(loss.clone(), c.stroke_width(2)))
                    .map_err(e)?
                    .label(*p)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(loss.iter().map(|&pt| Circle::new(pt, 3, c.filled())))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(e)?;
        } else {
            let (lo, hi) = if pts.is_empty() {
                (0.0, 1.0)
            } else {
                pad(lo, hi, 0.005)
            };
            let mut chart = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range, lo..hi)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_label_formatter(&epoch_label)
                .y_desc(format!("{split_name} {}", run.metric.name))
                .y_label_formatter(&|v| format!("{v:.3}"))
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 14))
                .draw()
                .map_err(e)?;
            for (p, _, metric) in &series {
                let c = phase_color(p);
                chart
                    .draw_series(LineSeries::new(metric.clone(), c.stroke_width(2)))
                    .map_err(e)?
                    .label(*p)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(metric.iter().map(|&pt| Circle::new(pt, 3, c.filled())))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(e)?;
        }
    }
    Ok(())
}

fn kd_gain<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(e)?;
    let n = report.runs.len();
    let bars: Vec<(f64, f64)> = report
        .runs
        .iter()
        .map(|r| {
            let g = kd_gain_stat(r);
            let floor =
                noise_floor(r, r.distilled.metric.mean) + noise_floor(r, r.scratch.metric.mean);
            (g.mean, standard_error(&g, floor))
        })
        .collect();
    let lo = bars.iter().map(|(g, s)| g - s).fold(0.0f64, f64::min);
    let hi = bars.iter().map(|(g, s)| g + s).fold(0.0f64, f64::max);
    let (lo, hi) = pad(lo, hi, 0.002);
    let names: Vec<String> = report.runs.iter().map(|r| r.recipe.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(
            "KD gain (distilled - scratch) per run, ± 1 SE",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((0..(n as i32 - 1).max(1)).into_segmented(), lo..hi)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc("KD gain in the headline metric")
        .y_label_formatter(&|v| format!("{:+.4}", if v.abs() < 1e-12 { 0.0 } else { *v }))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (di, domain) in domains(report).iter().enumerate() {
        let color = Palette99::pick(di).to_rgba();
        let data: Vec<(i32, f64)> = report
            .runs
            .iter()
            .enumerate()
            .filter(|(_, r)| &domain_of(r) == domain)
            .map(|(i, _)| (i as i32, bars[i].0))
            .collect();
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(color.filled())
                    .margin(20)
                    .data(data),
            )
            .map_err(e)?
            .label(domain.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .draw_series(bars.iter().enumerate().map(|(i, &(g, s))| {
            ErrorBar::new_vertical(
                SegmentValue::CenterOf(i as i32),
                g - s,
                g,
                g + s,
                BLACK.stroke_width(2),
                14,
            )
        }))
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            [(SegmentValue::Exact(0), 0.0), (SegmentValue::Last, 0.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(e)?;
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// A method's row in a forest panel: y slot, mean gain, 95 % interval, whether the interval excludes 0.
type ForestRow = (i32, f64, Option<(f64, f64)>, bool);

/// The methods table as a forest plot: one panel per domain, a row per method, its mean KD gain with the 95 %
/// paired interval as a whisker; filled when the interval excludes 0 (green above, red below), hollow grey
/// within noise, and a vertical line at 0. Each panel has its own scale: gains are in each domain's metric.
fn methods_forest<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    grid: &MethodsGrid,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!(
                "KD gain by method, 95 % paired interval ({})",
                if grid.low { "low data" } else { "all data" }
            ),
            ("sans-serif", 18),
        )
        .map_err(e)?;
    let n = grid.methods.len() as i32;
    let panels = root.split_evenly((1, grid.domains.len().max(1)));
    for (panel, domain) in panels.iter().zip(&grid.domains) {
        // rows top to bottom in table order: method i sits at n - 1 - i
        let rows: Vec<ForestRow> = grid
            .methods
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let r = grid.cells.get(&(m.clone(), domain.clone()))?;
                let g = kd_gain_stat(r).mean;
                let iv = r.kd_gain_interval.as_ref();
                Some((
                    n - 1 - i as i32,
                    g,
                    iv.map(|i| (i.lo, i.hi)),
                    iv.is_some_and(|i| i.beyond_noise()),
                ))
            })
            .filter(|(_, g, _, _)| g.is_finite())
            .collect();
        let lo = rows
            .iter()
            .map(|(_, g, iv, _)| iv.map_or(*g, |(l, _)| l))
            .fold(0.0f64, f64::min);
        let hi = rows
            .iter()
            .map(|(_, g, iv, _)| iv.map_or(*g, |(_, h)| h))
            .fold(0.0f64, f64::max);
        let (lo, hi) = pad(lo, hi, 0.002);
        let scratch = grid
            .domain_run(domain)
            .map(|r| format!(" (scratch {:.4})", r.scratch.metric.mean))
            .unwrap_or_default();
        let names = grid.methods.clone();
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{domain}{scratch}"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, (0..(n - 1).max(1)).into_segmented())
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(names.len().max(1))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names
                    .get((n - 1 - *i) as usize)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_labels(4)
            .x_label_formatter(&|v| format!("{:+.3}", if v.abs() < 1e-12 { 0.0 } else { *v }))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Last)],
                BLACK.stroke_width(1),
            ))
            .map_err(e)?;
        let color = |g: f64, beyond: bool| match (beyond, g > 0.0) {
            (true, true) => RGBColor(0x1a, 0x98, 0x50),
            (true, false) => RGBColor(0xd7, 0x30, 0x27),
            _ => RGBColor(0x80, 0x80, 0x80),
        };
        chart
            .draw_series(rows.iter().filter_map(|&(y, g, iv, beyond)| {
                let (l, h) = iv?;
                Some(ErrorBar::new_horizontal(
                    SegmentValue::CenterOf(y),
                    l,
                    g,
                    h,
                    color(g, beyond).stroke_width(2),
                    10,
                ))
            }))
            .map_err(e)?;
        chart
            .draw_series(rows.iter().map(|&(y, g, _, beyond)| {
                let c = color(g, beyond);
                Circle::new(
                    (g, SegmentValue::CenterOf(y)),
                    5,
                    if beyond {
                        c.filled()
                    } else {
                        c.stroke_width(2)
                    },
                )
            }))
            .map_err(e)?;
    }
    Ok(())
}

macro_rules! draw_both {
    ($dir:expr, $stem:expr, $size:expr, $f:ident ( $($arg:expr),* )) => {{
        let svg = $dir.join(format!("{}.svg", $stem));
        {
            let root = SVGBackend::new(&svg, $size).into_drawing_area();
            $f(&root, $($arg),*)?;
            root.present().map_err(|x| format!("{}: {x:?}", svg.display()))?;
        }
        let png = $dir.join(format!("{}.png", $stem));
        let (w, h): (u32, u32) = $size;
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            $f(&root, $($arg),*)?;
            root.present().map_err(|x| format!("{}: {x:?}", png.display()))?;
        }
        image::RgbImage::from_raw(w, h, buf)
            .ok_or_else(|| format!("{}: bitmap of the wrong size", png.display()))?
            .save(&png)
            .map_err(|x| format!("{}: {x}", png.display()))?;
    }};
}

/// Draws every plot of `report` into `dir` (SVG and PNG); the plots written, or why none could be.
pub fn draw_all(report: &Report, dir: &Path) -> Result<Vec<Plot>, String> {
    font()?;
    if report.runs.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|x| format!("{}: {x}", dir.display()))?;
    let mut plots = Vec::new();
    for domain in domains(report) {
        let runs: Vec<&RunReport> = report
            .runs
            .iter()
            .filter(|r| domain_of(r) == domain)
            .collect();
        let stem = format!("metric-vs-params-{}", slug(&domain));
        draw_both!(dir, stem, (900, 600), pareto(&domain, &runs));
        plots.push(Plot {
            title: format!("{domain}: metric vs parameters"),
            stem,
        });
    }
    let stem = "kd-gain".to_string();
    // room for each run's name under its bar
    let width = 900.max(110 * report.runs.len() as u32 + 200);
    draw_both!(dir, stem, (width, 520), kd_gain(report));
    plots.push(Plot {
        title: "KD gain per run".into(),
        stem,
    });
    for grid in grids(report) {
        let stem = format!("methods{}", if grid.low { "-low" } else { "" });
        let size = (
            (60 + 300 * grid.domains.len() as u32).max(720),
            110 + 30 * grid.methods.len() as u32,
        );
        draw_both!(dir, stem, size, methods_forest(&grid));
        plots.push(Plot {
            title: format!("Methods table: {}", grid.title().to_lowercase()),
            stem,
        });
    }
    for run in &report.runs {
        let stem = format!("curves-{}", slug(&run.recipe));
        draw_both!(dir, stem, (1100, 440), curves(run));
        plots.push(Plot {
            title: format!("{}: training curves", run.recipe),
            stem,
        });
    }
    Ok(plots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("image classification"), "image-classification");
        assert_eq!(slug("Graph / node (Cora)"), "graph-node-cora");
        assert_eq!(
            (human(1_276_810.0), human(2_000_000.0), human(12_730.0)),
            ("1.28M".into(), "2M".into(), "12.73k".into())
        );
    }

    /// The methods plot has a panel per domain, a point per method there, filled only beyond noise, and
    /// one file per setting.
    #[test]
    fn the_methods_plot_marks_gains_beyond_noise() {
        use crate::methods_table::sample_run as run;
        if let Err(why) = font() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no font under CI=true: {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
        let report = Report::new(
            vec![
                run("methods-audio-kd", &[0.02, 0.03], Some((0.01, 0.04))),
                run("methods-audio-dist", &[0.01, 0.0], Some((-0.01, 0.03))),
                run("methods-graph-kd", &[-0.02, -0.03], Some((-0.04, -0.01))),
                run("methods-audio-kd-low", &[0.1, 0.12], Some((0.05, 0.15))),
            ],
            None,
        );
        let dir = std::env::temp_dir().join(format!("distill-methods-plot-{}", std::process::id()));
        let plots = draw_all(&report, &dir).unwrap();
        let stems: Vec<&str> = plots.iter().map(|p| p.stem.as_str()).collect();
        assert!(
            stems.contains(&"methods") && stems.contains(&"methods-low"),
            "{stems:?}"
        );
        let svg = std::fs::read_to_string(dir.join("methods.svg")).unwrap();
        assert!(svg.contains("audio (scratch 0.5000)") && svg.contains("graph (scratch 0.5000)"));
        // filled points only for the two gains beyond noise: audio kd (green) and graph kd (red); audio dist
        // is within noise, drawn hollow and grey
        let filled: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<circle") && !l.contains(r#"fill="none""#))
            .collect();
        assert_eq!(filled.len(), 2, "{filled:?}");
        assert!(
            filled.iter().any(|l| l.contains(r##"fill="#1A9850""##)),
            "{filled:?}"
        );
        assert!(
            filled.iter().any(|l| l.contains(r##"fill="#D73027""##)),
            "{filled:?}"
        );
        assert!(svg.contains(r##"fill="none" stroke="#808080""##), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mean_curve_averages_the_seeds_that_reach_an_epoch() {
        let rec = |m: f64| EpochRecord {
            epoch: 1,
            train_loss: 1.0,
            loss_terms: Default::default(),
            lr: 0.1,
            val_metric: None,
            test_metric: Some(m),
            seconds: 1.0,
        };
        let c = mean_curve(&[vec![rec(0.5), rec(0.7)], vec![rec(0.7)]], |r| {
            r.test_metric
        });
        assert_eq!(c, vec![(1.0, 0.6), (2.0, 0.7)]);
    }
}
