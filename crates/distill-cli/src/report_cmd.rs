//! Bench reports: the Markdown of a bench (`report.md`: one table per domain, a cross-domain summary, plots),
//! `distill report compare A B` (what changed, beyond the runs' noise) and `distill report render`.
//!
//! The noise rule (docs/report-schema.md): for a figure with seed values v (n of them) on one side, the
//! variance is the larger of the seeds' sample variance (n ≥ 2) and a binomial floor p̃(1-p̃)/N when the
//! metric is a proportion of N test samples (p̃ = (pN+1)/(N+2)); its standard error is sqrt(var/n). A
//! difference between A and B is flagged when |Δ| > k·sqrt(SE_A² + SE_B²) (k = 3 by default), and whenever
//! it is not zero but no noise could be estimated.

use std::{fmt::Write as _, path::Path, path::PathBuf};

use anyhow::{bail, Result};
use clap::Subcommand;
use distill_core::{
    checkpoint::{read_json, write_atomic, write_json_atomic},
    report::{PhaseSummary, Report, RunReport, Stat},
};
use serde::Serialize;

use crate::{
    latency_text,
    plots::{self, domain_of, domains},
    stats::{
        fmt_kd_gain, kd_gain_stat, kept_validation, noise_floor, retention_stat, standard_error,
    },
};

/// `1h02m`, `3m05s`, `12.3s`.
pub fn fmt_secs(s: f64) -> String {
    let whole = s.round() as u64;
    if whole >= 3600 {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    } else if whole >= 60 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{s:.1}s")
    }
}

/// `distill report ...`.
#[derive(Subcommand)]
pub enum ReportCmd {
    /// What changed between two reports (report.json files or the dirs holding them), flagging differences
    /// larger than the runs' noise.
    Compare {
        /// The reference report.
        a: PathBuf,
        /// The report compared with it.
        b: PathBuf,
        /// Flag a difference larger than K standard errors.
        #[arg(long, default_value_t = 3.0)]
        k: f64,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
        /// Exit with status 1 when a difference is flagged.
        #[arg(long)]
        check: bool,
    },
    /// Write report.md and plots/ again from a bench's report.json (or the dir holding it).
    Render {
        /// The report.
        report: PathBuf,
    },
}

/// Runs `distill report ...`.
pub fn cmd_report(what: ReportCmd) -> Result<()> {
    match what {
        ReportCmd::Compare {
            a,
            b,
            k,
            json,
            check,
        } => {
            if !(k > 0.0 && k.is_finite()) {
                bail!("--k {k}: must be > 0");
            }
            let (ra, rb) = (load(&a)?, load(&b)?);
            let c = compare(&ra, &rb, k);
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!(
                    "{}",
                    c.to_text(&a.display().to_string(), &b.display().to_string())
                );
            }
            if check && c.flagged > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        ReportCmd::Render { report } => {
            let path = report_path(&report);
            let r = load(&report)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            if let Some(note) = write_bench_report(&r, dir, false)? {
                eprintln!("warning: {note}");
            }
            println!("wrote {}", dir.join("report.md").display());
            Ok(())
        }
    }
}

fn report_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("report.json")
    } else {
        p.to_path_buf()
    }
}

/// Reads a report.json (or the one in a dir); a missing file is a one-line error naming it.
pub fn load(p: &Path) -> Result<Report> {
    let path = report_path(p);
    if !path.is_file() {
        bail!(
            "{}: report not found (give a report.json or the dir holding one)",
            path.display()
        );
    }
    let r: Report = read_json(&path)?;
    if r.schema_version > distill_core::report::SCHEMA_VERSION {
        bail!(
            "{}: schema_version {} is newer than this distill reads ({})",
            path.display(),
            r.schema_version,
            distill_core::report::SCHEMA_VERSION
        );
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------------------
// compare

/// One compared figure.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// What it is, e.g. `distilled accuracy`.
    pub figure: String,
    /// A's value (mean over seeds).
    pub a: f64,
    /// B's value.
    pub b: f64,
    /// B - A.
    pub delta: f64,
    /// sqrt(SE_A² + SE_B²), when the figure has a noise estimate.
    pub se: Option<f64>,
    /// Whether |Δ| is beyond the noise (or an exact figure changed).
    pub flagged: bool,
    /// Why, or what kind of figure.
    pub note: String,
}

/// The comparison of one run present in both reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunCompare {
    /// `plugin/recipe` (+ ` (quick)`).
    pub run: String,
    /// Seeds in A and in B.
    pub seeds: (Vec<u64>, Vec<u64>),
    /// Figures.
    pub items: Vec<Item>,
}

