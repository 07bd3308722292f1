//! `report.md` of `distill run`: the run report as Markdown tables.

use std::{fmt::Write, path::Path};

use anyhow::Result;
use distill_core::report::{Report, RunReport, Stat};

use crate::latency_text;

/// Writes `report.json` (checksummed) and `report.md` into `dir`.
pub fn write_report(report: &Report, dir: &Path) -> Result<()> {
    distill_core::checkpoint::write_json_atomic(report, &dir.join("report.json"))?;
    distill_core::checkpoint::write_atomic(
        &dir.join("report.md"),
        run_markdown(report).as_bytes(),
    )?;
    Ok(())
}

/// A run report as Markdown: one table per run (`report.md`).
pub fn run_markdown(report: &Report) -> String {
    let this = report;
    let mut s = String::new();
    let _ = writeln!(s, "# distill report\n");
    let _ = writeln!(
        s,
        "distill {} · report written at git {} · schema {}\n",
        this.distill_version,
        this.git_revision.as_deref().unwrap_or("unknown"),
        this.schema_version
    );
    for r in &this.runs {
        let _ = writeln!(
            s,
            "## {} ({}, {}{})\n\nseeds {:?}; metric: {} ({} is better)\n",
            r.recipe,
            r.plugin,
            r.dataset,
            if r.quick { ", quick" } else { "" },
            r.seeds,
            r.metric.name,
            if r.metric.higher_is_better {
                "higher"
            } else {
                "lower"
            }
        );
        let _ = writeln!(s, "{}\n", provenance(r));
        let extra_keys: Vec<&String> = r.teacher.extra.keys().collect();
        let mut header = format!("| | {} |", r.metric.name);
        for k in &extra_keys {
            header.push_str(&format!(" {k} |"));
        }
        header.push_str(&format!(
            " params | bytes | {} | {} | {} | wall (s) |",
            latency_text::batch_header(1),
            latency_text::batch_header(256),
            latency_text::MEMORY_HEADER
        ));
        let _ = writeln!(s, "{header}");
        let _ = writeln!(s, "|{}", "---|".repeat(8 + extra_keys.len()));
        for (name, p) in [
            ("teacher", &r.teacher),
            ("scratch", &r.scratch),
            ("distilled", &r.distilled),
        ] {
            let mut row = format!("| {name} | {} |", fmt_stat(&p.metric));
            for k in &extra_keys {
                row.push_str(&format!(
                    " {} |",
                    p.extra.get(*k).map(fmt_stat).unwrap_or_default()
                ));
            }
            let _ = writeln!(
                s,
                "{row} {} | {} | {} | {} | {} | {:.1} |",
                p.params,
                p.bytes,
                latency_text::batch_cell(&p.latency_ms, 1),
                latency_text::batch_cell(&p.latency_ms, 256),
                latency_text::memory_cell(p),
                p.wall_s
            );
        }
        let d = &r.derived;
        let _ = writeln!(
            s,
            "\ncompression {:.1}% · {} · retention {} · KD gain {:+.4}\n",
            d.compression * 100.0,
            latency_text::speedup_text(r),
            // undefined against a teacher that scored 0
            if d.retention.is_finite() {
                format!("{:.4}", d.retention)
            } else {
                "n/a".into()
            },
            d.kd_gain
        );
        let _ = writeln!(s, "{}\n", crate::stats::kd_gain_interval_line(r));
        for line in latency_text::whole_input_lines(r) {
            let _ = writeln!(s, "- {line}");
        }
        let _ = writeln!(s, "- {}", latency_text::method_note([r]));
        for (k, v) in &r.notes {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(s);
    }
    s
}

/// Where a run comes from, for report.md: the git revision and time it was made at, the command that made it,
/// and the directory it was copied from, each when known.
pub fn provenance(r: &RunReport) -> String {
    let mut s = format!(
        "made at git {}",
        r.git_revision.as_deref().unwrap_or("unknown")
    );
    if let Some(t) = r.finished_unix {
        let _ = write!(s, ", finished {}", distill_core::report::utc_date(t));
    }
    if let Some(c) = &r.command {
        let _ = write!(s, ", by `{c}`");
    }
    if let Some(c) = &r.copied_from {
        let _ = write!(s, "; copied from {c}");
    }
    s
}

fn fmt_stat(s: &Stat) -> String {
    if s.values.len() > 1 {
        format!("{:.4} ± {:.4}", s.mean, s.std)
    } else {
        format!("{:.4}", s.mean)
    }
}
