//! Latency and memory figures in report text: one format for `report.md` of a run and of a bench and for
//! `distill check --latency`, with the protocol and the memory method stated where the figures are.

use std::collections::{BTreeMap, BTreeSet};

use distill_core::report::{Latency, PhaseSummary, RunReport, Timing};

/// Milliseconds with three significant-ish digits (0.052, 2.31, 27.4).
pub fn ms(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x < 1.0 {
        format!("{x:.3}")
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

fn median_p90(t: &Timing) -> String {
    format!("{} / {}", ms(t.median_ms), ms(t.p90_ms))
}

/// A table cell for batch `b`: `median / p90` at one thread, then on all cores; just the median for a report
/// written before the protocol (its only figure).
pub fn batch_cell(l: &Latency, b: usize) -> String {
    match (l.batch(b, Some(1)), l.batch(b, None)) {
        (Some(one), Some(all)) if l.all_cores() > 1 => {
            format!("{} · {}", median_p90(one), median_p90(all))
        }
        (Some(one), _) => median_p90(one),
        _ => ms(if b == 1 { l.batch1 } else { l.batch256 }),
    }
}

/// The header of a [`batch_cell`] column.
pub fn batch_header(b: usize) -> String {
    format!("latency b{b} (ms, median / p90: 1 thread · all cores)")
}

/// A peak-memory cell: the phase's peak, and what the phase itself added where the report has it.
pub fn memory_cell(p: &PhaseSummary) -> String {
    match p.peak_rss_own_mb {
        Some(own) => format!("{:.0} (+{:.0})", p.peak_rss_mb, own),
        None => format!("{:.0}", p.peak_rss_mb),
    }
}

/// The header of a [`memory_cell`] column.
pub const MEMORY_HEADER: &str = "peak RSS (MiB; + the phase's own)";

/// One line per whole input timed (the graph plugin's whole graph), each phase's figures.
pub fn whole_input_lines(r: &RunReport) -> Vec<String> {
    let mut out = Vec::new();
    for t in r
        .teacher
        .latency_ms
        .whole_inputs()
        .filter(|t| t.threads == 1)
    {
        let name = t.input.as_deref().unwrap_or_default();
        let figures: Vec<String> = [
            ("teacher", &r.teacher),
            ("scratch", &r.scratch),
            ("distilled", &r.distilled),
        ]
        .iter()
        .map(|(phase, p)| {
            let pick = |one: bool| {
                p.latency_ms
                    .whole_inputs()
                    .find(|u| u.input == t.input && (u.threads == 1) == one)
                    .map(median_p90)
                    .unwrap_or_else(|| "n/a".into())
            };
            format!("{phase} {} · {}", pick(true), pick(false))
        })
        .collect();
        out.push(format!(
            "latency of the {name} ({} items in one pass; ms, median / p90: 1 thread · all cores): {}",
            t.batch,
            figures.join("; ")
        ));
    }
    out
}

/// Speed-ups (ratios of medians) on all cores and, where measured, on one thread.
pub fn speedup_text(r: &RunReport) -> String {
    let d = &r.derived;
    let mut s = format!(
        "speed-up {:.2}× (batch 256), {:.2}× (batch 1)",
        d.speedup, d.speedup_batch1
    );
    if let (Some(b256), Some(b1)) = (d.speedup_1thread, d.speedup_batch1_1thread) {
        s = format!("{s} on all cores, {b256:.2}× and {b1:.2}× on 1 thread");
    }
    s
}

/// How the latency and memory figures of `runs` were measured, for the text around the tables: the
/// protocol, the unit of a batch item, the all-core thread count, the load average and the memory method.
pub fn method_note<'a>(runs: impl IntoIterator<Item = &'a RunReport>) -> String {
    // each unit with the recipes that use it
    let mut units: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let (mut cores, mut load, mut any) = (0, None::<f64>, false);
    // the fewest passes of any setting (--quick runs take fewer)
    let mut fewest: Option<(usize, usize)> = None;
    for r in runs {
        for p in [&r.teacher, &r.scratch, &r.distilled] {
            let l = &p.latency_ms;
            any |= !l.timings.is_empty();
            for t in &l.timings {
                if fewest.is_none_or(|(_, reps)| t.reps < reps) {
                    fewest = Some((t.warmup, t.reps));
                }
            }
            cores = cores.max(l.all_cores());
            if let Some(v) = l.load_avg {
                load = Some(load.map_or(v, |m: f64| m.max(v)));
            }
            if let Some(u) = &l.unit {
                units.entry(u.clone()).or_default().insert(r.recipe.clone());
            }
        }
    }
    if !any {
        return "Latency: median of the timed passes at batch 1 and 256 on all cores (a report written before \
                the latency protocol: no p90, no one-thread figure). Peak RSS: the process's high-water mark."
            .into();
    }
    let units: Vec<String> = units
        .iter()
        .map(|(u, recipes)| {
            let recipes: Vec<&str> = recipes.iter().map(String::as_str).collect();
            format!("{u} ({})", recipes.join(", "))
        })
        .collect();
    let protocol = match fewest {
        Some((warmup, reps)) if reps < distill_core::train::REPS => format!(
            "{} — except that some runs here are --quick smoke runs, timed with {warmup} warm-up and {reps} \
             timed passes per setting (their latencies are rough)",
            distill_core::train::LATENCY_PROTOCOL
        ),
        _ => distill_core::train::LATENCY_PROTOCOL.to_string(),
    };
    format!(
        "Latency protocol: {}; all cores = {cores} threads; a batch item is a {}; highest 1-minute load average \
         when a measurement started: {}. Memory: {}.",
        protocol,
        units.join(", a "),
        load.map_or("n/a".into(), |l| format!("{l:.2}")),
        distill_core::train::MEMORY_METHOD
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(batch: usize, threads: usize, median_ms: f64, p90_ms: f64) -> Timing {
        Timing {
            batch,
            threads,
            median_ms,
            p90_ms,
            reps: 30,
            warmup: 3,
            ..Timing::default()
        }
    }

    #[test]
    fn cells_show_both_thread_settings_and_old_reports_their_median() {
        let l = Latency {
            batch1: 0.05,
            batch256: 2.5,
            timings: vec![
                timing(1, 1, 0.06, 0.07),
                timing(1, 2, 0.05, 0.09),
                timing(256, 1, 4.0, 4.4),
                timing(256, 2, 2.5, 3.25),
            ],
            unit: Some("sample".into()),
            load_avg: Some(0.5),
        };
        assert_eq!(batch_cell(&l, 1), "0.060 / 0.070 · 0.050 / 0.090");
        assert_eq!(batch_cell(&l, 256), "4.00 / 4.40 · 2.50 / 3.25");
        let old = Latency {
            batch1: 0.05,
            batch256: 27.0,
            ..Latency::default()
        };
        assert_eq!(batch_cell(&old, 256), "27.0");
        assert_eq!(batch_cell(&old, 1), "0.050");
    }
}
