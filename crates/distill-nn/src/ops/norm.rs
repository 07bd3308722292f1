//! Layer normalisation and batch normalisation (training mode, + ReLU) as single nodes.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------------------
// layer norm and softmax
// ---------------------------------------------------------------------------------------------------------

/// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · w + b` (biased variance, as PyTorch),
/// one node with its own backward on the CPU for `f32`; composed candle ops elsewhere.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let h = *x
        .dims()
        .last()
        .ok_or_else(|| Error::Shape("layer_norm: a scalar input".into()))?;
    if w.dims() != [h] || b.dims() != [h] {
        return Err(Error::Shape(format!(
            "layer_norm: input {:?} needs weight and bias [{h}], got {:?} and {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        )));
    }
    if fast(&[x, w, b]) && h > 0 {
        let xc = x.contiguous()?;
        return Ok(xc.apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp(eps as f32))?);
    }
    let d = candle_core::D::Minus1;
    let mean = x.mean_keepdim(d)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(d)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
}

/// Mean and `1 / sqrt(var + eps)` of a row.
pub(crate) fn row_stats(r: &[f32], eps: f32) -> (f32, f32) {
    let n = r.len() as f32;
    let mean = r.iter().sum::<f32>() / n;
    let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

pub(crate) struct LayerNormOp(f32);

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "distill-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer_norm input")?;
        let w = f32_slice(s2, l2, "layer_norm weight")?;
        let b = f32_slice(s3, l3, "layer_norm bias")?;
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, r)| {
                let (mean, rstd) = row_stats(r, self.0);
                for j in 0..h {
                    o[j] = (r[j] - mean) * rstd * w[j] + b[j];
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = w.dim(0)?;
        let rows = x.elem_count() / h;
        // one pass: [rows + 2, h] = the input's gradient, then the weight's, then the bias's
        let packed = x.apply_op3_no_bwd(&grad.contiguous()?, w, &LayerNormGrad(self.0))?;
        let gx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let gw = packed.narrow(0, rows, 1)?.reshape(h)?;
        let gb = packed.narrow(0, rows + 1, 1)?.reshape(h)?;
        let gw = if w.track_op() {
            param_grad(w, gw)
        } else {
            None
        };
        let gb = if b.track_op() {
            param_grad(b, gb)
        } else {
            None
        };
        Ok((x.track_op().then_some(gx), gw, gb))
    }
}

