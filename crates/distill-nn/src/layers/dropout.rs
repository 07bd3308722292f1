//! Seeded inverted dropout.

use candle_core::Tensor;

use crate::{Mode, Result, Rng};

/// Inverted dropout with probability `p`, its mask drawn from the step seed in `mode` and `salt`
/// (a per-layer label). Identity in [`Mode::Eval`] or when `p == 0`.
pub fn dropout(x: &Tensor, p: f64, mode: Mode, salt: &str) -> Result<Tensor> {
    let Mode::Train { seed } = mode else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = Rng::derive(seed, &[&"dropout", &salt]);
    let keep = 1.0 - p as f32;
    let scale = 1.0 / keep;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.uniform_f32() < keep { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_keeps_expectation_and_is_seeded() -> Result<()> {
        let x = Tensor::ones((100, 100), DType::F32, &Device::Cpu)?;
        let y1 = dropout(&x, 0.5, Mode::Train { seed: 1 }, "h")?;
        let y2 = dropout(&x, 0.5, Mode::Train { seed: 1 }, "h")?;
        let y3 = dropout(&x, 0.5, Mode::Train { seed: 2 }, "h")?;
        let v1: Vec<f32> = y1.flatten_all()?.to_vec1()?;
        assert_eq!(v1, y2.flatten_all()?.to_vec1::<f32>()?);
        assert_ne!(v1, y3.flatten_all()?.to_vec1::<f32>()?);
        assert!(v1.iter().all(|&v| v == 0.0 || v == 2.0));
        let mean = v1.iter().sum::<f32>() / v1.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        let e: Vec<f32> = dropout(&x, 0.5, Mode::Eval, "h")?
            .flatten_all()?
            .to_vec1()?;
        assert!(e.iter().all(|&v| v == 1.0));
        Ok(())
    }
}
