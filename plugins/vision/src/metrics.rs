//! Classification metrics on logits.
//!
//! The rank of the target class is the number of classes that beat it: those with a larger logit, plus
//! those with an *equal* logit and a smaller class index. This is the position the target takes in a stable
//! descending sort, so ties are resolved exactly as `argmax` resolves them (first maximum wins) and top-1
//! agrees with `argmax(logits) == target`. A sample is top-k correct when its rank is `< k`.

use candle_core::{DType, Tensor, D};
use distill_core::{Error, Result};

/// Number of samples whose target is among the `k` highest logits. `logits`: `[B, K]`; `targets`: `[B]`
/// class indices (any integer dtype), each `< K`.
pub fn topk_correct(logits: &Tensor, targets: &Tensor, k: usize) -> Result<usize> {
    let (b, classes) = logits.dims2().map_err(|_| {
        Error::Shape(format!(
            "top-k expects [B, classes] logits, got {:?}",
            logits.dims()
        ))
    })?;
    if targets.dims() != [b] {
        return Err(Error::Shape(format!(
            "top-k expects [{b}] targets for logits {:?}, got {:?}",
            logits.dims(),
            targets.dims()
        )));
    }
    if k == 0 {
        return Err(Error::msg("top-k needs k >= 1"));
    }
    if b == 0 {
        return Ok(0);
    }
    let targets = targets.to_dtype(DType::U32)?;
    let max_target = targets.max(0)?.to_scalar::<u32>()?;
    if max_target as usize >= classes {
        return Err(Error::Shape(format!(
            "target class {max_target} out of range for {classes} logits"
        )));
    }
    if k >= classes {
        return Ok(b);
    }
    let logits = logits.to_dtype(DType::F32)?;
    let idx = targets.unsqueeze(1)?; // [B, 1]
    let target_logit = logits.gather(&idx, 1)?; // [B, 1]
    let above = logits.broadcast_gt(&target_logit)?; // [B, K] u8
    let equal = logits.broadcast_eq(&target_logit)?;
    let class_ids = Tensor::arange(0u32, classes as u32, logits.device())?.unsqueeze(0)?; // [1, K]
    let before = class_ids.broadcast_lt(&idx)?; // [B, K]: class index < target index
    let rank = (above.to_dtype(DType::U32)?
        + (equal.to_dtype(DType::U32)? * before.to_dtype(DType::U32)?)?)?
    .sum(D::Minus1)?; // [B]
    let correct = rank
        .lt(k as u32)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?;
    Ok(correct as usize)
}

/// Top-1 accuracy in `[0, 1]` (0 for an empty batch).
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> Result<f64> {
    topk_accuracy(logits, targets, 1)
}

/// Top-`k` accuracy in `[0, 1]` (0 for an empty batch).
pub fn topk_accuracy(logits: &Tensor, targets: &Tensor, k: usize) -> Result<f64> {
    let n = targets.elem_count();
    let correct = topk_correct(logits, targets, k)?;
    Ok(if n == 0 {
        0.0
    } else {
        correct as f64 / n as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn topk_on_a_hand_made_example() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[
                [0.1f32, 0.9, 0.3, 0.5], // order 1, 3, 2, 0
                [2.0, 1.0, 0.0, -1.0],   // order 0, 1, 2, 3
                [0.0, 0.0, 5.0, 1.0],    // order 2, 3, 0, 1
                [1.0, 1.0, 1.0, 1.0],    // all tied: ranks = class index
            ],
            &dev,
        )?;
        // target ranks: row0 class 3 -> 1; row1 class 3 -> 3; row2 class 2 -> 0; row3 class 2 -> 2
        let targets = Tensor::new(&[3u32, 3, 2, 2], &dev)?;
        assert_eq!(topk_correct(&logits, &targets, 1)?, 1);
        assert_eq!(topk_correct(&logits, &targets, 2)?, 2);
        assert_eq!(topk_correct(&logits, &targets, 3)?, 3);
        assert_eq!(topk_correct(&logits, &targets, 4)?, 4);
        assert_eq!(topk_correct(&logits, &targets, 10)?, 4);
        assert!((accuracy(&logits, &targets)? - 0.25).abs() < 1e-12);
        assert!((topk_accuracy(&logits, &targets, 2)? - 0.5).abs() < 1e-12);
        // Ties resolve like argmax (first maximum): class 0 of the tied row is top-1 correct.
        let t0 = Tensor::new(&[1u32, 0, 2, 0], &dev)?;
        assert_eq!(topk_correct(&logits, &t0, 1)?, 4);
        let argmax: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        assert_eq!(argmax, [1, 0, 2, 0]);
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
