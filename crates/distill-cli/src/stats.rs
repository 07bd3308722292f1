//! The statistics of a bench report over seeds: the noise floor of a proportion metric, the standard error
//! of a mean, and the per-seed KD gain and retention (used by `distill report compare` and the plots).

use distill_core::report::{RunReport, Stat};

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
