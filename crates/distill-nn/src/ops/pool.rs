//! 2-D max-pooling with its own backward pass.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;
use crate::{Error, Result};

/// Max-pooling with a square `k × k` window and stride `k` over `[B, C, H, W]` (rows and columns that do
/// not fill a window are dropped, as candle and PyTorch do). The backward pass sends each gradient to the
/// first maximum of its window (PyTorch's choice), found again from the input, instead of candle's
/// upsample/compare/average construction.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "max_pool2d: input must be [B, C, H, W], got {:?}",
            x.dims()
        ))
    })?;
    if k == 0 || h < k || w < k {
        return Err(Error::Shape(format!(
            "max_pool2d: window {k} does not fit input {:?}",
            x.dims()
        )));
    }
    if !fast(&[x]) {
        return Ok(x.max_pool2d(k)?);
    }
    Ok(x.contiguous()?.apply_op1(MaxPoolOp(k))?)
}

pub(crate) struct MaxPoolOp(usize);

impl candle_core::CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "distill-max-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "max_pool2d input")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let k = self.0;
        let (oh, ow) = (h / k, w / k);
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(o, plane)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for dy in 0..k {
                            let row = &plane[(oy * k + dy) * w + ox * k..][..k];
                            for &v in row {
                                if v > m || v.is_nan() {
                                    m = v;
                                }
                            }
                        }
                        o[oy * ow + ox] = m;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPoolGrad(self.0),
        )?))
    }
}

pub(crate) struct MaxPoolGrad(usize);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "distill-max-pool2d-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "max_pool2d input")?;
        let g = f32_slice(s2, l2, "max_pool2d gradient")?;
        let (_, _, h, w) = l1.shape().dims4()?;
        let k = self.0;
        let (oh, ow) = (h / k, w / k);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(g.par_chunks(oh * ow)))
            .for_each(|(o, (plane, gp))| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = (oy * k) * w + ox * k;
                        let mut m = f32::NEG_INFINITY;
                        for dy in 0..k {
                            for dx in 0..k {
                                let at = (oy * k + dy) * w + ox * k + dx;
                                let v = plane[at];
                                if v > m || (v.is_nan() && !m.is_nan()) {
                                    m = v;
                                    best = at;
                                }
                            }
                        }
                        o[best] += gp[oy * ow + ox];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
