//! 2-D convolution (im2col + GEMM) with ReLU and max-pooling inside the op.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------------------
// conv2d and max-pool
// ---------------------------------------------------------------------------------------------------------

/// A 2-D convolution (`x` `[B, C, H, W]`, `w` `[O, C, KH, KW]`, optional bias `[O]`, equal stride and
/// padding on both axes, no dilation, no groups) through im2col and GEMM, image by image in parallel, with
/// its own backward: the kernel's gradient as one GEMM per image over the same columns, the input's (only
/// when `x` is tracked) as a GEMM then col2im. Other cases (groups, dilation, other devices or dtypes) use
/// candle's convolution.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_impl(x, w, b, stride, padding, false, 0)
}

/// [`conv2d`] followed by ReLU, as one node (the ReLU applied in place, its backward folded into the
/// convolution's).
pub fn conv2d_relu(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_impl(x, w, b, stride, padding, true, 0)
}

/// [`conv2d_relu`] followed by a `pool × pool` max-pool with stride `pool`, as one node: the full-size
/// activation and its gradient never leave the op (each image's is a scratch buffer), and the backward pass
/// sends each pooled gradient to the maximum recorded in the forward pass (PyTorch's choice for ties).
pub fn conv2d_relu_pool(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    pool: usize,
) -> Result<Tensor> {
    check_pool(pool)?;
    conv2d_impl(x, w, b, stride, padding, true, pool)
}

pub(crate) fn check_pool(pool: usize) -> Result<()> {
    if pool == 0 {
        return Err(Error::Shape(
            "conv2d_relu_pool: the pooling window must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A convolution's output through the optional ReLU and `pool × pool` max-pool, as separate ops (the paths
/// the fused op does not cover).
pub(crate) fn relu_pool(y: Tensor, relu: bool, pool: usize) -> Result<Tensor> {
    let y = if relu { y.relu()? } else { y };
    if pool > 0 {
        max_pool2d(&y, pool)
    } else {
        Ok(y)
    }
}

/// A candle-nn `Conv2d` layer through [`conv2d_impl`]; layers with groups or dilation go through the layer's
/// own forward, then [`relu_pool`].
pub(crate) fn layer_conv(
    layer: &candle_nn::Conv2d,
    x: &Tensor,
    relu: bool,
    pool: usize,
) -> Result<Tensor> {
    let cfg = layer.config();
    if cfg.groups != 1 || cfg.dilation != 1 {
        return relu_pool(candle_core::Module::forward(layer, x)?, relu, pool);
    }
    conv2d_impl(
        x,
        layer.weight(),
        layer.bias(),
        cfg.stride,
        cfg.padding,
        relu,
        pool,
    )
}

/// [`conv2d_relu_pool`] with a candle-nn `Conv2d` layer's weights and settings (groups or dilation: the
/// layer's own forward, ReLU, then [`max_pool2d`]).
pub fn conv2d_layer_relu_pool(
    layer: &candle_nn::Conv2d,
    x: &Tensor,
    pool: usize,
) -> Result<Tensor> {
    check_pool(pool)?;
    layer_conv(layer, x, true, pool)
}

pub(crate) fn conv2d_impl(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
    pool: usize,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "conv2d: input must be [B, C, H, W], got {:?}",
            x.dims()
        ))
    })?;
    let (o, ci, kh, kw) = w.dims4().map_err(|_| {
        Error::Shape(format!(
            "conv2d: kernel must be [O, C, KH, KW], got {:?}",
            w.dims()
        ))
    })?;
    if ci != c || stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::Shape(format!(
            "conv2d: input {:?} does not fit kernel {:?} (stride {stride}, padding {padding})",
            x.dims(),
            w.dims()
        )));
    }
    if let Some(b) = b {
        if b.dims() != [o] {
            return Err(Error::Shape(format!(
                "conv2d: bias {:?} does not fit kernel {:?}",
                b.dims(),
                w.dims()
            )));
        }
    }
    let mut all = vec![x, w];
    all.extend(b);
    if !fast(&all) {
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        let y = match b {
            Some(b) => y.broadcast_add(&b.reshape((1, o, 1, 1))?)?,
            None => y,
        };
        return relu_pool(y, relu, pool);
    }
    let geo = ConvGeo {
        c,
        h,
        w: wd,
        o,
        kh,
        kw,
        stride,
        padding,
    };
    if pool > 0 {
        let (oh, ow) = geo.out_hw();
        if oh < pool || ow < pool {
            return Err(Error::Shape(format!(
                "conv2d_relu_pool: the {oh}x{ow} convolution output is smaller than the {pool}x{pool} window"
            )));
        }
    }
    let op = Conv2dOp {
        geo,
        relu,
        pool,
        argmax: std::sync::Mutex::new(None),
        input_grad: x.track_op(),
    };
    let (xc, wc) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => xc.apply_op3(&wc, &b.contiguous()?, op)?,
        None => xc.apply_op2(&wc, op)?,
    })
}

