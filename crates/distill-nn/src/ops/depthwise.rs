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
    Ok(x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        DepthwiseOp {
            geo,
            bias: None,
            relu: false,
        },
    )?)
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

impl DwGeo {
    /// The convolution of `x` with `wt`, channel planes in parallel; each plane starts from its channel's
    /// `bias` (else zeros) and ends with ReLU when `relu`.
    fn forward(
        &self,
        x: &[f32],
        wt: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> (CpuStorage, Shape) {
        let g = *self;
        let (plane, oplane, k) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
        let mut out = vec![0f32; g.b * g.c * oplane];
        out.par_chunks_mut(oplane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (p, (o, xi))| {
                let ch = p % g.c;
                let b = bias.map_or(0.0, |b| b[ch]);
                g.plane(xi, &wt[ch * k..][..k], b, relu, scratch, o);
            });
        (CpuStorage::F32(out), Shape::from((g.b, g.c, g.oh, g.ow)))
    }

    /// One channel plane `xi` convolved with its filter `wc`, plus `bias`, ReLU'd when `relu`, into `out`
    /// (`oh x ow`); `scratch` is reused between planes.
    fn plane(
        &self,
        xi: &[f32],
        wc: &[f32],
        bias: f32,
        relu: bool,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) {
        if self.sh == 1 && self.sw == 1 {
            return self.plane_stride1(xi, wc, bias, relu, scratch, out);
        }
        out.fill(bias);
        self.spans(|t, o0, i0, n| axpy_strided(&mut out[o0..o0 + n], wc[t], &xi[i0..], self.sw));
        if relu {
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }

    /// The padded plane's width, and the length of the `wp`-wide output layout of the stride-1 paths: rows
    /// `oy` span `wp` columns, the last one only the `ow` it needs.
    fn stride1_layout(&self) -> (usize, usize) {
        let wp = self.w + 2 * self.pw;
        (wp, (self.oh - 1) * wp + self.ow)
    }

    /// `xi` copied into `pad`, a zero-padded `hp x wp` plane.
    fn pad_plane(&self, xi: &[f32], pad: &mut Vec<f32>) {
        let (hp, wp) = (self.h + 2 * self.ph, self.w + 2 * self.pw);
        pad.clear();
        pad.resize(hp * wp, 0.0);
        for (y, row) in xi.chunks_exact(self.w).enumerate() {
            pad[(y + self.ph) * wp + self.pw..][..self.w].copy_from_slice(row);
        }
    }

    /// One channel plane at stride 1: the input copied once into a zero-padded plane, then each kernel tap
    /// is one long contiguous multiply-add over the output laid out `wp` wide (the last `kw − 1` columns of
    /// each row are never read); finally the valid columns, plus `bias`, ReLU'd when `relu`, into `out`. Long
    /// vectorised loops instead of a short one per tap and output row.
    fn plane_stride1(
        &self,
        xi: &[f32],
        wc: &[f32],
        bias: f32,
        relu: bool,
        sc: &mut Scratch,
        out: &mut [f32],
    ) {
        let g = self;
        let (wp, len) = g.stride1_layout();
        g.pad_plane(xi, &mut sc.pad);
        let acc = &mut sc.wide;
        acc.clear();
        acc.resize(len, bias);
        for i in 0..g.kh {
            for j in 0..g.kw {
                let a = wc[i * g.kw + j];
                let src = &sc.pad[i * wp + j..][..len];
                acc.iter_mut().zip(src).for_each(|(o, v)| *o += a * v);
            }
        }
        for (oy, row) in out.chunks_exact_mut(g.ow).enumerate() {
            let src = &acc[oy * wp..][..g.ow];
            if relu {
                row.iter_mut().zip(src).for_each(|(o, v)| *o = v.max(0.0));
            } else {
                row.copy_from_slice(src);
            }
        }
    }
}

/// Inference with a depthwise convolution followed by an evaluation-mode batch norm (and ReLU when `relu`),
/// folded into one pass per channel plane: the kernel scaled by the norm's per-channel scale, the plane started
/// from its shift, the ReLU at its end ([`super::batch_norm_affine`]). Nothing is recorded for autograd
/// (inference only). Arguments as [`depthwise_conv2d`]; off the fast path, the composed ops on the folded
/// weights.
pub fn depthwise_conv2d_bn(
    x: &Tensor,
    weight: &Tensor,
    bn: &candle_nn::BatchNorm,
    padding: (usize, usize),
    stride: (usize, usize),
    relu: bool,
) -> Result<Tensor> {
    let (w, b) = fold_bn(weight, None, bn)?;
    let x = x.detach();
    if !fast(&[&x, &w, &b]) {
        let c = b.elem_count();
        let y = depthwise_conv2d_composed(&x, &w, padding, stride)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
        return Ok(if relu { y.relu()? } else { y });
    }
    let geo = DwGeo::new(x.dims(), w.dims(), padding, stride)?;
    let op = DepthwiseOp {
        geo,
        bias: Some(b.to_vec1::<f32>()?),
        relu,
    };
    Ok(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?)
}

/// Inference with a whole depthwise-separable block, `relu(bn_pw(pw(relu(bn_dw(dw(x))))))`, both batch norms
/// folded into their convolutions: per image (images in parallel), the depthwise planes go into a scratch
/// buffer that stays in cache and the pointwise 1x1 convolution is one GEMM from it into the output, with
/// the bias and the ReLU. The intermediate map is never written to memory, and the output is the block's only
/// allocation. Nothing is recorded for autograd (inference only). `dw` `[C, 1, k, k]`, `pw` a 1x1
/// convolution `C -> O` without groups, stride or padding; off the fast path, [`depthwise_conv2d_bn`] then
/// [`super::conv2d_bn`].
#[allow(clippy::too_many_arguments)]
pub fn depthwise_separable_bn(
    x: &Tensor,
    dw: &Tensor,
    bn_dw: &candle_nn::BatchNorm,
    padding: (usize, usize),
    stride: (usize, usize),
    pw: &candle_nn::Conv2d,
    bn_pw: &candle_nn::BatchNorm,
) -> Result<Tensor> {
    let cfg = pw.config();
    let pointwise = matches!(pw.weight().dims(), &[_, _, 1, 1])
        && (cfg.groups, cfg.dilation, cfg.stride, cfg.padding) == (1, 1, 1, 0);
    if !pointwise || !fast(&[x, dw, pw.weight()]) {
        let y = depthwise_conv2d_bn(x, dw, bn_dw, padding, stride, true)?;
        return super::conv2d_bn(pw, bn_pw, &y, true);
    }
    let (dw_w, dw_b) = fold_bn(dw, None, bn_dw)?;
    let (pw_w, pw_b) = fold_bn(pw.weight(), pw.bias(), bn_pw)?;
    let x = x.detach();
    let geo = DwGeo::new(x.dims(), dw_w.dims(), padding, stride)?;
    let (o, c) = (pw_w.dim(0)?, pw_w.dim(1)?);
    if c != geo.c {
        return Err(Error::Shape(format!(
            "depthwise-separable block: the pointwise kernel {:?} does not take the {} depthwise channels",
            pw_w.dims(),
            geo.c
        )));
    }
    let op = SeparableBnOp {
        geo,
        o,
        dw_w: dw_w.flatten_all()?.to_vec1()?,
        dw_b: dw_b.to_vec1()?,
        pw_w: pw_w.flatten_all()?.to_vec1()?,
        pw_b: pw_b.to_vec1()?,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&op)?)
}

/// [`depthwise_separable_bn`]'s op: forward only, the folded weights as plain vectors.
struct SeparableBnOp {
    geo: DwGeo,
    o: usize,
    dw_w: Vec<f32>,
    dw_b: Vec<f32>,
    pw_w: Vec<f32>,
    pw_b: Vec<f32>,
}

impl candle_core::CustomOp1 for SeparableBnOp {
    fn name(&self) -> &'static str {
        "distill-depthwise-separable-bn"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "depthwise-separable block input")?;
        let g = self.geo;
        let (plane, n, k, o) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw, self.o);
        let mut out = vec![0f32; g.b * o * n];
        out.par_chunks_mut(o * n)
            .zip(x.par_chunks(g.c * plane))
            .for_each_init(
                || (vec![0f32; g.c * n], Scratch::default()),
                |(mid, scratch), (y, xi)| {
                    for ((ch, xp), mp) in xi
                        .chunks_exact(plane)
                        .enumerate()
                        .zip(mid.chunks_exact_mut(n))
                    {
                        g.plane(
                            xp,
                            &self.dw_w[ch * k..][..k],
                            self.dw_b[ch],
                            true,
                            scratch,
                            mp,
                        );
                    }
                    for (row, &b) in y.chunks_exact_mut(n).zip(&self.pw_b) {
                        row.fill(b);
                    }
                    // y[o, n] += pw[o, c] · mid[c, n]
                    super::conv::gemm1(
                        o,
                        n,
                        g.c,
                        y,
                        true,
                        &self.pw_w,
                        g.c as isize,
                        1,
                        mid,
                        n as isize,
                        1,
                    );
                    y.iter_mut().for_each(|v| *v = v.max(0.0));
                },
            );
        Ok((CpuStorage::F32(out), Shape::from((g.b, o, g.oh, g.ow))))
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