/// What changed between two reports.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The flag threshold in standard errors.
    pub k: f64,
    /// Runs in both.
    pub runs: Vec<RunCompare>,
    /// Runs only in A.
    pub only_in_a: Vec<String>,
    /// Runs only in B.
    pub only_in_b: Vec<String>,
    /// Flagged figures plus runs present on one side only.
    pub flagged: usize,
}

fn key(r: &RunReport) -> String {
    format!(
        "{}/{}{}",
        r.plugin,
        r.recipe,
        if r.quick { " (quick)" } else { "" }
    )
}

fn stat_item(figure: String, a: &Stat, fa: f64, b: &Stat, fb: f64, k: f64) -> Item {
    let delta = b.mean - a.mean;
    let se = (standard_error(a, fa).powi(2) + standard_error(b, fb).powi(2)).sqrt();
    let (se, flagged, note) = if delta == 0.0 {
        (Some(se).filter(|s| *s > 0.0), false, String::new())
    } else if se > 0.0 {
        let z = delta.abs() / se;
        (Some(se), z > k, format!("{z:.1} SE"))
    } else {
        (
            None,
            true,
            "no noise estimate (single seed, not a proportion)".into(),
        )
    };
    Item {
        figure,
        a: a.mean,
        b: b.mean,
        delta,
        se,
        flagged,
        note,
    }
}

fn exact_item(figure: String, a: f64, b: f64) -> Item {
    Item {
        figure,
        a,
        b,
        delta: b - a,
        se: None,
        flagged: a != b,
        note: if a != b {
            "exact figure changed".into()
        } else {
            "exact".into()
        },
    }
}

/// Compares two reports run by run (matched by plugin, recipe name and quick).
pub fn compare(a: &Report, b: &Report, k: f64) -> Comparison {
    let mut runs = Vec::new();
    let mut only_in_a = Vec::new();
    for ra in &a.runs {
        let Some(rb) = b.runs.iter().find(|r| key(r) == key(ra)) else {
            only_in_a.push(key(ra));
            continue;
        };
        let mut items = Vec::new();
        let name = &ra.metric.name;
        let pairs: [(&str, &PhaseSummary, &PhaseSummary); 3] = [
            ("teacher", &ra.teacher, &rb.teacher),
            ("scratch", &ra.scratch, &rb.scratch),
            ("distilled", &ra.distilled, &rb.distilled),
        ];
        for (p, pa, pb) in pairs {
            items.push(stat_item(
                format!("{p} {name}"),
                &pa.metric,
                noise_floor(ra, pa.metric.mean),
                &pb.metric,
                noise_floor(rb, pb.metric.mean),
                k,
            ));
        }
        let floor2 = |r: &RunReport| {
            noise_floor(r, r.distilled.metric.mean) + noise_floor(r, r.scratch.metric.mean)
        };
        items.push(stat_item(
            "KD gain".into(),
            &kd_gain_stat(ra),
            floor2(ra),
            &kd_gain_stat(rb),
            floor2(rb),
            k,
        ));
        items.push(exact_item(
            "teacher params".into(),
            ra.teacher.params as f64,
            rb.teacher.params as f64,
        ));
        items.push(exact_item(
            "student params".into(),
            ra.distilled.params as f64,
            rb.distilled.params as f64,
        ));
        let wall = |r: &RunReport| r.teacher.wall_s + r.scratch.wall_s + r.distilled.wall_s;
        items.push(Item {
            figure: "wall time (s)".into(),
            a: wall(ra),
            b: wall(rb),
            delta: wall(rb) - wall(ra),
            se: None,
            flagged: false,
            note: "not judged (timings on a shared machine have no noise model)".into(),
        });
        runs.push(RunCompare {
            run: key(ra),
            seeds: (ra.seeds.clone(), rb.seeds.clone()),
            items,
        });
    }
    let only_in_b: Vec<String> = b
        .runs
        .iter()
        .filter(|r| !a.runs.iter().any(|x| key(x) == key(r)))
        .map(key)
        .collect();
    let flagged = runs
        .iter()
        .flat_map(|r| &r.items)
        .filter(|i| i.flagged)
        .count()
        + only_in_a.len()
        + only_in_b.len();
    Comparison {
        k,
        runs,
        only_in_a,
        only_in_b,
        flagged,
    }
}