pub(crate) struct LayerNormGrad(f32);

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "distill-layer-norm-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer_norm input")?;
        let g = f32_slice(s2, l2, "layer_norm gradient")?;
        let w = f32_slice(s3, l3, "layer_norm weight")?;
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (gx, gwb) = out.split_at_mut(rows * h);
        // per-chunk partial sums of the weight and bias gradients, reduced after
        let chunk = 64;
        let partial: Vec<Vec<f32>> = gx
            .par_chunks_mut(h * chunk)
            .zip(x.par_chunks(h * chunk).zip(g.par_chunks(h * chunk)))
            .map(|(gx, (x, g))| {
                let mut acc = vec![0f32; 2 * h];
                let mut gw = vec![0f32; h];
                for ((o, r), gr) in gx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    let (mean, rstd) = row_stats(r, self.0);
                    let (mut s1, mut s2) = (0f32, 0f32);
                    for j in 0..h {
                        let xh = (r[j] - mean) * rstd;
                        gw[j] = gr[j] * w[j];
                        s1 += gw[j];
                        s2 += gw[j] * xh;
                        acc[j] += gr[j] * xh;
                        acc[h + j] += gr[j];
                    }
                    let (m1, m2) = (s1 / h as f32, s2 / h as f32);
                    for j in 0..h {
                        let xh = (r[j] - mean) * rstd;
                        o[j] = rstd * (gw[j] - m1 - xh * m2);
                    }
                }
                acc
            })
            .collect();
        for p in partial {
            for (o, v) in gwb.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

// ---------------------------------------------------------------------------------------------------------
// batch normalisation
// ---------------------------------------------------------------------------------------------------------

/// The per-channel map an evaluation-mode batch norm applies, `y = scale·x + shift`: `scale = γ / √(var + ε)`,
/// `shift = β − mean·scale` from the running statistics (γ = 1, β = 0 without an affine part). Detached: it is
/// for inference, where a convolution before the norm absorbs it ([`super::conv2d_bn`]).
pub fn batch_norm_affine(bn: &candle_nn::BatchNorm) -> Result<(Tensor, Tensor)> {
    let var = bn.running_var().detach();
    let mean = bn.running_mean().detach();
    let rstd = (var + bn.eps())?.sqrt()?.recip()?;
    Ok(match bn.weight_and_bias() {
        Some((gamma, beta)) => {
            let scale = gamma.detach().mul(&rstd)?;
            let shift = beta.detach().sub(&mean.mul(&scale)?)?;
            (scale, shift)
        }
        None => {
            let shift = mean.mul(&rstd)?.neg()?;
            (rstd, shift)
        }
    })
}

/// candle-nn's `BatchNorm` over `x` `[B, C, ...]`, optionally followed by ReLU, in training (`train`, batch
/// statistics; the running mean and variance are updated as candle-nn does) or evaluation mode (running
/// statistics). On f32 CPU tensors evaluation mode is one per-channel scale-and-shift op, and training mode
/// is one op too: the per-channel statistics, the scale and shift and the ReLU in one pass each, and a
/// backward pass that computes the input's, the scale's and the shift's gradients together (candle-nn
/// composes about fifteen nodes, each with its own backward). Elsewhere, and for a `BatchNorm` without scale
/// and shift, it is `bn.forward_t(x, train)`.
pub fn batch_norm(
    bn: &candle_nn::BatchNorm,
    x: &Tensor,
    train: bool,
    relu: bool,
) -> Result<Tensor> {
    use candle_nn::ModuleT;
    let c = bn.running_mean().elem_count();
    if x.rank() < 2 || x.dim(1)? != c {
        return Err(Error::Shape(format!(
            "batch_norm: input {:?} does not have the {c} channels (dimension 1) the layer normalises",
            x.dims()
        )));
    }
    let composed = |x: &Tensor| -> Result<Tensor> {
        let y = bn.forward_t(x, train)?;
        Ok(if relu { y.relu()? } else { y })
    };
    let Some((gamma, beta)) = bn.weight_and_bias() else {
        return composed(x);
    };
    if !fast(&[x, gamma, beta, bn.running_mean(), bn.running_var()]) {
        return composed(x);
    }
    if !train {
        let scale = gamma.div(&(bn.running_var() + bn.eps())?.sqrt()?)?;
        let shift = beta.sub(&bn.running_mean().mul(&scale)?)?;
        return Ok(x.contiguous()?.apply_op3(
            &scale.contiguous()?,
            &shift.contiguous()?,
            ChannelAffineOp { relu },
        )?);
    }
    let stats = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let op = BatchNormOp {
        eps: bn.eps(),
        relu,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    // the running statistics, as candle-nn updates them: the unbiased batch variance, momentum m
    let (mean, var) = {
        let s = stats
            .lock()
            .map_err(|_| Error::Shape("batch_norm: poisoned".into()))?;
        (s[..c].to_vec(), s[c..].to_vec())
    };
    let n = (x.elem_count() / c) as f64;
    let m = bn.momentum();
    let dev = x.device();
    let update = |running: &Tensor, batch: Vec<f32>, scale: f64| -> Result<()> {
        let batch = Tensor::from_vec(batch, c, dev)?;
        let new = ((running * (1.0 - m))? + (batch * (m * scale))?)?;
        candle_core::Var::from_tensor(running)?.set(&new)?;
        Ok(())
    };
    update(bn.running_mean(), mean, 1.0)?;
    update(
        bn.running_var(),
        var,
        if n > 1.0 { n / (n - 1.0) } else { 1.0 },
    )?;
    Ok(y)
}

/// Training-mode batch normalisation `(x − μ_c)/√(σ²_c + ε)·γ_c + β_c` (+ ReLU). `stats` receives the batch
/// means and (biased) variances, `[μ (C) | σ² (C)]`, for the running statistics.
pub(crate) struct BatchNormOp {
    eps: f64,
    relu: bool,
    stats: std::sync::Arc<std::sync::Mutex<Vec<f32>>>,
}

/// `(batch, channels, elements per channel plane)` of a `[B, C, ...]` shape.
pub(crate) fn bn_dims(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.dims();
    (d[0], d[1], d[2..].iter().product())
}

/// Lanes of a vectorised sum.
const LANES: usize = 16;

/// `(Σ f(v).0, Σ f(v).1)` over `xs`: 16 f32 partial sums per term (vectorised), added up in f64. Within a
/// plane (a few hundred values) f32 partials lose nothing that matters; planes are summed in f64.
#[inline]
fn lane_sums(xs: &[f32], f: impl Fn(f32) -> (f32, f32)) -> (f64, f64) {
    lane_sums2(xs, xs, |v, _| f(v))
}

/// [`lane_sums`] over two slices of the same length.
#[inline]
fn lane_sums2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut p, mut q) = ([0f32; LANES], [0f32; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..LANES {
            let (u, v) = f(xa[l], xb[l]);
            p[l] += u;
            q[l] += v;
        }
    }
    let (mut s, mut t) = (
        p.iter().map(|&v| v as f64).sum::<f64>(),
        q.iter().map(|&v| v as f64).sum::<f64>(),
    );
    for (&xa, &xb) in ra.iter().zip(rb) {
        let (u, v) = f(xa, xb);
        s += u as f64;
        t += v as f64;
    }
    (s, t)
}

/// Per-channel `(mean, biased variance)` of `x` `[B, C, plane]`: vectorised f32 partial sums per plane,
/// f64 across planes.
pub(crate) fn channel_stats(x: &[f32], b: usize, c: usize, plane: usize) -> Vec<(f32, f32)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0f64, 0f64);
            for bi in 0..b {
                let (ps, ps2) = lane_sums(&x[(bi * c + ch) * plane..][..plane], |v| (v, v * v));
                s += ps;
                s2 += ps2;
            }
            let n = (b * plane) as f64;
            let mean = s / n;
            (mean as f32, (s2 / n - mean * mean).max(0.0) as f32)
        })
        .collect()
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "distill-batch-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "batch_norm input")?;
        let gamma = f32_slice(s2, l2, "batch_norm weight")?;
        let beta = f32_slice(s3, l3, "batch_norm bias")?;
        let (b, c, plane) = bn_dims(l1.shape());
        let st = channel_stats(x, b, c, plane);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(plane.max(1))
            .zip(x.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(p, (o, xi))| {
                let ch = p % c;
                let (mean, var) = st[ch];
                let scale = gamma[ch] / (var + self.eps as f32).sqrt();
                let shift = beta[ch] - mean * scale;
                if self.relu {
                    o.iter_mut()
                        .zip(xi)
                        .for_each(|(o, v)| *o = (v * scale + shift).max(0.0));
                } else {
                    o.iter_mut()
                        .zip(xi)
                        .for_each(|(o, v)| *o = v * scale + shift);
                }
            });
        if let Ok(mut s) = self.stats.lock() {
            *s = st
                .iter()
                .map(|s| s.0)
                .chain(st.iter().map(|s| s.1))
                .collect();
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        let packed = x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &BatchNormGrad {
                eps: self.eps,
                gamma: gamma.clone(),
                res: self.relu.then(|| res.clone()),
                want_x: x.track_op(),
            },
        )?;
        let gg = gamma
            .track_op()
            .then(|| packed.narrow(0, 0, c))
            .transpose()?
            .and_then(|g| param_grad(gamma, g));
        let gb = beta
            .track_op()
            .then(|| packed.narrow(0, c, c))
            .transpose()?
            .and_then(|g| param_grad(beta, g));
        let gx = x
            .track_op()
            .then(|| packed.narrow(0, 2 * c, x.elem_count())?.reshape(x.shape()))
            .transpose()?;
        Ok((gx, gg, gb))
    }
}

