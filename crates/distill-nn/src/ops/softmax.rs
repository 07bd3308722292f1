//! Softmax over the last dimension, and the cross-entropy and temperature-scaled KL divergence as single
//! nodes.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;
use crate::Result;

// ---------------------------------------------------------------------------------------------------------
// losses
// ---------------------------------------------------------------------------------------------------------

/// Row-wise softmax of `x / t` into `out` and the row's `log Σ exp(x/t − max)` + max (its log-normaliser).
pub(crate) fn softmax_row(x: &[f32], t: f32, out: &mut [f32]) -> f32 {
    let inv = 1.0 / t;
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * inv));
    let mut sum = 0f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let e = (v * inv - max).exp();
        *o = e;
        sum += e;
    }
    let r = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= r);
    max + sum.ln()
}

pub(crate) fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("cross-entropy: class ids must be a contiguous u32 tensor"),
    }
}

/// Mean cross-entropy of `[N, C]` logits against `[N]` u32 class ids, as one node: `None` unless the logits
/// are `f32` on the CPU (the caller then uses the composed version). The caller checks shapes and the id
/// range.
pub fn cross_entropy(logits: &Tensor, ids: &Tensor) -> Result<Option<Tensor>> {
    if !fast(&[logits]) || logits.rank() != 2 || ids.dtype() != DType::U32 {
        return Ok(None);
    }
    Ok(Some(
        logits
            .contiguous()?
            .apply_op2(&ids.contiguous()?, CrossEntropy)?,
    ))
}

pub(crate) struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "distill-cross-entropy"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "cross-entropy logits")?;
        let ids = u32_slice(s2, l2)?;
        let mut buf = vec![0f32; c];
        let mut total = 0f64;
        for (row, &id) in x.chunks(c).zip(ids) {
            let lse = softmax_row(row, 1.0, &mut buf);
            total += (lse - row[id as usize]) as f64;
        }
        Ok((
            CpuStorage::F32(vec![(total / n.max(1) as f64) as f32]),
            Shape::from(()),
        ))
    }
    fn bwd(
        &self,
        logits: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_scalar::<f32>()?;
        Ok((Some(logits.apply_op2_no_bwd(ids, &CeGrad(g))?), None))
    }
}

/// `g · (softmax(x) − onehot(id)) / N`.
pub(crate) struct CeGrad(f32);

impl CustomOp2 for CeGrad {
    fn name(&self) -> &'static str {
        "distill-ce-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "cross-entropy logits")?;
        let ids = u32_slice(s2, l2)?;
        let scale = self.0 / n.max(1) as f32;
        let mut out = vec![0f32; n * c];
        for ((o, row), &id) in out.chunks_mut(c).zip(x.chunks(c)).zip(ids) {
            softmax_row(row, 1.0, o);
            o[id as usize] -= 1.0;
            o.iter_mut().for_each(|v| *v *= scale);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `T² · KL(softmax(t/T) ‖ softmax(s/T))` summed over classes and averaged over the `N` rows of `[N, C]`
/// logits, as one node with gradient `T·(q − p)/N` for the student: `None` unless both are `f32` on the CPU
/// and the teacher's logits need no gradient (the caller then uses the composed version).
pub fn kd_kl(student: &Tensor, teacher: &Tensor, t: f64) -> Result<Option<Tensor>> {
    if !fast(&[student, teacher]) || student.rank() != 2 || teacher.track_op() {
        return Ok(None);
    }
    Ok(Some(
        student
            .contiguous()?
            .apply_op2(&teacher.contiguous()?, KdKl(t as f32))?,
    ))
}

pub(crate) struct KdKl(f32);

impl CustomOp2 for KdKl {
    fn name(&self) -> &'static str {
        "distill-kd-kl"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let s = f32_slice(s1, l1, "kd student logits")?;
        let t = f32_slice(s2, l2, "kd teacher logits")?;
        let (mut q, mut p) = (vec![0f32; c], vec![0f32; c]);
        let inv = 1.0 / self.0;
        let mut total = 0f64;
        for (sr, tr) in s.chunks(c).zip(t.chunks(c)) {
            let lq = softmax_row(sr, self.0, &mut q);
            let lp = softmax_row(tr, self.0, &mut p);
            // log p_j − log q_j = (t_j/T − lp) − (s_j/T − lq)
            let mut row = 0f64;
            for j in 0..c {
                if p[j] > 0.0 {
                    let d = (tr[j] * inv - lp) - (sr[j] * inv - lq);
                    row += (p[j] * d) as f64;
                }
            }
            total += row;
        }
        let scale = (self.0 as f64).powi(2) / n.max(1) as f64;
        Ok((
            CpuStorage::F32(vec![(total * scale) as f32]),
            Shape::from(()),
        ))
    }
    fn bwd(
        &self,
        s: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_scalar::<f32>()?;
        Ok((Some(s.apply_op2_no_bwd(t, &KdGrad(self.0, g))?), None))
    }
}

/// `g · T · (softmax(s/T) − softmax(t/T)) / N`.
pub(crate) struct KdGrad(f32, f32);

impl CustomOp2 for KdGrad {
    fn name(&self) -> &'static str {
        "distill-kd-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let s = f32_slice(s1, l1, "kd student logits")?;
        let t = f32_slice(s2, l2, "kd teacher logits")?;
        let scale = self.1 * self.0 / n.max(1) as f32;
        let mut out = vec![0f32; n * c];
        let mut p = vec![0f32; c];
        for ((o, sr), tr) in out.chunks_mut(c).zip(s.chunks(c)).zip(t.chunks(c)) {
            softmax_row(sr, self.0, o);
            softmax_row(tr, self.0, &mut p);
            for (o, &p) in o.iter_mut().zip(&p) {
                *o = (*o - p) * scale;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension (max-subtracted), one node with backward `y ⊙ (g − Σ g⊙y)` on the CPU
/// for `f32`; composed candle ops elsewhere.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if fast(&[x]) && x.rank() > 0 && x.elem_count() > 0 {
        return Ok(x.contiguous()?.apply_op1(SoftmaxOp)?);
    }
    let d = candle_core::D::Minus1;
    let m = x.max_keepdim(d)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(d)?)?)
}