impl Comparison {
    /// Markdown-ish text.
    pub fn to_text(&self, a: &str, b: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# compare\n\nA = {a}\nB = {b}\nflag rule: |Δ| > {} · SE (see docs/report-schema.md)\n",
            self.k
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "## {}  (seeds A {:?}, B {:?})\n",
                r.run, r.seeds.0, r.seeds.1
            );
            let _ = writeln!(s, "| figure | A | B | Δ (B - A) | {}·SE | |", self.k);
            let _ = writeln!(s, "|---|---|---|---|---|---|");
            for i in &r.items {
                let (a, b, d) = if i.note.starts_with("exact") || i.figure.starts_with("wall") {
                    (
                        format!("{:.0}", i.a),
                        format!("{:.0}", i.b),
                        format!("{:+.0}", i.delta),
                    )
                } else {
                    (
                        format!("{:.4}", i.a),
                        format!("{:.4}", i.b),
                        format!("{:+.4}", i.delta),
                    )
                };
                let _ = writeln!(
                    s,
                    "| {} | {a} | {b} | {d} | {} | {}{} |",
                    i.figure,
                    i.se.map(|x| format!("{:.4}", x * self.k))
                        .unwrap_or_else(|| "-".into()),
                    if i.flagged { "**CHANGED** " } else { "" },
                    i.note
                );
            }
            let _ = writeln!(s);
        }
        for k in &self.only_in_a {
            let _ = writeln!(s, "**CHANGED** run only in A: {k}");
        }
        for k in &self.only_in_b {
            let _ = writeln!(s, "**CHANGED** run only in B: {k}");
        }
        if self.flagged == 0 {
            let _ = writeln!(
                s,
                "no change beyond noise ({} run(s) compared)",
                self.runs.len()
            );
        } else {
            let _ = writeln!(s, "{} difference(s) beyond noise", self.flagged);
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------------------
// Markdown

/// `n/a` for a figure that is undefined (retention against a teacher that scored 0).
fn fmt_stat(s: &Stat) -> String {
    if !s.mean.is_finite() {
        "n/a".into()
    } else if s.values.len() > 1 {
        format!("{:.4} ± {:.4}", s.mean, s.std)
    } else {
        format!("{:.4}", s.mean)
    }
}

fn headline_name(p: &PhaseSummary) -> &str {
    match p.headline.as_deref() {
        Some("best_val_epoch") => "best-val epoch",
        Some("pretrained") => "pretrained",
        Some("last_epoch") => "last epoch",
        _ => "kept weights",
    }
}

fn run_wall(r: &RunReport) -> f64 {
    r.teacher.wall_s + r.scratch.wall_s + r.distilled.wall_s
}

/// The cross-domain summary table.
pub fn summary_table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| domain | recipe | metric | teacher | scratch | distilled | compression | speed-up (b256) | retention | KD gain | wall |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &report.runs {
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} | {} | {:.1}% | {:.2}× | {} | {} | {} |",
            domain_of(r),
            r.recipe,
            if r.quick { " (quick)" } else { "" },
            r.metric.name,
            fmt_stat(&r.teacher.metric),
            fmt_stat(&r.scratch.metric),
            fmt_stat(&r.distilled.metric),
            r.derived.compression * 100.0,
            r.derived.speedup,
            fmt_stat(&retention_stat(r)),
            fmt_kd_gain(r),
            fmt_secs(run_wall(r))
        );
    }
    s
}