/// Evaluation-mode batch norm as a per-channel affine map `x·s_c + t_c` (+ ReLU), `s` and `t` `[C]`
/// computed from the running statistics by the caller (so their gradients reach γ and β through candle).
pub(crate) struct ChannelAffineOp {
    relu: bool,
}

impl CustomOp3 for ChannelAffineOp {
    fn name(&self) -> &'static str {
        "distill-channel-affine"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "batch_norm input")?;
        let scale = f32_slice(s2, l2, "batch_norm scale")?;
        let shift = f32_slice(s3, l3, "batch_norm shift")?;
        let (_, c, plane) = bn_dims(l1.shape());
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(plane.max(1))
            .zip(x.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(p, (o, xi))| {
                let (s, t) = (scale[p % c], shift[p % c]);
                if self.relu {
                    o.iter_mut()
                        .zip(xi)
                        .for_each(|(o, v)| *o = (v * s + t).max(0.0));
                } else {
                    o.iter_mut().zip(xi).for_each(|(o, v)| *o = v * s + t);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // composed: rarely needed (evaluation-mode layers are not usually trained through)
        let c = scale.elem_count();
        let mut bshape = vec![1; x.rank()];
        bshape[1] = c;
        let g = if self.relu {
            grad.apply_op2_no_bwd(res, &ReluGrad)?
        } else {
            grad.clone()
        };
        let sum_but_channel = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.transpose(0, 1)?.flatten_from(1)?.sum(1)
        };
        let gx = x
            .track_op()
            .then(|| g.broadcast_mul(&scale.reshape(bshape.as_slice())?))
            .transpose()?;
        let gs = scale
            .track_op()
            .then(|| sum_but_channel(&(&g * x)?))
            .transpose()?;
        let gt = shift.track_op().then(|| sum_but_channel(&g)).transpose()?;
        Ok((gx, gs, gt))
    }
}

