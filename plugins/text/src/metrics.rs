//! Correlation metrics for sentence similarity, and the headline metric of each text task
//! ([`accuracy_metric`], [`spearman_metric`]).

use distill_core::task::MetricInfo;

// the correlations live in distill-core, which recomputes them on bootstrap resamples of the test pairs
pub use distill_core::stats::{pearson, ranks, spearman};

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