/// The wall time of every run's phases, summed (earlier invocations' runs included; a teacher that several runs
/// share through the cache counts in each).
fn runs_wall_s(report: &Report) -> f64 {
    report
        .runs
        .iter()
        .map(|r| r.teacher.wall_s + r.scratch.wall_s + r.distilled.wall_s)
        .sum()
}

/// report.md of a bench: header (command, machine, date), cross-domain summary, one table per domain, plots.
pub fn bench_markdown(report: &Report, plots: &Result<Vec<plots::Plot>, String>) -> String {
    let mut s = String::new();
    let b = report.bench.clone().unwrap_or_default();
    let _ = writeln!(
        s,
        "# distill bench: {}\n",
        if b.suite.is_empty() {
            "report"
        } else {
            &b.suite
        }
    );
    if !b.command.is_empty() {
        let _ = writeln!(s, "```sh\n{}\n```\n", b.command);
    }
    let _ =
        writeln!(
        s,
        "{} · {} core(s){} · device {} · distill {} · assembled at git {} · schema {} · this invocation {} · all runs {}\n",
        distill_core::report::utc_date(report.created_unix),
        b.cores,
        b.cpu.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
        if b.device.is_empty() { "cpu" } else { &b.device },
        report.distill_version,
        report.git_revision.as_deref().unwrap_or("unknown"),
        report.schema_version,
        fmt_secs(b.wall_s),
        fmt_secs(runs_wall_s(report))
    );
    let _ = writeln!(
        s,
        "Figures are test-set values, mean ± sample std over seeds (no ± with one seed). The **headline** figure of a \
         phase is the one its kept weights give: the last epoch's, or the best validation epoch's when the phase \
         uses early stopping; the domain tables show both and name the headline. KD gain = distilled − scratch \
         (sign flipped when lower is better), with its 95 % paired bootstrap interval over seeds × test examples \
         in brackets; a gain is **beyond noise** only when that interval excludes 0. Retention = distilled / \
         teacher, compression = 1 − student / teacher parameters, speed-up = teacher / student median latency at \
         batch 256 on all cores. \"All runs\" is the wall time of \
         every run's phases summed, those of earlier invocations included (a teacher shared through the cache \
         counts in each run that uses it).\n"
    );
    let _ = writeln!(s, "{}\n", latency_text::method_note(&report.runs));
    let _ = writeln!(s, "## Cross-domain summary (headline figures)\n");
    s.push_str(&summary_table(report));
    let _ = writeln!(s);
    if let Some(table) = crate::methods_table::methods_markdown(report) {
        let _ = writeln!(
            s,
            "## Methods table: KD gain over the scratch twin, by method and domain\n"
        );
        s.push_str(&table);
    }
    for domain in domains(report) {
        let _ = writeln!(s, "## {domain}\n");
        let _ = writeln!(
            s,
            "| recipe | phase | metric | headline | headline figure | last epoch | best-val epoch | validation (kept) | params | bytes | latency b1; b256 (ms, median / p90: 1 thread · all cores) | peak RSS (MiB; + the phase's own) | wall |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in report.runs.iter().filter(|r| domain_of(r) == domain) {
            for (name, p) in [
                ("teacher", &r.teacher),
                ("scratch", &r.scratch),
                ("distilled", &r.distilled),
            ] {
                let _ =
                    writeln!(
                    s,
                    "| {}{} | {name} | {} | {} | **{}** | {} | {} | {} | {} | {} | {}; {} | {} | {} |",
                    r.recipe,
                    if r.quick { " (quick)" } else { "" },
                    r.metric.name,
                    headline_name(p),
                    fmt_stat(&p.metric),
                    p.last_epoch_metric.as_ref().map(fmt_stat).unwrap_or_else(|| "-".into()),
                    p.best_val_epoch_metric.as_ref().map(fmt_stat).unwrap_or_else(|| "-".into()),
                    kept_validation(p, r.metric.higher_is_better)
                        .as_ref()
                        .map(fmt_stat)
                        .unwrap_or_else(|| "-".into()),
                    p.params,
                    p.bytes,
                    latency_text::batch_cell(&p.latency_ms, 1),
                    latency_text::batch_cell(&p.latency_ms, 256),
                    latency_text::memory_cell(p),
                    fmt_secs(p.wall_s)
                );
            }
        }
        let _ = writeln!(s);
        for r in report.runs.iter().filter(|r| domain_of(r) == domain) {
            let _ = writeln!(
                s,
                "- **{}** ({}, seeds {:?}{}): compression {:.1}% · {} · retention {} · KD gain {} · wall {} · {}",
                r.recipe,
                r.dataset,
                r.seeds,
                r.test_samples.map(|n| format!(", {n} test samples")).unwrap_or_default(),
                r.derived.compression * 100.0,
                latency_text::speedup_text(r),
                fmt_stat(&retention_stat(r)),
                fmt_kd_gain(r),
                fmt_secs(run_wall(r)),
                crate::run_markdown::provenance(r)
            );
            for line in latency_text::whole_input_lines(r) {
                let _ = writeln!(s, "  - {line}");
            }
        }
        let _ = writeln!(s);
    }
    let failed: Vec<(&String, &String)> = b
        .status
        .iter()
        .filter(|(_, v)| v.starts_with("failed"))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "## Failed runs\n");
        for (k, v) in failed {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Plots\n");
    match plots {
        Ok(list) if list.is_empty() => {
            let _ = writeln!(s, "(no runs to plot)");
        }
        Ok(list) => {
            for p in list {
                let _ = writeln!(
                    s,
                    "### {}\n\n![{}](plots/{}.svg)\n\n[PNG](plots/{}.png) · [SVG](plots/{}.svg)\n",
                    p.title, p.title, p.stem, p.stem, p.stem
                );
            }
        }
        Err(why) => {
            let _ = writeln!(s, "Plots were not drawn: {why}.");
        }
    }
    s
}