/// The gradients of training-mode batch normalisation from the input and the output's gradient, packed as
/// `[gγ (C) | gβ (C) | gx (only when wanted)]`:
/// `gx = γ/σ · (g − mean(g) − x̂·mean(g·x̂))` per channel, with `g` masked by the ReLU when there is one.
pub(crate) struct BatchNormGrad {
    eps: f64,
    gamma: Tensor,
    res: Option<Tensor>,
    want_x: bool,
}

impl CustomOp2 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "distill-batch-norm-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "batch_norm input")?;
        let g = f32_slice(s2, l2, "batch_norm gradient")?;
        let masked;
        let g: &[f32] = match &self.res {
            Some(res) => {
                let (rs, rl) = res.storage_and_layout();
                let candle_core::Storage::Cpu(rs) = &*rs else {
                    candle_core::bail!("batch_norm gradient: the output is not on the CPU")
                };
                masked = relu_masked(g, f32_slice(rs, rl, "batch_norm output")?);
                &masked
            }
            None => g,
        };
        let (gs, gl) = self.gamma.storage_and_layout();
        let candle_core::Storage::Cpu(gs) = &*gs else {
            candle_core::bail!("batch_norm gradient: the weight is not on the CPU")
        };
        let gamma = f32_slice(gs, gl, "batch_norm weight")?;
        let (b, c, plane) = bn_dims(l1.shape());
        let n = (b * plane) as f32;
        let st = channel_stats(x, b, c, plane);
        let rstd: Vec<f32> = st
            .iter()
            .map(|s| 1.0 / (s.1 + self.eps as f32).sqrt())
            .collect();
        // per channel: Σg and Σg·x̂
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, r) = (st[ch].0, rstd[ch]);
                let (mut sg, mut sgx) = (0f64, 0f64);
                for bi in 0..b {
                    let at = (bi * c + ch) * plane;
                    let (a, bsum) = lane_sums2(&g[at..at + plane], &x[at..at + plane], |gv, xv| {
                        (gv, gv * (xv - mean) * r)
                    });
                    sg += a;
                    sgx += bsum;
                }
                (sg as f32, sgx as f32)
            })
            .collect();
        let mut out = vec![0f32; 2 * c + if self.want_x { x.len() } else { 0 }];
        let (head, gx) = out.split_at_mut(2 * c);
        for (ch, s) in sums.iter().enumerate() {
            head[ch] = s.1;
            head[c + ch] = s.0;
        }
        if self.want_x {
            gx.par_chunks_mut(plane.max(1))
                .enumerate()
                .for_each(|(p, o)| {
                    let ch = p % c;
                    let (mean, r) = (st[ch].0, rstd[ch]);
                    let (mg, mgx) = (sums[ch].0 / n, sums[ch].1 / n);
                    let k = gamma[ch] * r;
                    let at = p * plane;
                    for ((o, gv), xv) in o.iter_mut().zip(&g[at..]).zip(&x[at..]) {
                        *o = k * (gv - mg - (xv - mean) * r * mgx);
                    }
                });
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}