pub(crate) struct SoftmaxOp;

impl candle_core::CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "distill-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax input")?;
        let h = *l.dims().last().expect("rank > 0");
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h.max(1))
            .zip(x.par_chunks(h.max(1)))
            .for_each(|(o, r)| {
                softmax_row(r, 1.0, o);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op2_no_bwd(res, &SoftmaxGrad)?,
        ))
    }
}

pub(crate) struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "distill-softmax-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, "softmax gradient")?;
        let y = f32_slice(s2, l2, "softmax output")?;
        let h = (*l1.dims().last().expect("rank > 0")).max(1);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(h)
            .zip(g.par_chunks(h).zip(y.par_chunks(h)))
            .for_each(|(o, (g, y))| {
                let dot: f32 = g.iter().zip(y).map(|(a, b)| a * b).sum();
                for j in 0..o.len() {
                    o[j] = y[j] * (g[j] - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// softplus sum
// ---------------------------------------------------------------------------------------------------------

/// `Σ softplus(a·x + b)` over every element of `x`, as one node (CRD's noise-contrastive terms over a
/// `[B, K]` score matrix, which composed ops would walk a dozen times): `None` unless `x` is `f32` on the
/// CPU (the caller then composes it). The gradient is `a · sigmoid(a·x + b)` times the incoming one.
pub fn softplus_sum(x: &Tensor, a: f64, b: f64) -> Result<Option<Tensor>> {
    if !fast(&[x]) {
        return Ok(None);
    }
    Ok(Some(
        x.contiguous()?.apply_op1(SoftplusSum(a as f32, b as f32))?,
    ))
}

/// `softplus(z) = max(z, 0) + ln(1 + e^−|z|)`, without overflow; `ln(1 + e)` for `e < 1e-3` (most of CRD's
/// negatives) by its series `e − e²/2 + e³/3`, exact in f32 there and without libm's scalar `log1pf`.
fn softplus_f32(z: f32) -> f32 {
    let e = (-z.abs()).exp();
    let log1p = if e < 1e-3 {
        e * (1.0 - e * (0.5 - e / 3.0))
    } else {
        e.ln_1p()
    };
    z.max(0.0) + log1p
}

struct SoftplusSum(f32, f32);

impl candle_core::CustomOp1 for SoftplusSum {
    fn name(&self) -> &'static str {
        "distill-softplus-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softplus_sum")?;
        let (a, b) = (self.0, self.1);
        let total: f64 = x
            .par_chunks(16 * 1024)
            .map(|c| {
                c.iter()
                    .map(|&v| softplus_f32(a * v + b) as f64)
                    .sum::<f64>()
            })
            .sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.to_scalar::<f32>()?;
        Ok(Some(
            x.apply_op1_no_bwd(&SoftplusSumGrad(self.0, self.1, g))?,
        ))
    }
}

/// `g · a · sigmoid(a·x + b)`, elementwise.
struct SoftplusSumGrad(f32, f32, f32);

impl candle_core::CustomOp1 for SoftplusSumGrad {
    fn name(&self) -> &'static str {
        "distill-softplus-sum-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softplus_sum gradient")?;
        let (a, b, g) = (self.0, self.1, self.2);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(16 * 1024)
            .zip(x.par_chunks(16 * 1024))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = g * a / (1.0 + (-(a * v + b)).exp());
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}
