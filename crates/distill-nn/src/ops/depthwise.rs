//! Depthwise 2-D convolution: one filter per channel.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------------------
// depthwise convolution
// ---------------------------------------------------------------------------------------------------------

/// Depthwise 2-D convolution: `x` `[B, C, H, W]`, `weight` `[C, 1, kh, kw]` (one filter per channel, as
/// PyTorch's `Conv2d(C, C, k, groups=C)`), zero `padding` `(rows, cols)` and `stride` `(rows, cols)`. On f32
/// CPU tensors it is one op, forward and backward, each a direct loop over the channel planes in parallel;
/// elsewhere it is [`depthwise_conv2d_composed`] (shifted slices, the same mathematics).
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    padding: (usize, usize),
    stride: (usize, usize),
) -> Result<Tensor> {
    if !fast(&[x, weight]) {
        return depthwise_conv2d_composed(x, weight, padding, stride);
    }
    let geo = DwGeo::new(x.dims(), weight.dims(), padding, stride)?;
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, DepthwiseOp(geo))?)
}

/// The shapes of one depthwise convolution.
#[derive(Clone, Copy)]
pub(crate) struct DwGeo {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
    sh: usize,
    sw: usize,
    oh: usize,
    ow: usize,
}

impl DwGeo {
    fn new(
        x: &[usize],
        wt: &[usize],
        padding: (usize, usize),
        stride: (usize, usize),
    ) -> Result<Self> {
        let (&[b, c, h, w], &[wc, one, kh, kw]) = (x, wt) else {
            return Err(Error::Shape(format!(
                "depthwise_conv2d: input must be [B, C, H, W] and weight [C, 1, kh, kw], got {x:?} and {wt:?}"
            )));
        };
        if wc != c || one != 1 {
            return Err(Error::Shape(format!(
                "depthwise_conv2d: weight {wt:?} does not fit input {x:?} (expected [{c}, 1, kh, kw])"
            )));
        }
        let (sh, sw) = (stride.0.max(1), stride.1.max(1));
        let (hp, wp) = (h + 2 * padding.0, w + 2 * padding.1);
        if kh == 0 || kw == 0 || hp < kh || wp < kw {
            return Err(Error::Shape(format!(
                "depthwise_conv2d: kernel {kh}x{kw} does not fit the padded input {hp}x{wp}"
            )));
        }
        Ok(Self {
            b,
            c,
            h,
            w,
            kh,
            kw,
            ph: padding.0,
            pw: padding.1,
            sh,
            sw,
            oh: (hp - kh) / sh + 1,
            ow: (wp - kw) / sw + 1,
        })
    }

    /// Calls `f(tap, out_start, in_start, len)` for every kernel tap and output row: the `len` outputs from
    /// `out_start` (consecutive) read the inputs from `in_start` every `sw`-th element, all inside the image.
    #[inline]
    fn spans(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        for j in 0..self.kw {
            // outputs ox with 0 <= ox*sw + j - pw < w
            let lo = self.pw.saturating_sub(j).div_ceil(self.sw);
            let hi = (self.w + self.pw)
                .saturating_sub(j)
                .div_ceil(self.sw)
                .min(self.ow);
            if lo >= hi {
                continue;
            }
            for i in 0..self.kh {
                let t = i * self.kw + j;
                for oy in 0..self.oh {
                    let y = oy * self.sh + i;
                    if y < self.ph || y - self.ph >= self.h {
                        continue;
                    }
                    let start = (y - self.ph) * self.w + lo * self.sw + j - self.pw;
                    f(t, oy * self.ow + lo, start, hi - lo);
                }
            }
        }
    }
}

/// `out[..n] += a * x[0], x[s], x[2s], ...` (vectorised when `s == 1`).
#[inline]
pub(crate) fn axpy_strided(out: &mut [f32], a: f32, x: &[f32], s: usize) {
    if s == 1 {
        out.iter_mut().zip(x).for_each(|(o, v)| *o += a * v);
    } else {
        out.iter_mut()
            .zip(x.iter().step_by(s))
            .for_each(|(o, v)| *o += a * v);
    }
}

/// `Σ y[k] * x[k * s]` over `y`.
#[inline]
pub(crate) fn dot_strided(y: &[f32], x: &[f32], s: usize) -> f32 {
    if s == 1 {
        y.iter().zip(x).map(|(a, b)| a * b).sum()
    } else {
        y.iter().zip(x.iter().step_by(s)).map(|(a, b)| a * b).sum()
    }
}