/// Inference with a convolution followed by an evaluation-mode batch norm (and ReLU when `relu`), folded into
/// one convolution: `w' = w·scale`, `b' = (b·scale) + shift` per output channel ([`batch_norm_affine`]), then
/// [`conv2d`] / [`conv2d_relu`] with the bias and the ReLU inside the op: one pass over the output instead of
/// three. Nothing is recorded for autograd (inference only: no gradient reaches the layer's parameters).
/// Groups or dilation: the layer's own forward, then the batch norm.
pub fn conv2d_bn(
    layer: &candle_nn::Conv2d,
    bn: &candle_nn::BatchNorm,
    x: &Tensor,
    relu: bool,
) -> Result<Tensor> {
    let cfg = layer.config();
    if cfg.groups != 1 || cfg.dilation != 1 {
        let y = candle_core::Module::forward(layer, &x.detach())?;
        return super::batch_norm(bn, &y, false, relu).map(|y| y.detach());
    }
    let (w, b) = fold_bn(layer.weight(), layer.bias(), bn)?;
    conv2d_impl(&x.detach(), &w, Some(&b), cfg.stride, cfg.padding, relu, 0)
}

/// `(w·scale, b·scale + shift)` for a convolution kernel `[O, ...]` and the batch norm after it (detached).
pub(crate) fn fold_bn(
    w: &Tensor,
    b: Option<&Tensor>,
    bn: &candle_nn::BatchNorm,
) -> Result<(Tensor, Tensor)> {
    let (scale, shift) = batch_norm_affine(bn)?;
    let o = scale.elem_count();
    if w.dim(0)? != o {
        return Err(Error::Shape(format!(
            "conv + batch norm: the kernel {:?} has {} output channels, the batch norm {o}",
            w.dims(),
            w.dim(0)?
        )));
    }
    let mut per = vec![1; w.rank()];
    per[0] = o;
    let wf = w.detach().broadcast_mul(&scale.reshape(per)?)?;
    let bf = match b {
        Some(b) => b.detach().mul(&scale)?.add(&shift)?,
        None => shift,
    };
    Ok((wf, bf))
}

/// [`conv2d`] with a candle-nn `Conv2d` layer's weights and settings; layers with groups or dilation go
/// through the layer's own forward.
pub fn conv2d_layer(layer: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    layer_conv(layer, x, false, 0)
}