/// Writes `dir/report.md` and `dir/plots/` (and `dir/report.json` with `json`); returns why plots are
/// missing, if they are.
pub fn write_bench_report(report: &Report, dir: &Path, json: bool) -> Result<Option<String>> {
    let plots = plots::draw_all(report, &dir.join("plots"));
    if json {
        write_json_atomic(report, &dir.join("report.json"))?;
    }
    write_atomic(
        &dir.join("report.md"),
        bench_markdown(report, &plots).as_bytes(),
    )?;
    Ok(plots.err().map(|e| format!("plots not drawn: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(recipe: &str, metric: &str, d: &[f64], test_samples: Option<usize>) -> RunReport {
        let phase = |v: &[f64], params: usize| {
            serde_json::json!({
                "metric": Stat::of(v), "extra": {}, "params": params, "bytes": 4 * params, "flops": 0,
                "latency_ms": { "batch1": 1.0, "batch256": 2.0 }, "peak_rss_mb": 1.0, "wall_s": 3.0, "curves": []
            })
        };
        let s: Vec<f64> = d.iter().map(|x| x - 0.01).collect();
        serde_json::from_value(serde_json::json!({
            "plugin": "p", "recipe": recipe, "dataset": "d", "quick": false,
            "seeds": (0..d.len()).collect::<Vec<_>>(),
            "metric": { "name": metric, "higher_is_better": true },
            "teacher": phase(&[0.95; 1], 100), "scratch": phase(&s, 10), "distilled": phase(d, 10),
            "derived": { "compression": 0.9, "speedup": 2.0, "speedup_batch1": 1.0, "retention": 0.9, "kd_gain": 0.01 },
            "recipe_toml": "", "test_samples": test_samples
        }))
        .unwrap()
    }

    fn flagged(c: &Comparison) -> Vec<String> {
        c.runs
            .iter()
            .flat_map(|r| &r.items)
            .filter(|i| i.flagged)
            .map(|i| i.figure.clone())
            .collect()
    }

    #[test]
    fn kept_validation_is_the_best_epochs_under_early_stopping_else_the_last() {
        let epoch = |e: usize, v: Option<f64>| serde_json::json!({ "epoch": e, "train_loss": 1.0, "lr": 0.1, "val_metric": v, "seconds": 1.0 });
        let phase = |headline: &str, curves: &[&[Option<f64>]]| -> PhaseSummary {
            let curves: Vec<Vec<serde_json::Value>> = curves
                .iter()
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .map(|(i, v)| epoch(i + 1, *v))
                        .collect()
                })
                .collect();
            serde_json::from_value(serde_json::json!({
                "metric": Stat::of(&[0.5]), "headline": headline, "extra": {}, "params": 1, "bytes": 4,
                "flops": 0, "latency_ms": { "batch1": 1.0, "batch256": 2.0 }, "peak_rss_mb": 1.0,
                "wall_s": 1.0, "curves": curves
            }))
            .unwrap()
        };
        let a: &[Option<f64>] = &[Some(0.5), Some(0.7), Some(0.6)];
        let b: &[Option<f64>] = &[Some(0.4), Some(0.4), Some(0.45)];
        let values = |p: &PhaseSummary, hib: bool| kept_validation(p, hib).map(|s| s.values);
        assert_eq!(
            values(&phase("best_val_epoch", &[a, b]), true),
            Some(vec![0.7, 0.45])
        );
        assert_eq!(
            values(&phase("last_epoch", &[a, b]), true),
            Some(vec![0.6, 0.45])
        );
        assert_eq!(
            values(&phase("best_val_epoch", &[a, b]), false),
            Some(vec![0.5, 0.4])
        );
        let none: &[Option<f64>] = &[None, None];
        assert_eq!(values(&phase("last_epoch", &[a, none]), true), None);
    }

    #[test]
    fn compare_flags_only_beyond_noise() {
        let a = Report::new(vec![run("r", "accuracy", &[0.90], Some(1000))], None);
        // itself: nothing
        assert_eq!(compare(&a, &a, 3.0).flagged, 0);
        // 0.90 vs 0.91 on 1000 samples: python: f = lambda p, n: ((p*n+1)/(n+2)) * (1-(p*n+1)/(n+2)) / n;
        // math.sqrt(f(.9, 1000) + f(.91, 1000)) = 0.01316087; 3 SE = 0.039: within noise
        let b = Report::new(vec![run("r", "accuracy", &[0.91], Some(1000))], None);
        let c = compare(&a, &b, 3.0);
        assert_eq!(flagged(&c), Vec::<String>::new());
        let d = &c.runs[0].items[2];
        assert!(
            (d.delta - 0.01).abs() < 1e-12 && (d.se.unwrap() - 0.013_160_87).abs() < 1e-7,
            "{d:?}"
        );
        // 0.90 vs 0.96: flagged (distilled and scratch moved together, so the KD gain did not)
        let b = Report::new(vec![run("r", "accuracy", &[0.96], Some(1000))], None);
        assert_eq!(
            flagged(&compare(&a, &b, 3.0)),
            ["scratch accuracy", "distilled accuracy"]
        );
        // seeds' spread: [0.90, 0.96] vs [0.92, 0.94] is within noise
        let a3 = Report::new(vec![run("r", "accuracy", &[0.90, 0.96], Some(1000))], None);
        let b3 = Report::new(vec![run("r", "accuracy", &[0.92, 0.94], Some(1000))], None);
        assert_eq!(compare(&a3, &b3, 3.0).flagged, 0);
        // no noise estimate (one seed, no test set size): any change is flagged
        let a = Report::new(vec![run("r", "accuracy", &[0.90], None)], None);
        let b = Report::new(vec![run("r", "accuracy", &[0.9001], None)], None);
        assert_eq!(
            flagged(&compare(&a, &b, 3.0)),
            ["scratch accuracy", "distilled accuracy"]
        );
        // a run on one side only
        let b = Report::new(vec![run("other", "accuracy", &[0.90], None)], None);
        let c = compare(&a, &b, 3.0);
        assert_eq!((c.only_in_a.len(), c.only_in_b.len(), c.flagged), (1, 1, 2));
    }

    #[test]
    fn an_undefined_retention_reads_n_a() {
        // a teacher at 0 mAP (a smoke run): distilled / teacher is undefined, not "NaN"
        let mut r = run("smoke", "mAP", &[0.0], None);
        r.teacher.metric = Stat::of(&[0.0]);
        let table = summary_table(&Report::new(vec![r], None));
        let row = table.lines().last().unwrap();
        assert!(row.contains("| n/a |") && !row.contains("NaN"), "{row}");
    }

    #[test]
    fn the_header_sums_every_run_s_phases() {
        // two runs of three phases of 3 s each
        let r = Report::new(
            vec![
                run("a", "accuracy", &[0.9], None),
                run("b", "accuracy", &[0.9], None),
            ],
            None,
        );
        let md = bench_markdown(&r, &Err("no plots".into()));
        assert!(md.contains("· all runs 18.0s\n"), "{md}");
    }

    #[test]
    fn every_run_shows_where_it_was_made_and_copied_from() {
        let mut a = run("a", "accuracy", &[0.9], None);
        a.git_revision = Some("aaaaaaaaaaaa".into());
        // python: datetime.utcfromtimestamp(1795000000) = 2026-11-18 11:06:40
        a.finished_unix = Some(1_795_000_000);
        a.command = Some("distill bench --suite quick".into());
        let mut b = run("b", "accuracy", &[0.9], None);
        b.git_revision = Some("bbbbbbbbbbbb".into());
        b.copied_from = Some("/old/bench/b".into());
        let md = bench_markdown(
            &Report::new(vec![a, b], Some("cccccccccccc".into())),
            &Err("no plots".into()),
        );
        assert!(md.contains("assembled at git cccccccccccc"), "{md}");
        assert!(
            md.contains(
                "made at git aaaaaaaaaaaa, finished 2026-11-18 11:06 UTC, by `distill bench --suite quick`\n"
            ),
            "{md}"
        );
        assert!(
            md.contains("made at git bbbbbbbbbbbb; copied from /old/bench/b\n"),
            "{md}"
        );
    }

    /// The reports committed under docs/results/, written before runs carried their revision, time, command
    /// and copy mark, still load and render. The run records (`run.json`) beside them and
    /// the seeds' working folders are skipped.
    #[test]
    fn committed_reports_still_load() {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    // seed-*/ under a bench's output are its runs' working files (git ignores them).
                    if !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                    {
                        walk(&p, out);
                    }
                } else if p.extension().is_some_and(|x| x == "json")
                    && p.file_name()
                        .is_some_and(|n| n != distill_core::run_record::RUN_FILE)
                {
                    // run.json beside a report is the run's record (its recipe and hash), not a report.
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/results"),
            &mut files,
        );
        assert!(files.len() >= 10, "{files:?}");
        for f in files {
            let r = load(&f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
            assert!(!r.runs.is_empty(), "{}", f.display());
            let md = bench_markdown(&r, &Err("no plots".into()));
            assert!(md.contains("made at git "), "{}", f.display());
        }
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(distill_core::report::utc_date(0), "1970-01-01 00:00 UTC");
        // python: datetime.utcfromtimestamp(1795000000) = 2026-11-18 11:06:40
        assert_eq!(
            distill_core::report::utc_date(1_795_000_000),
            "2026-11-18 11:06 UTC"
        );
    }
}