pub(crate) struct DepthwiseOp(DwGeo);

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "distill-depthwise-conv2d"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = f32_slice(s1, l1, "depthwise_conv2d input")?;
        let wt = f32_slice(s2, l2, "depthwise_conv2d weight")?;
        let (plane, oplane, k) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
        let mut out = vec![0f32; g.b * g.c * oplane];
        out.par_chunks_mut(oplane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(p, (o, xi))| {
                let wc = &wt[(p % g.c) * k..][..k];
                g.spans(|t, o0, i0, n| axpy_strided(&mut o[o0..o0 + n], wc[t], &xi[i0..], g.sw));
            });
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.c, g.oh, g.ow))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.0;
        let (want_x, want_w) = (x.track_op(), w.track_op());
        if !want_x && !want_w {
            return Ok((None, None));
        }
        let k = g.c * g.kh * g.kw;
        let packed = x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &DepthwiseGrad {
                geo: g,
                w: w.clone(),
                want_x,
            },
        )?;
        let gw = if want_w {
            param_grad(w, packed.narrow(0, 0, k)?.reshape(w.shape())?)
        } else {
            None
        };
        let gx = if want_x {
            Some(packed.narrow(0, k, x.elem_count())?.reshape(x.shape())?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// The gradients of a depthwise convolution from the input and the output's gradient, packed as
/// `[gw (C·kh·kw) | gx (B·C·H·W, only when wanted)]`.
pub(crate) struct DepthwiseGrad {
    geo: DwGeo,
    w: Tensor,
    want_x: bool,
}

impl CustomOp2 for DepthwiseGrad {
    fn name(&self) -> &'static str {
        "distill-depthwise-conv2d-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geo;
        let x = f32_slice(s1, l1, "depthwise_conv2d input")?;
        let gy = f32_slice(s2, l2, "depthwise_conv2d gradient")?;
        let (wst, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(ws) = &*wst else {
            candle_core::bail!("depthwise_conv2d gradient: the weight is not on the CPU")
        };
        let wt = f32_slice(ws, wl, "depthwise_conv2d weight")?;
        let (plane, oplane, k) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
        let mut out = vec![0f32; g.c * k + if self.want_x { x.len() } else { 0 }];
        let (gw, gx) = out.split_at_mut(g.c * k);
        // per-plane weight gradients, then summed over the batch per channel
        let mut gw_planes = vec![0f32; g.b * g.c * k];
        let run = |p: usize, gwp: &mut [f32], gxi: Option<&mut [f32]>| {
            let (xi, gyi) = (&x[p * plane..][..plane], &gy[p * oplane..][..oplane]);
            g.spans(|t, o0, i0, n| gwp[t] += dot_strided(&gyi[o0..o0 + n], &xi[i0..], g.sw));
            if let Some(gxi) = gxi {
                let wc = &wt[(p % g.c) * k..][..k];
                g.spans(|t, o0, i0, n| {
                    let a = wc[t];
                    if g.sw == 1 {
                        gxi[i0..i0 + n]
                            .iter_mut()
                            .zip(&gyi[o0..o0 + n])
                            .for_each(|(d, v)| *d += a * v);
                    } else {
                        gxi[i0..]
                            .iter_mut()
                            .step_by(g.sw)
                            .zip(&gyi[o0..o0 + n])
                            .for_each(|(d, v)| *d += a * v);
                    }
                });
            }
        };
        if self.want_x {
            gw_planes
                .par_chunks_mut(k)
                .zip(gx.par_chunks_mut(plane))
                .enumerate()
                .for_each(|(p, (gwp, gxi))| run(p, gwp, Some(gxi)));
        } else {
            gw_planes
                .par_chunks_mut(k)
                .enumerate()
                .for_each(|(p, gwp)| run(p, gwp, None));
        }
        for (p, gwp) in gw_planes.chunks(k).enumerate() {
            let dst = &mut gw[(p % g.c) * k..][..k];
            dst.iter_mut().zip(gwp).for_each(|(d, s)| *d += s);
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Depthwise 2-D convolution: `x` `[B, C, H, W]`, `weight` `[C, 1, kh, kw]` (one filter per channel, as a
/// PyTorch `Conv2d(C, C, k, groups=C)` stores it), zero `padding` (rows, columns) and `stride` (rows, columns).
///
/// Computed as a sum of `kh * kw` shifted, per-channel-scaled copies of the input, which on CPU is much faster
/// than candle's grouped `conv2d` (one small convolution per channel) and has the same autograd. [`depthwise_conv2d`] is
/// the fused op on f32 CPU tensors, which falls back to this elsewhere.
pub fn depthwise_conv2d_composed(
    x: &Tensor,
    weight: &Tensor,
    padding: (usize, usize),
    stride: (usize, usize),
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 {
        return Err(Error::Shape(format!(
            "depthwise_conv2d: weight {:?} does not fit input {:?} (expected [{c}, 1, kh, kw])",
            weight.dims(),
            x.dims()
        )));
    }
    let (sh, sw) = (stride.0.max(1), stride.1.max(1));
    let (hp, wp) = (h + 2 * padding.0, w + 2 * padding.1);
    if hp < kh || wp < kw {
        return Err(Error::Shape(format!(
            "depthwise_conv2d: kernel {kh}x{kw} is larger than the padded input {hp}x{wp}"
        )));
    }
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    let xp = x
        .pad_with_zeros(2, padding.0, padding.0)?
        .pad_with_zeros(3, padding.1, padding.1)?;
    let pick = |t: Tensor, dim: usize, start: usize, n: usize, s: usize| -> Result<Tensor> {
        if s == 1 {
            Ok(t.narrow(dim, start, n)?)
        } else {
            let idx: Vec<u32> = (0..n).map(|i| (start + i * s) as u32).collect();
            let idx = Tensor::new(idx.as_slice(), t.device())?;
            Ok(t.contiguous()?.index_select(&idx, dim)?)
        }
    };
    let mut out: Option<Tensor> = None;
    for i in 0..kh {
        let rows = pick(xp.clone(), 2, i, ho, sh)?;
        for j in 0..kw {
            let patch = pick(rows.clone(), 3, j, wo, sw)?;
            let k = weight
                .narrow(2, i, 1)?
                .narrow(3, j, 1)?
                .reshape((1, c, 1, 1))?;
            let term = patch.broadcast_mul(&k)?;
            out = Some(match out {
                None => term,
                Some(o) => (o + term)?,
            });
        }
    }
    let out = out.expect("kernel has at least one tap");
    debug_assert_eq!(out.dims(), [b, c, ho, wo]);
    Ok(out)
}

#[cfg(test)]
mod composed_tests {
    use super::*;
    use crate::Rng;
    use candle_core::{Device, Var};

    #[test]
    fn depthwise_conv_matches_candles_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let (b, c, h, w) = (2, 5, 9, 7);
        let x = Tensor::from_vec(rand(b * c * h * w), (b, c, h, w), &dev)?;
        for (k, pad, stride) in [(3, 1, 1), (3, 1, 2), (5, 2, 1), (3, 0, 2), (1, 0, 1)] {
            let wt = Tensor::from_vec(rand(c * k * k), (c, 1, k, k), &dev)?;
            let ours = depthwise_conv2d_composed(&x, &wt, (pad, pad), (stride, stride))?;
            let reference = x.conv2d(&wt, pad, stride, 1, c)?;
            assert_eq!(ours.dims(), reference.dims(), "k{k} p{pad} s{stride}");
            let d = (ours - reference)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(d < 1e-4, "k{k} p{pad} s{stride}: max diff {d}");
        }
        // gradients flow to the weight: d/dw sum(dw(x, w)) for a 1x1 kernel is the per-channel input sum
        let wv = Var::from_tensor(&Tensor::ones((c, 1, 1, 1), DType::F32, &dev)?)?;
        let y = depthwise_conv2d_composed(&x, wv.as_tensor(), (0, 0), (1, 1))?.sum_all()?;
        let g = y.backward()?;
        let gw: Vec<f32> = g
            .get(wv.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1()?;
        let want: Vec<f32> = x.sum((0, 2, 3))?.to_vec1()?;
        for (a, b) in gw.iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert!(depthwise_conv2d_composed(
            &x,
            &Tensor::zeros((4, 1, 3, 3), DType::F32, &dev)?,
            (1, 1),
            (1, 1)
        )
        .is_err());
        Ok(())
    }
}
