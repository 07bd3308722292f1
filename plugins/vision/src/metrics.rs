//! Classification metrics on logits: distill-core's one top-k ([`distill_core::task::topk_counts`]), under the
//! names this plugin has always exported. A tie or a NaN logit never counts as correct. The headline metric
//! of every vision task is [`accuracy_metric`].

use candle_core::Tensor;
use distill_core::{task::MetricInfo, Result};

/// The headline metric of an image-classification task: top-1 accuracy, higher is better.
pub fn accuracy_metric() -> MetricInfo {
    MetricInfo {
        name: "accuracy".into(),
        higher_is_better: true,
    }
}

/// Number of samples whose target is among the `k` highest logits. `logits`: `[B, K]`; `targets`: `[B]`
/// class indices (any integer dtype), each `< K`.
pub fn topk_correct(logits: &Tensor, targets: &Tensor, k: usize) -> Result<usize> {
    Ok(distill_core::task::topk_counts(logits, targets, &[k])?[0])
}

/// Top-1 accuracy in `[0, 1]` (0 for an empty batch).
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> Result<f64> {
    topk_accuracy(logits, targets, 1)
}

pub use distill_core::task::topk_accuracy;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn topk_on_a_hand_made_example() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[
                [0.1f32, 0.9, 0.3, 0.5], // order 1, 3, 2, 0
                [2.0, 1.0, 0.0, -1.0],   // order 0, 1, 2, 3
                [0.0, 0.0, 5.0, 1.0],    // order 2, 3, then 0 and 1 tied
                [1.0, 1.0, 1.0, 1.0],    // all tied
            ],
            &dev,
        )?;
        // target ranks (others >= the target): row0 class 3 -> 1; row1 class 3 -> 3; row2 class 2 -> 0;
        // row3 class 2 -> 3 (three tied classes)
        let targets = Tensor::new(&[3u32, 3, 2, 2], &dev)?;
        assert_eq!(topk_correct(&logits, &targets, 1)?, 1);
        assert_eq!(topk_correct(&logits, &targets, 2)?, 2);
        assert_eq!(topk_correct(&logits, &targets, 3)?, 2);
        assert_eq!(topk_correct(&logits, &targets, 4)?, 4);
        assert_eq!(topk_correct(&logits, &targets, 10)?, 4);
        assert!((accuracy(&logits, &targets)? - 0.25).abs() < 1e-12);
        assert!((topk_accuracy(&logits, &targets, 2)? - 0.5).abs() < 1e-12);
        // a tie is never top-1 correct, whichever class argmax would pick
        let t0 = Tensor::new(&[1u32, 0, 2, 0], &dev)?;
        assert_eq!(topk_correct(&logits, &t0, 1)?, 3);
        // i64 targets work too.
        let t64 = Tensor::new(&[3i64, 3, 2, 2], &dev)?;
        assert_eq!(topk_correct(&logits, &t64, 2)?, 2);
        Ok(())
    }

    #[test]
    fn bad_inputs() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let t = Tensor::new(&[0u32, 5], &dev)?;
        assert!(topk_correct(&logits, &t, 1)
            .unwrap_err()
            .to_string()
            .contains("target class 5"));
        let t = Tensor::new(&[0u32], &dev)?;
        assert!(topk_correct(&logits, &t, 1).is_err());
        let t = Tensor::new(&[0u32, 1], &dev)?;
        assert!(topk_correct(&logits, &t, 0).is_err());
        let empty = Tensor::zeros((0, 3), DType::F32, &dev)?;
        let te = Tensor::zeros(0, DType::U32, &dev)?;
        assert_eq!(topk_correct(&empty, &te, 1)?, 0);
        assert_eq!(accuracy(&empty, &te)?, 0.0);
        Ok(())
    }
}
