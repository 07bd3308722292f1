//! The cross-domain methods table of a bench report: the runs named `methods-<domain>-<method>` (and
//! `...-low`, students on a fraction of the training split), as `bench/methods/make_suites.py` writes them into
//! `plugins/*/benches/methods.toml`, arranged with methods as rows and domains as columns. Each cell is the
//! method's KD gain over its scratch twin (mean over seeds) with the 95 % paired bootstrap interval; a cell is
//! bold when the interval excludes 0, and the column's largest gain gets a ★ only when it is beyond noise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use distill_core::report::{Report, RunReport};

use crate::stats::{fmt_gain, kd_gain_stat};

/// The rows' order: the recipe's own loss, then the logit methods, then the feature methods.
const ORDER: &[&str] = &[
    "recipe", "kd", "dkd", "dist", "ls_kd", "pkt", "sp", "rkd", "hint", "vid", "at", "nst", "crd",
    "reviewkd", "ofd",
];

/// `(domain, method, low-data)` of a methods-table run name, `None` for any other run.
pub fn parse_name(name: &str) -> Option<(String, String, bool)> {
    let rest = name.strip_prefix("methods-")?;
    let (domain, method) = rest.split_once('-')?;
    let (method, low) = match method.strip_suffix("-low") {
        Some(m) => (m, true),
        None => (method, false),
    };
    (!domain.is_empty() && !method.is_empty() && !method.contains('-'))
        .then(|| (domain.to_string(), method.to_string(), low))
}

fn rank(method: &str) -> (usize, String) {
    (
        ORDER
            .iter()
            .position(|m| *m == method)
            .unwrap_or(ORDER.len()),
        method.to_string(),
    )
}

/// One setting's table (all training data, or the low-data runs): its domains (columns), its methods (rows,
/// in the fixed order) and the runs that fill its cells.
pub struct MethodsGrid<'a> {
    /// Students on a fraction of the training split (the `-low` runs).
    pub low: bool,
    pub domains: Vec<String>,
    pub methods: Vec<String>,
    /// `(method, domain)` to its run.
    pub cells: BTreeMap<(String, String), &'a RunReport>,
}

impl MethodsGrid<'_> {
    /// The heading of this setting's table and plot.
    pub fn title(&self) -> &'static str {
        if self.low {
            "Students on a fraction of the training split (runs ending in -low)"
        } else {
            "All training data"
        }
    }

    /// Any run of domain `d` (they share the teacher and the scratch twin).
    pub fn domain_run(&self, d: &str) -> Option<&RunReport> {
        self.cells
            .iter()
            .find(|((_, dd), _)| dd == d)
            .map(|(_, r)| *r)
    }

    /// Each domain's method with the largest mean gain (ties: the first in row order).
    pub fn best(&self) -> BTreeMap<&String, &String> {
        let mut best: BTreeMap<&String, (&String, f64)> = BTreeMap::new();
        for m in &self.methods {
            for d in &self.domains {
                let Some(r) = self.cells.get(&(m.clone(), d.clone())) else {
                    continue;
                };
                let g = kd_gain_stat(r).mean;
                if g.is_finite() && best.get(d).is_none_or(|(_, b)| g > *b) {
                    best.insert(d, (m, g));
                }
            }
        }
        best.into_iter().map(|(d, (m, _))| (d, m)).collect()
    }
}

/// The report's methods-table runs, one grid per setting present (all data first); empty when it has none.
pub fn grids(report: &Report) -> Vec<MethodsGrid<'_>> {
    let mut runs: BTreeMap<bool, BTreeMap<(String, String), &RunReport>> = BTreeMap::new();
    for r in &report.runs {
        if let Some((domain, method, low)) = parse_name(&r.recipe) {
            runs.entry(low).or_default().insert((method, domain), r);
        }
    }
    runs.into_iter()
        .map(|(low, cells)| {
            let domains: BTreeSet<String> = cells.keys().map(|(_, d)| d.clone()).collect();
            let mut methods: Vec<String> = cells
                .keys()
                .map(|(m, _)| m.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            methods.sort_by_key(|m| rank(m));
            MethodsGrid {
                low,
                domains: domains.into_iter().collect(),
                methods,
                cells,
            }
        })
        .collect()
}