/// [`conv2d_relu`] with a candle-nn `Conv2d` layer's weights and settings (groups or dilation: the layer's own
/// forward, then ReLU).
pub fn conv2d_layer_relu(layer: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    layer_conv(layer, x, true, 0)
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeo {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

impl ConvGeo {
    pub(crate) fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.padding - self.kh) / self.stride + 1,
            (self.w + 2 * self.padding - self.kw) / self.stride + 1,
        )
    }
    /// A 1x1 kernel, stride 1, no padding: the image `[C, H·W]` is its own column matrix.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
    /// Rows of the column matrix: `C·KH·KW`.
    pub(crate) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// The output columns `ox` whose input column `ox·stride + kx − padding` lies inside the image.
    fn valid_cols(&self, kx: usize, ow: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 };
        let hi = if self.w + p > kx {
            ((self.w + p - kx - 1) / s + 1).min(ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// One image `[C, H, W]` into columns `[C·KH·KW, OH·OW]` (zeros where the window is in the padding).
    pub(crate) fn im2col(&self, img: &[f32], cols: &mut [f32]) {
        let (oh, ow) = self.out_hw();
        let n = oh * ow;
        let s = self.stride;
        for ci in 0..self.c {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = &mut cols[((ci * self.kh + ky) * self.kw + kx) * n..][..n];
                    let (lo, hi) = self.valid_cols(kx, ow);
                    for oy in 0..oh {
                        let iy = (oy * s + ky) as isize - self.padding as isize;
                        let dst = &mut row[oy * ow..][..ow];
                        if iy < 0 || iy >= self.h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &img[(ci * self.h + iy as usize) * self.w..][..self.w];
                        dst[..lo].fill(0.0);
                        dst[hi..].fill(0.0);
                        if lo < hi {
                            let ix0 = lo * s + kx - self.padding;
                            if s == 1 {
                                dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                            } else {
                                for (d, v) in
                                    dst[lo..hi].iter_mut().zip(src[ix0..].iter().step_by(s))
                                {
                                    *d = *v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds columns `[C·KH·KW, OH·OW]` back into an image's gradient `[C, H, W]`.
    pub(crate) fn col2im(&self, cols: &[f32], img: &mut [f32]) {
        let (oh, ow) = self.out_hw();
        let n = oh * ow;
        let s = self.stride;
        for ci in 0..self.c {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = &cols[((ci * self.kh + ky) * self.kw + kx) * n..][..n];
                    let (lo, hi) = self.valid_cols(kx, ow);
                    if lo >= hi {
                        continue;
                    }
                    let ix0 = lo * s + kx - self.padding;
                    for oy in 0..oh {
                        let iy = (oy * s + ky) as isize - self.padding as isize;
                        if iy < 0 || iy >= self.h as isize {
                            continue;
                        }
                        let dst = &mut img[(ci * self.h + iy as usize) * self.w..][..self.w];
                        let src = &row[oy * ow + lo..oy * ow + hi];
                        for (d, v) in dst[ix0..].iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Row-major `dst[m, n] (+)= a[m, k] · b[k, n]` where `a` and `b` are given with their row and column strides;
/// single-threaded (callers parallelise over images).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm1(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_rs: isize,
    a_cs: isize,
    b: &[f32],
    b_rs: isize,
    b_cs: isize,
) {
    // SAFETY: every slice covers the extent its strides address (the callers size them from the same
    // geometry).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

pub(crate) struct Conv2dOp {
    geo: ConvGeo,
    relu: bool,
    /// Max-pool window after the convolution (0: none).
    pool: usize,
    /// With pooling: each pooled output's maximum within its window (`dy·pool + dx`; [`NO_GRAD`] where the
    /// ReLU zeroed the whole window), recorded by the forward pass for the backward pass.
    argmax: std::sync::Mutex<Option<std::sync::Arc<Vec<u16>>>>,
    input_grad: bool,
}

/// An `argmax` entry whose gradient is zero (the ReLU clipped the window's maximum).
pub(crate) const NO_GRAD: u16 = u16::MAX;

impl Conv2dOp {
    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "conv2d input")?;
        let w = f32_slice(s2, l2, "conv2d kernel")?;
        let bias = bias
            .map(|(s, l)| f32_slice(s, l, "conv2d bias"))
            .transpose()?;
        let (out, shape) = self.forward_slices(x, w, bias, l1.dims()[0]);
        Ok((CpuStorage::F32(out), shape))
    }

    fn forward_slices(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        batch: usize,
    ) -> (Vec<f32>, Shape) {
        let g = self.geo;
        let (oh, ow) = g.out_hw();
        let n = oh * ow;
        let k = g.k();
        let img = g.c * g.h * g.w;
        let relu = self.relu;
        if self.pool > 0 {
            return self.forward_pooled(x, w, bias, batch);
        }
        let mut out = vec![0f32; batch * g.o * n];
        // a 1x1 convolution with stride 1 and no padding reads the image itself as its column matrix
        let pointwise = g.is_pointwise();
        out.par_chunks_mut(g.o * n)
            .zip(x.par_chunks(img))
            .for_each_init(
                || vec![0f32; if pointwise { 0 } else { k * n }],
                |cols, (y, xi)| {
                    let cols: &[f32] = if pointwise {
                        xi
                    } else {
                        g.im2col(xi, cols);
                        cols
                    };
                    if let Some(b) = bias {
                        for (row, &bv) in y.chunks_mut(n).zip(b) {
                            row.fill(bv);
                        }
                    }
                    // y[o, n] = w[o, k] · cols[k, n]
                    gemm1(
                        g.o,
                        n,
                        k,
                        y,
                        bias.is_some(),
                        w,
                        k as isize,
                        1,
                        cols,
                        n as isize,
                        1,
                    );
                    if relu {
                        y.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                },
            );
        (out, Shape::from((batch, g.o, oh, ow)))
    }

    fn forward_pooled(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        batch: usize,
    ) -> (Vec<f32>, Shape) {
        let g = self.geo;
        let (oh, ow) = g.out_hw();
        let (n, k, img, p) = (oh * ow, g.k(), g.c * g.h * g.w, self.pool);
        let (ph, pw) = (oh / p, ow / p);
        let per = g.o * ph * pw;
        let relu = self.relu;
        let mut out = vec![0f32; batch * per];
        let mut arg = vec![0u16; batch * per];
        out.par_chunks_mut(per)
            .zip(arg.par_chunks_mut(per))
            .zip(x.par_chunks(img))
            .for_each_init(
                || (vec![0f32; k * n], vec![0f32; g.o * n]),
                |(cols, y), ((out, arg), xi)| {
                    g.im2col(xi, cols);
                    if let Some(b) = bias {
                        for (row, &bv) in y.chunks_mut(n).zip(b) {
                            row.fill(bv);
                        }
                    }
                    gemm1(
                        g.o,
                        n,
                        k,
                        y,
                        bias.is_some(),
                        w,
                        k as isize,
                        1,
                        cols,
                        n as isize,
                        1,
                    );
                    for o in 0..g.o {
                        let plane = &y[o * n..][..n];
                        for py in 0..ph {
                            for px in 0..pw {
                                let (mut m, mut best) = (f32::NEG_INFINITY, 0u16);
                                for dy in 0..p {
                                    let row = &plane[(py * p + dy) * ow + px * p..][..p];
                                    for (dx, &v) in row.iter().enumerate() {
                                        if v > m || (v.is_nan() && !m.is_nan()) {
                                            m = v;
                                            best = (dy * p + dx) as u16;
                                        }
                                    }
                                }
                                let at = (o * ph + py) * pw + px;
                                if relu && (m <= 0.0 || m.is_nan()) {
                                    out[at] = if m.is_nan() { m } else { 0.0 };
                                    arg[at] = NO_GRAD;
                                } else {
                                    out[at] = m;
                                    arg[at] = best;
                                }
                            }
                        }
                    }
                },
            );
        if let Ok(mut a) = self.argmax.lock() {
            *a = Some(std::sync::Arc::new(arg));
        }
        (out, Shape::from((batch, g.o, ph, pw)))
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if self.relu && self.pool == 0 {
            grad.contiguous()?.apply_op2_no_bwd(res, &ReluGrad)?
        } else {
            grad.contiguous()?
        };
        let pooled = if self.pool > 0 {
            let a = self.argmax.lock().ok().and_then(|a| a.clone());
            match a {
                Some(a) => Some((self.pool, a)),
                None => candle_core::bail!("conv2d_relu_pool: backward before forward"),
            }
        } else {
            None
        };
        let packed = x.apply_op2_no_bwd(
            &grad,
            &Conv2dGrad {
                geo: self.geo,
                w: w.clone(),
                pooled,
                input_grad: self.input_grad,
            },
        )?;
        // [gw (O·K) | gb (O) | gx (B·C·H·W) when asked]
        let g = self.geo;
        let (ok, o) = (g.o * g.k(), g.o);
        let gw = packed.narrow(0, 0, ok)?.reshape(w.shape())?;
        let gw = if w.track_op() {
            param_grad(w, gw)
        } else {
            None
        };
        let gb = match bias {
            Some(b) if b.track_op() => param_grad(b, packed.narrow(0, ok, o)?),
            _ => None,
        };
        let gx = if self.input_grad {
            Some(
                packed
                    .narrow(0, ok + o, x.elem_count())?
                    .reshape(x.shape())?,
            )
        } else {
            None
        };
        Ok((gx, gw, gb))
    }
}

weighted_op!(Conv2dOp, "distill-conv2d");

/// Images per group in the convolution's backward pass (see `Conv2dGrad`).
pub(crate) const CONV_GRAD_GROUP: usize = 4;

/// The gradients of a convolution, packed in one `[O·K + O (+ B·C·H·W)]` vector: the kernel's, the bias's,
/// then the input's when asked.
pub(crate) struct Conv2dGrad {
    geo: ConvGeo,
    w: Tensor,
    /// With pooling: the window and the forward pass's argmax; the incoming gradient is then the pooled
    /// output's and is spread back, image by image, before the convolution's gradients.
    pooled: Option<(usize, std::sync::Arc<Vec<u16>>)>,
    input_grad: bool,
}

impl CustomOp2 for Conv2dGrad {
    fn name(&self) -> &'static str {
        "distill-conv2d-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geo;
        let x = f32_slice(s1, l1, "conv2d input")?;
        let gy = f32_slice(s2, l2, "conv2d gradient")?;
        let (ws, wl) = self.w.storage_and_layout();
        let w = match &*ws {
            candle_core::Storage::Cpu(s) => f32_slice(s, wl, "conv2d kernel")?,
            _ => candle_core::bail!("conv2d: the kernel is not on the CPU"),
        };
        let batch = l1.dims()[0];
        let (oh, ow) = g.out_hw();
        let n = oh * ow;
        let k = g.k();
        let img = g.c * g.h * g.w;
        let (ok, o) = (g.o * k, g.o);
        let xlen = if self.input_grad { batch * img } else { 0 };
        let mut out = vec![0f32; ok + o + xlen];
        let (head, gx_all) = out.split_at_mut(ok + o);
        // kernel and bias gradients: per-group accumulators over images, summed after; the input's
        // gradient image by image
        let mut gx_chunks: Vec<&mut [f32]> = if self.input_grad {
            gx_all.chunks_mut(img).collect()
        } else {
            Vec::new()
        };
        let items: Vec<(usize, Option<&mut [f32]>)> = if self.input_grad {
            gx_chunks
                .drain(..)
                .enumerate()
                .map(|(i, c)| (i, Some(c)))
                .collect()
        } else {
            (0..batch).map(|i| (i, None)).collect()
        };
        // Images in fixed groups, each accumulated in order and the groups summed in order: the sums do not
        // depend on how rayon schedules the work, so a run is reproducible (a fold/reduce is not).
        let init = || {
            let full = if self.pooled.is_some() { o * n } else { 0 };
            (vec![0f32; ok + o], vec![0f32; k * n], vec![0f32; full])
        };
        let partial: Vec<Vec<f32>> = items
            .into_par_iter()
            .chunks(CONV_GRAD_GROUP)
            .map(|group| {
                group
                    .into_iter()
                    .fold(init(), |(mut acc, mut cols, mut full), (i, gxi)| {
                        let xi = &x[i * img..][..img];
                        let gyi: &[f32] = match &self.pooled {
                            None => &gy[i * o * n..][..o * n],
                            Some((p, arg)) => {
                                let (ph, pw) = (oh / p, ow / p);
                                let per = o * ph * pw;
                                let (gp, ap) = (&gy[i * per..][..per], &arg[i * per..][..per]);
                                full.fill(0.0);
                                for oc in 0..o {
                                    for py in 0..ph {
                                        for px in 0..pw {
                                            let at = (oc * ph + py) * pw + px;
                                            if ap[at] != NO_GRAD {
                                                let (dy, dx) =
                                                    (ap[at] as usize / p, ap[at] as usize % p);
                                                full[oc * n + (py * p + dy) * ow + px * p + dx] =
                                                    gp[at];
                                            }
                                        }
                                    }
                                }
                                &full
                            }
                        };
                        g.im2col(xi, &mut cols);
                        // gw[o, k] += gy[o, n] · colsᵀ[n, k]
                        let (gw, gb) = acc.split_at_mut(ok);
                        gemm1(o, k, n, gw, true, gyi, n as isize, 1, &cols, 1, n as isize);
                        for (b, row) in gb.iter_mut().zip(gyi.chunks(n)) {
                            *b += row.iter().sum::<f32>();
                        }
                        if let Some(gxi) = gxi {
                            // gcols[k, n] = wᵀ[k, o] · gy[o, n], then back into the image
                            gemm1(
                                k, n, o, &mut cols, false, w, 1, k as isize, gyi, n as isize, 1,
                            );
                            g.col2im(&cols, gxi);
                        }
                        (acc, cols, full)
                    })
                    .0
            })
            .collect();
        for p in &partial {
            head.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}
