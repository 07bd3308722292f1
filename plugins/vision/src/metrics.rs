//! Evaluation figures of the vision plugin: the headline metric of every vision task ([`accuracy_metric`]).
//! Top-1/top-5 accuracy are counted by distill-core's one top-k ([`distill_core::task::topk_counts`]: a tie or
//! a NaN logit never counts as correct), which every classification plugin shares.

use distill_core::task::MetricInfo;

/// The headline metric of an image-classification task: top-1 accuracy, higher is better.
pub fn accuracy_metric() -> MetricInfo {
    MetricInfo {
        name: "accuracy".into(),
        higher_is_better: true,
    }
}