/// The table (one per setting present: all training data, low data) as markdown; `None` when the report has no
/// methods-table runs.
pub fn methods_markdown(report: &Report) -> Option<String> {
    let grids = grids(report);
    if grids.is_empty() {
        return None;
    }
    let mut s = String::new();
    for g in &grids {
        // the largest mean gain of each column, starred when its interval excludes 0
        let best = g.best();
        let _ = writeln!(s, "### {}\n", g.title());
        let _ = write!(s, "| method |");
        for d in &g.domains {
            let _ = write!(s, " {d} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &g.domains {
            let _ = write!(s, "---|");
        }
        let _ = writeln!(s);
        for (label, pick) in [("teacher", 0), ("scratch twin", 1)] {
            let _ = write!(s, "| *{label}* |");
            for d in &g.domains {
                let cell = g.domain_run(d).map(|r| {
                    let p = if pick == 0 { &r.teacher } else { &r.scratch };
                    format!("{} {:.4}", r.metric.name, p.metric.mean)
                });
                let _ = write!(s, " {} |", cell.unwrap_or_default());
            }
            let _ = writeln!(s);
        }
        for m in &g.methods {
            let _ = write!(s, "| {m} |");
            for d in &g.domains {
                let cell = match g.cells.get(&(m.clone(), d.clone())) {
                    None => "n/a".to_string(),
                    Some(r) => cell(r, best.get(d).is_some_and(|bm| *bm == m)),
                };
                let _ = write!(s, " {cell} |");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Each cell: the method's KD gain over its scratch twin (same seed, init and data order), mean ± std over \
         seeds, and its 95 % paired bootstrap interval over seeds × test examples; **bold** when the interval \
         excludes 0; ★ marks a column's largest gain only when it is beyond noise. n/a: the method needs a \
         feature the domain's networks do not have, or a label every training sample lacks.\n"
    );
    Some(s)
}

fn cell(r: &RunReport, best: bool) -> String {
    let g = fmt_gain(&kd_gain_stat(r));
    match &r.kd_gain_interval {
        Some(i) => {
            let text = format!("{g} [{:+.4}, {:+.4}]", i.lo, i.hi);
            match (i.beyond_noise(), best) {
                (true, true) => format!("★ **{text}**"),
                (true, false) => format!("**{text}**"),
                _ => text,
            }
        }
        None => format!("{g} (no interval)"),
    }
}

/// A run with the given per-seed KD gains over a scratch accuracy of 0.5 and an optional interval (tests of the
/// table and its plot).
#[cfg(test)]
pub(crate) fn sample_run(name: &str, gains: &[f64], interval: Option<(f64, f64)>) -> RunReport {
    let phase = |v: &[f64]| {
        serde_json::json!({
            "metric": distill_core::report::Stat::of(v), "extra": {}, "params": 10, "bytes": 40, "flops": 0,
            "latency_ms": { "batch1": 1.0, "batch256": 2.0 }, "peak_rss_mb": 1.0, "wall_s": 3.0, "curves": []
        })
    };
    let scratch = vec![0.5; gains.len()];
    let distilled: Vec<f64> = gains.iter().map(|g| 0.5 + g).collect();
    let mut v = serde_json::json!({
        "plugin": "p", "recipe": name, "dataset": "d", "quick": false,
        "seeds": (0..gains.len()).collect::<Vec<_>>(),
        "metric": { "name": "accuracy", "higher_is_better": true },
        "teacher": phase(&[0.9]), "scratch": phase(&scratch), "distilled": phase(&distilled),
        "derived": { "compression": 0.9, "speedup": 2.0, "speedup_batch1": 1.0, "retention": 0.9, "kd_gain": 0.0 },
        "recipe_toml": ""
    });
    if let Some((lo, hi)) = interval {
        v["kd_gain_interval"] = serde_json::json!({
            "lo": lo, "hi": hi, "seeds": gains.len(), "examples": 100, "resamples": 2000
        });
    }
    serde_json::from_value(v).unwrap()
}

#[cfg(test)]
mod tests {
    use super::sample_run as run;
    use super::*;

    #[test]
    fn names_parse_into_domain_method_and_setting() {
        assert_eq!(
            parse_name("methods-audio-ls_kd"),
            Some(("audio".into(), "ls_kd".into(), false))
        );
        assert_eq!(
            parse_name("methods-text-dist-low"),
            Some(("text".into(), "dist".into(), true))
        );
        assert_eq!(parse_name("fsdd-kws"), None);
        assert_eq!(parse_name("methods-audio"), None);
        assert_eq!(parse_name("methods-audio-a-b"), None);
    }

    #[test]
    fn the_table_has_methods_as_rows_domains_as_columns_and_stars_only_beyond_noise() {
        let report = Report::new(
            vec![
                run("methods-audio-kd", &[0.02, 0.03, 0.025], Some((0.01, 0.04))),
                run(
                    "methods-audio-dist",
                    &[0.01, 0.0, 0.02],
                    Some((-0.01, 0.03)),
                ),
                // the largest gain of its column, but within noise: no star
                run(
                    "methods-graph-dist",
                    &[0.05, -0.02, 0.04],
                    Some((-0.03, 0.08)),
                ),
                run("methods-graph-kd", &[0.01, 0.0, 0.01], Some((-0.01, 0.02))),
                run(
                    "methods-audio-kd-low",
                    &[0.1, 0.12, 0.11],
                    Some((0.05, 0.15)),
                ),
                run("fsdd-kws", &[0.0], None),
            ],
            None,
        );
        let md = methods_markdown(&report).unwrap();
        println!("{md}");
        let lines: Vec<&str> = md.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("| method |"))
            .unwrap();
        assert_eq!(lines[header], "| method | audio | graph |");
        let row = |m: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(&format!("| {m} |")))
                .unwrap()
        };
        // kd before dist (the fixed order), the audio kd gain beyond noise and best: starred and bold
        assert!(
            lines.iter().position(|l| l.starts_with("| kd |"))
                < lines.iter().position(|l| l.starts_with("| dist |"))
        );
        assert!(row("kd").contains("★ **+0.0250"), "{}", row("kd"));
        assert!(!row("dist").contains('★'), "{}", row("dist"));
        assert!(
            row("dist").contains("[-0.0300, +0.0800]"),
            "{}",
            row("dist")
        );
        assert!(md.contains("All training data") && md.contains("-low"));
        assert!(
            md.contains("| *scratch twin* | accuracy 0.5000 | accuracy 0.5000 |"),
            "{md}"
        );
        assert_eq!(
            methods_markdown(&Report::new(vec![run("x", &[0.0], None)], None)),
            None
        );
    }

    #[test]
    fn a_method_missing_from_a_domain_is_na() {
        let report = Report::new(
            vec![
                run("methods-audio-nst", &[0.01], Some((-0.01, 0.02))),
                run("methods-graph-kd", &[0.01], Some((-0.01, 0.02))),
            ],
            None,
        );
        let md = methods_markdown(&report).unwrap();
        let nst = md.lines().find(|l| l.starts_with("| nst |")).unwrap();
        assert!(nst.ends_with("| n/a |"), "{nst}");
    }
}