/// The depthwise convolution op; with a per-channel `bias` and `relu` only for inference
/// ([`depthwise_conv2d_bn`], applied without a backward pass).
pub(crate) struct DepthwiseOp {
    geo: DwGeo,
    bias: Option<Vec<f32>>,
    relu: bool,
}

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
        let x = f32_slice(s1, l1, "depthwise_conv2d input")?;
        let wt = f32_slice(s2, l2, "depthwise_conv2d weight")?;
        Ok(self.geo.forward(x, wt, self.bias.as_deref(), self.relu))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.bias.is_some() || self.relu {
            candle_core::bail!("depthwise_conv2d: the folded inference op has no backward pass")
        }
        let g = self.geo;
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

/// Per-thread buffers of the stride-1 paths: the padded input plane, the `wp`-wide layout (the forward
/// pass's output, the backward pass's output gradient), the padded input gradient.
#[derive(Default)]
struct Scratch {
    pad: Vec<f32>,
    wide: Vec<f32>,
    gpad: Vec<f32>,
}

impl DwGeo {
    /// The gradients of one channel plane at stride 1, the adjoint of [`DwGeo::plane_stride1`]: in the
    /// padded, `wp`-wide layout each tap's weight gradient is one long dot product of the output gradient
    /// with the shifted padded input, and the input gradient one long multiply-add of the output gradient
    /// into the shifted padded input gradient (the layout's spare columns hold zeros, so they add nothing).
    fn plane_grad_stride1(
        &self,
        xi: &[f32],
        gyi: &[f32],
        wc: &[f32],
        gwp: &mut [f32],
        gxi: Option<&mut [f32]>,
        sc: &mut Scratch,
    ) {
        let g = self;
        let (wp, len) = g.stride1_layout();
        g.pad_plane(xi, &mut sc.pad);
        let gy = &mut sc.wide;
        gy.clear();
        gy.resize(len, 0.0);
        for (oy, row) in gyi.chunks_exact(g.ow).enumerate() {
            gy[oy * wp..][..g.ow].copy_from_slice(row);
        }
        for i in 0..g.kh {
            for j in 0..g.kw {
                let src = &sc.pad[i * wp + j..][..len];
                gwp[i * g.kw + j] += gy.iter().zip(src).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        let Some(gxi) = gxi else { return };
        sc.gpad.clear();
        sc.gpad.resize(sc.pad.len(), 0.0);
        for i in 0..g.kh {
            for j in 0..g.kw {
                let a = wc[i * g.kw + j];
                let dst = &mut sc.gpad[i * wp + j..][..len];
                dst.iter_mut().zip(gy.iter()).for_each(|(d, v)| *d += a * v);
            }
        }
        for (y, row) in gxi.chunks_exact_mut(g.w).enumerate() {
            row.iter_mut()
                .zip(&sc.gpad[(y + g.ph) * wp + g.pw..][..g.w])
                .for_each(|(d, v)| *d += v);
        }
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
        let run = |p: usize, gwp: &mut [f32], gxi: Option<&mut [f32]>, scratch: &mut Scratch| {
            let (xi, gyi) = (&x[p * plane..][..plane], &gy[p * oplane..][..oplane]);
            if g.sh == 1 && g.sw == 1 {
                let wc = &wt[(p % g.c) * k..][..k];
                return g.plane_grad_stride1(xi, gyi, wc, gwp, gxi, scratch);
            }
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
                .for_each_init(Scratch::default, |sc, (p, (gwp, gxi))| {
                    run(p, gwp, Some(gxi), sc)
                });
        } else {
            gw_planes
                .par_chunks_mut(k)
                .enumerate()
                .for_each_init(Scratch::default, |sc, (p, gwp)| run(p, gwp, None, sc));
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
