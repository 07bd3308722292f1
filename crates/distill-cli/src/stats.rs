//! The statistics of a bench report over seeds: the noise floor of a proportion metric, the standard error
//! of a mean, the per-seed KD gain and retention (used by `distill report compare` and the plots), the KD
//! gain with its bootstrap interval as the reports print it, and the kept weights' validation figure.

use distill_core::report::{PhaseSummary, RunReport, Stat};

/// Whether a run's metric is a proportion of its test samples (higher is better, every value in [0, 1], test
/// set size known): then a binomial floor applies to its noise.
fn proportion(run: &RunReport) -> Option<usize> {
    let n = run.test_samples.filter(|&n| n > 0)?;
    let all = [&run.teacher, &run.scratch, &run.distilled]
        .iter()
        .flat_map(|p| p.metric.values.iter())
        .all(|v| (0.0..=1.0).contains(v));
    (run.metric.higher_is_better && all).then_some(n)
}

/// The binomial variance floor of a metric value `p` of `run` (0 when the metric is not a proportion).
pub fn noise_floor(run: &RunReport, p: f64) -> f64 {
    match proportion(run) {
        Some(n) => {
            let n = n as f64;
            let pt = (p * n + 1.0) / (n + 2.0);
            pt * (1.0 - pt) / n
        }
        None => 0.0,
    }
}

/// Standard error of a mean over seeds: sqrt(max(seeds' variance, floor) / n).
pub fn standard_error(s: &Stat, floor: f64) -> f64 {
    let n = s.values.len().max(1) as f64;
    let var = if s.values.len() >= 2 {
        s.std * s.std
    } else {
        0.0
    };
    (var.max(floor) / n).sqrt()
}

/// KD gain per seed (distilled - scratch, sign flipped when lower is better), over seeds.
pub fn kd_gain_stat(run: &RunReport) -> Stat {
    let sign = if run.metric.higher_is_better {
        1.0
    } else {
        -1.0
    };
    let (d, s) = (&run.distilled.metric.values, &run.scratch.metric.values);
    if d.len() == s.len() && !d.is_empty() {
        Stat::of(
            &d.iter()
                .zip(s)
                .map(|(d, s)| sign * (d - s))
                .collect::<Vec<_>>(),
        )
    } else {
        Stat::of(&[run.derived.kd_gain])
    }
}

/// Retention per seed (distilled / teacher), over seeds.
pub fn retention_stat(run: &RunReport) -> Stat {
    let (d, t) = (&run.distilled.metric.values, &run.teacher.metric.values);
    if d.len() == t.len() && !d.is_empty() {
        Stat::of(
            &d.iter()
                .zip(t)
                .map(|(d, t)| if *t != 0.0 { d / t } else { f64::NAN })
                .collect::<Vec<_>>(),
        )
    } else {
        Stat::of(&[run.derived.retention])
    }
}

/// The KD gain of a run for the summary table: mean ± std over seeds, then the 95 % paired bootstrap interval
/// and `**beyond noise**` when it excludes 0 (runs without an interval show the gain alone).
pub fn fmt_kd_gain(r: &RunReport) -> String {
    let g = fmt_gain(&kd_gain_stat(r));
    match &r.kd_gain_interval {
        Some(i) => format!(
            "{g} [{:+.4}, {:+.4}]{}",
            i.lo,
            i.hi,
            if i.beyond_noise() {
                " **beyond noise**"
            } else {
                " within noise"
            }
        ),
        None => g,
    }
}

/// One line on a run's KD-gain interval for report.md.
pub fn kd_gain_interval_line(r: &RunReport) -> String {
    match &r.kd_gain_interval {
        Some(i) => format!(
            "KD gain {:+.4}, 95 % interval [{:+.4}, {:+.4}] (paired bootstrap over {} seed(s) × {} test \
             examples, {} resamples): {}",
            r.derived.kd_gain,
            i.lo,
            i.hi,
            i.seeds,
            i.examples,
            i.resamples,
            if i.beyond_noise() {
                "beyond noise (the interval excludes 0)"
            } else {
                "within noise (the interval includes 0)"
            }
        ),
        None => format!(
            "KD gain {:+.4}: no interval (the metric keeps no per-example test scores, or the run predates them); \
             not marked beyond noise",
            r.derived.kd_gain
        ),
    }
}

/// The validation metric of the weights a phase kept, over seeds: the best validation epoch's under early
/// stopping (the first best), else the last epoch's; `None` when a seed has no validation curve. This is the
/// figure a variant suite compares when it chooses a setting (docs/benchmarks.md).
pub fn kept_validation(p: &PhaseSummary, higher_is_better: bool) -> Option<Stat> {
    let best = p.headline.as_deref() == Some("best_val_epoch");
    let per_seed: Option<Vec<f64>> = p
        .curves
        .iter()
        .map(|c| {
            let vals = c.iter().filter_map(|e| e.val_metric);
            if best {
                vals.reduce(|a, b| {
                    let better = if higher_is_better { b > a } else { b < a };
                    if better {
                        b
                    } else {
                        a
                    }
                })
            } else {
                c.last().and_then(|e| e.val_metric)
            }
        })
        .collect();
    per_seed.filter(|v| !v.is_empty()).map(|v| Stat::of(&v))
}

/// A gain over seeds: mean ± std (the mean alone for one seed), `n/a` when undefined.
pub fn fmt_gain(s: &Stat) -> String {
    if !s.mean.is_finite() {
        "n/a".into()
    } else if s.values.len() > 1 {
        format!("{:+.4} ± {:.4}", s.mean, s.std)
    } else {
        format!("{:+.4}", s.mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(v: &[f64]) -> Stat {
        Stat::of(v)
    }

    #[test]
    fn standard_error_uses_the_larger_of_seed_variance_and_floor() {
        // seeds: std of [0.9, 0.92] = 0.0141421; SE = 0.0141421 / sqrt(2) = 0.01
        assert!((standard_error(&stat(&[0.9, 0.92]), 0.0) - 0.01).abs() < 1e-9);
        // one seed: only the floor; 0.98 on 10000 samples: p~ = 9801/10002, var = p~(1-p~)/10000
        let pt: f64 = 9801.0 / 10002.0;
        let floor = pt * (1.0 - pt) / 10000.0;
        assert!((standard_error(&stat(&[0.98]), floor) - floor.sqrt()).abs() < 1e-12);
        assert!((floor.sqrt() - 0.001_403_29).abs() < 1e-7); // python: sqrt(pt*(1-pt)/10000)
        assert_eq!(standard_error(&stat(&[0.98]), 0.0), 0.0);
    }
}
