//! Correlation metrics for sentence similarity, and the headline metric of each text task
//! ([`accuracy_metric`], [`spearman_metric`]).

use distill_core::task::MetricInfo;

/// Ranks of `x` (1-based), ties sharing their average rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation; 0 when either side is constant or the inputs are empty.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (a, b) = (x[i] - mx, y[i] - my);
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Spearman rank correlation (Pearson of the tie-averaged ranks), as `scipy.stats.spearmanr`.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// The metric of a classification task.
pub fn accuracy_metric() -> MetricInfo {
    MetricInfo {
        name: "accuracy".into(),
        higher_is_better: true,
    }
}

/// The metric of a pair-similarity task.
pub fn spearman_metric() -> MetricInfo {
    MetricInfo {
        name: "spearman".into(),
        higher_is_better: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0]), vec![2.0, 3.5, 3.5, 1.0]);
    }

    #[test]
    fn spearman_matches_scipy() {
        // scipy.stats.spearmanr([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 6]).statistic = 0.8696565534786727
        // scipy.stats.pearsonr([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]).statistic = 0.7745966692414835
        let s = spearman(&[1., 2., 3., 4., 5., 6.], &[2., 1., 4., 3., 6., 6.]);
        assert!((s - 0.8696565534786727).abs() < 1e-12, "{s}");
        let p = pearson(&[1., 2., 3., 4., 5.], &[2., 4., 5., 4., 5.]);
        assert!((p - 0.7745966692414835).abs() < 1e-12, "{p}");
        assert_eq!(spearman(&[1., 1., 1.], &[1., 2., 3.]), 0.0);
        assert!((spearman(&[3., 2., 1.], &[1., 2., 3.]) + 1.0).abs() < 1e-12);
    }
}
