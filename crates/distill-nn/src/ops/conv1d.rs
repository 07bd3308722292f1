//! A 1-D convolution for any plugin (time series, audio frames, token sequences), on the fused 2-D kernel.
//!
//! candle 0.11.1's CPU `conv1d` returns a wrong kernel gradient (its finite differences disagree; the test
//! below keeps checking that, so a fixed candle is noticed), which silently stalls training. This one runs the
//! fused [`super::conv2d`] over `[B, C, 1, L]` — values and gradients tested against the composed ops — with
//! the padding applied to the length axis only.

use candle_core::Tensor;

use crate::{Error, Result};

/// PyTorch's `F.conv1d(x, w, b, stride, padding)` without dilation or groups: `x` `[B, C, L]`, `w` `[O, C, K]`,
/// optional bias `[O]`, zero padding on both ends of the length axis; returns `[B, O, L_out]` with
/// `L_out = (L + 2·padding − K) / stride + 1`. Differentiable in `x`, `w` and `b`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// # fn main() -> distill_nn::Result<()> {
/// let x = Tensor::new(&[[[1f32, 2., 3., 4.]]], &Device::Cpu)?; // [1, 1, 4]
/// let w = Tensor::new(&[[[1f32, -1.]]], &Device::Cpu)?; // [1, 1, 2]: a difference filter
/// let y = distill_nn::ops::conv1d(&x, &w, None, 1, 0)?;
/// assert_eq!(y.to_vec3::<f32>()?, vec![vec![vec![-1f32, -1., -1.]]]);
/// # Ok(()) }
/// ```
pub fn conv1d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_, c, l) = x.dims3().map_err(|_| {
        Error::Shape(format!(
            "conv1d: input must be [B, C, L], got {:?}",
            x.dims()
        ))
    })?;
    let (_, ci, k) = w.dims3().map_err(|_| {
        Error::Shape(format!(
            "conv1d: kernel must be [O, C, K], got {:?}",
            w.dims()
        ))
    })?;
    if ci != c || stride == 0 || l + 2 * padding < k {
        return Err(Error::Shape(format!(
            "conv1d: input {:?} does not fit kernel {:?} (stride {stride}, padding {padding})",
            x.dims(),
            w.dims()
        )));
    }
    let x = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
    } else {
        x.clone()
    };
    let y = super::conv2d(&x.unsqueeze(2)?, &w.unsqueeze(2)?, b, stride, 0)?;
    Ok(y.squeeze(2)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::Rng;

    fn randn(shape: &[usize], seed: u64) -> Var {
        let mut rng = Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    type Conv<'a> = dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a;

    /// The largest relative error between the autograd gradient of `sum(conv(x, w, b) · r)` with respect to
    /// `w` (and `x`, `b`) and central finite differences in f64 of the same sum, over every element.
    fn worst_gradient_error(conv: &Conv) -> (f64, f64, f64) {
        let (x, w, b) = (randn(&[2, 3, 11], 1), randn(&[4, 3, 3], 2), randn(&[4], 3));
        let y = conv(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let r = randn(y.dims(), 4);
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
            let y = conv(x, w, b)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap();
            let r = r.as_tensor().to_dtype(candle_core::DType::F64).unwrap();
            (y * r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let total = (&y * r.as_tensor()).unwrap().sum_all().unwrap();
        let grads = total.backward().unwrap();
        let check = |v: &Var, which: usize| -> f64 {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let mut worst = 0f64;
            for i in 0..base.len() {
                let eps = 1e-2f32;
                let mut plus = base.clone();
                plus[i] += eps;
                let mut minus = base.clone();
                minus[i] -= eps;
                let t = |vals: Vec<f32>| Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap();
                let (p, m) = match which {
                    0 => (
                        loss(&t(plus), w.as_tensor(), b.as_tensor()),
                        loss(&t(minus), w.as_tensor(), b.as_tensor()),
                    ),
                    1 => (
                        loss(x.as_tensor(), &t(plus), b.as_tensor()),
                        loss(x.as_tensor(), &t(minus), b.as_tensor()),
                    ),
                    _ => (
                        loss(x.as_tensor(), w.as_tensor(), &t(plus)),
                        loss(x.as_tensor(), w.as_tensor(), &t(minus)),
                    ),
                };
                let fd = (p - m) / (2.0 * eps as f64);
                let err = (fd - g[i] as f64).abs() / fd.abs().max(1.0);
                worst = worst.max(err);
            }
            worst
        };
        (check(&x, 0), check(&w, 1), check(&b, 2))
    }

    #[test]
    fn conv1d_gradients_match_finite_differences_and_candles_kernel_gradient_does_not() {
        for (stride, padding) in [(1, 0), (1, 1), (2, 2)] {
            let ours = move |x: &Tensor, w: &Tensor, b: &Tensor| {
                super::conv1d(x, w, Some(b), stride, padding)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            };
            let (ex, ew, eb) = worst_gradient_error(&ours);
            println!(
                "ops::conv1d stride {stride} padding {padding}: x {ex:.1e}, w {ew:.1e}, b {eb:.1e}"
            );
            assert!(
                ex < 1e-3 && ew < 1e-3 && eb < 1e-3,
                "stride {stride} padding {padding}: ours x {ex:.2e}, w {ew:.2e}, b {eb:.2e}"
            );
            // the values equal candle's own conv1d
            let (x, w, b) = (randn(&[2, 3, 11], 1), randn(&[4, 3, 3], 2), randn(&[4], 3));
            let a = super::conv1d(
                x.as_tensor(),
                w.as_tensor(),
                Some(b.as_tensor()),
                stride,
                padding,
            )
            .unwrap();
            let c = x
                .as_tensor()
                .conv1d(w.as_tensor(), padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.as_tensor().reshape((1, 4, 1)).unwrap())
                .unwrap();
            let diff = (a - c)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "values differ from candle's by {diff}");
        }
        // candle 0.11.1's CPU conv1d: its kernel gradient disagrees with finite differences
        let candle = |x: &Tensor, w: &Tensor, b: &Tensor| {
            x.conv1d(w, 0, 1, 1, 1)?
                .broadcast_add(&b.reshape((1, b.dims()[0], 1))?)
        };
        let (_, ew, _) = worst_gradient_error(&candle);
        println!("candle 0.11.1 conv1d: worst relative error of the kernel gradient {ew:.3e}");
        assert!(
            ew > 1e-2,
            "candle's conv1d kernel gradient now matches finite differences (worst error {ew:.2e}): the upstream \
             fix has landed; ops::conv1d may delegate to it"
        );
    }
}
