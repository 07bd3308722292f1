//! Fused CPU operations with their own backward pass, for the hot paths of training.
//!
//! candle builds a fully connected layer from a matmul, a transpose and a broadcast add, and differentiates each
//! node separately: every gradient starts as zeros and is added to, and the matmul's backward computes the
//! gradient of its input even when nothing needs it (the network's input data). The ops here do the same
//! arithmetic in fewer passes:
//!
//! * [`linear`]: `y = x·wᵀ + b`, optionally followed by ReLU, as one node. The forward pass is one GEMM into an
//!   output pre-filled with the bias (ReLU applied in place); the backward pass gives `w` and `b` their
//!   gradients directly and computes `x`'s only when `x` is tracked by autograd.
//! * [`cross_entropy`] and [`kd_kl`]: the cross-entropy and the temperature-scaled KL divergence of Hinton et
//!   al. as one node each, with the closed-form gradients `(softmax(s) − onehot)/N` and `T·(q − p)/N`.
//!
//! * [`conv2d`] and its ReLU / max-pool variants: im2col + GEMM per image, with the activation and the pooling
//!   inside the op; [`depthwise_conv2d`]: one filter per channel, a direct loop per channel plane, forward and
//!   backward (instead of nine shifted, scaled copies of the input and their reductions).
//!
//! * [`batch_norm`] (training mode, + ReLU): the channel statistics, the normalisation and the ReLU in one
//!   node, and one backward pass for the input, scale and shift.
//!
//! * [`backward`]: `loss.backward()`, except that the parameter gradients of the ops above skip candle's
//!   gradient store on the way (where each would start as zeros and be added to: two extra passes over every
//!   weight's gradient per step) and are put into it once at the end. A plain `loss.backward()` gives the
//!   same gradients, through the store.
//!
//! Each op takes the fused path for `f32` tensors on the CPU and falls back to ordinary candle ops (the same
//! mathematics) elsewhere, so callers need not care. Tests check both paths against each other: values and
//! gradients.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

fn fast(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// backward with direct parameter gradients
// ---------------------------------------------------------------------------------------------------------

thread_local! {
    /// Parameter gradients handed over by the fused ops while a [`backward`] runs on this thread.
    static DIRECT: std::cell::RefCell<Option<Vec<(Tensor, Tensor)>>> = const { std::cell::RefCell::new(None) };
}

/// The gradient `g` of parameter `param` from a fused op's backward: kept aside (returns `None`) while
/// [`backward`] runs on this thread and `param` is a variable; otherwise returned, for candle's store.
fn param_grad(param: &Tensor, g: Tensor) -> Option<Tensor> {
    if !param.is_variable() {
        return Some(g);
    }
    DIRECT.with(|d| match d.borrow_mut().as_mut() {
        Some(v) => {
            v.push((param.clone(), g));
            None
        }
        None => Some(g),
    })
}

/// `loss.backward()`, with the parameter gradients of this module's ops added straight into the result
/// instead of through candle's zeros-then-add accumulation. Same gradients as `loss.backward()`.
pub fn backward(loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
    DIRECT.with(|d| *d.borrow_mut() = Some(Vec::new()));
    let result = loss.backward();
    let direct = DIRECT.with(|d| d.borrow_mut().take()).unwrap_or_default();
    let mut grads = result?;
    for (p, g) in direct {
        let g = match grads.remove(&p) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        grads.insert(&p, g);
    }
    Ok(grads)
}

// ---------------------------------------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------------------------------------

/// `x·wᵀ (+ b)` with `x` `[N, in]` and `w` `[out, in]` (`x` any layout, `w` any layout; `b` `[out]`),
/// optionally through ReLU. Rank > 2 inputs `[.., in]` are flattened to rows and reshaped back.
///
/// ```
/// use candle_core::{Device, Tensor};
/// # fn main() -> distill_core::Result<()> {
/// let x = Tensor::new(&[[1.0f32, 2.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1.0f32, 1.0], [1.0, -1.0]], &Device::Cpu)?;
/// let b = Tensor::new(&[0.5f32, 0.0], &Device::Cpu)?;
/// let y = distill_core::ops::linear(&x, &w, Some(&b), true)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![3.5, 0.0]]); // relu([3.5, -1.0])
/// # Ok(()) }
/// ```
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let (out, inp) = w.dims2().map_err(|_| {
        Error::Shape(format!(
            "linear: the weight must be [out, in], got {:?}",
            w.dims()
        ))
    })?;
    let lead = x.dims();
    if lead.is_empty() || lead[lead.len() - 1] != inp {
        return Err(Error::Shape(format!(
            "linear: input {:?} does not fit weight [{out}, {inp}] (its last dimension must be {inp})",
            x.dims()
        )));
    }
    if let Some(b) = b {
        if b.dims() != [out] {
            return Err(Error::Shape(format!(
                "linear: bias {:?} does not fit weight [{out}, {inp}]",
                b.dims()
            )));
        }
    }
    let rows = x.elem_count() / inp;
    let x2 = if x.rank() == 2 {
        x.clone()
    } else {
        x.reshape((rows, inp))?
    };
    let mut all = vec![&x2, w];
    all.extend(b);
    let y = if fast(&all) && rows > 0 {
        let op = LinearOp {
            relu,
            input_grad: x2.track_op(),
        };
        match b {
            Some(b) => x2.apply_op3(w, b, op)?,
            None => x2.apply_op2(w, op)?,
        }
    } else {
        let y = x2.matmul(&w.t()?)?;
        let y = match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        if relu {
            y.relu()?
        } else {
            y
        }
    };
    if x.rank() == 2 {
        Ok(y)
    } else {
        let mut dims = lead.to_vec();
        *dims.last_mut().expect("rank >= 1") = out;
        Ok(y.reshape(dims)?)
    }
}

struct LinearOp {
    relu: bool,
    input_grad: bool,
}

impl LinearOp {
    fn forward(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = lx.shape().dims2()?;
        let (n, _) = lw.shape().dims2()?;
        let xs = x.as_slice::<f32>()?;
        let ws = w.as_slice::<f32>()?;
        let (x_rs, x_cs) = (lx.stride()[0] as isize, lx.stride()[1] as isize);
        let (w_rs, w_cs) = (lw.stride()[0] as isize, lw.stride()[1] as isize);
        // no zero fill: the bias rows, or nothing (the GEMM then writes every element without reading)
        let mut dst: Vec<f32> = Vec::with_capacity(m * n);
        let read_dst = if let Some((b, lb)) = bias {
            let bs = f32_slice(b, lb, "linear bias")?;
            for _ in 0..m {
                dst.extend_from_slice(bs);
            }
            true
        } else {
            false
        };
        // dst[m, n] = x[m, k] · wᵀ[k, n]; wᵀ's (row, col) = w's (col, row).
        // SAFETY: the pointers cover the layouts' extents (checked by candle when the tensors were built);
        // dst is m·n contiguous.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                read_dst,
                xs[lx.start_offset()..].as_ptr(),
                x_cs,
                x_rs,
                ws[lw.start_offset()..].as_ptr(),
                w_rs,
                w_cs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
        if !read_dst {
            // SAFETY: the GEMM above wrote all m·n elements (read_dst = false, k > 0 rows checked by `linear`).
            unsafe { dst.set_len(m * n) };
        }
        if self.relu {
            dst.par_chunks_mut(16384)
                .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
        }
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let want_w = w.track_op();
        let want_b = bias.is_some_and(|b| b.track_op());
        if x.is_contiguous() && w.is_contiguous() {
            // one op: the ReLU mask, both GEMMs and the bias's column sums, no zero-filled temporaries
            let (m, kk) = x.dims2()?;
            let n = w.dim(0)?;
            let packed = grad.apply_op2_no_bwd(
                res,
                &LinearGrad {
                    x: x.clone(),
                    w: w.clone(),
                    relu: self.relu,
                    want_x: self.input_grad,
                    want_w,
                    want_b,
                },
            )?;
            let mut at = 0;
            let mut take = |len: usize, want: bool| -> candle_core::Result<Option<Tensor>> {
                if !want {
                    return Ok(None);
                }
                let t = packed.narrow(0, at, len)?;
                at += len;
                Ok(Some(t))
            };
            let gw = take(n * kk, want_w)?
                .map(|t| t.reshape((n, kk)))
                .transpose()?;
            let gb = take(n, want_b)?;
            let gx = take(m * kk, self.input_grad)?
                .map(|t| t.reshape((m, kk)))
                .transpose()?;
            let gw = gw.and_then(|g| param_grad(w, g));
            let gb = match (gb, bias) {
                (Some(g), Some(b)) => param_grad(b, g),
                _ => None,
            };
            return Ok((gx, gw, gb));
        }
        let g = if self.relu {
            grad.apply_op2_no_bwd(res, &ReluGrad)?
        } else {
            grad.clone()
        };
        let gx = if self.input_grad {
            Some(g.matmul(w)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            param_grad(w, g.t()?.matmul(x)?)
        } else {
            None
        };
        let gb = match bias {
            Some(b) if b.track_op() => param_grad(b, g.sum(0)?),
            _ => None,
        };
        Ok((gx, gw, gb))
    }
}

fn parallelism() -> gemm::Parallelism {
    let n = candle_core::utils::get_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// Implements candle's `CustomOp2` (no bias) and `CustomOp3` (with bias) for a weighted op from its
/// `forward(x, lx, w, lw, bias)` and `backward(x, w, res, grad, bias)`, so each op is written once.
macro_rules! weighted_op {
    ($op:ty, $name:literal) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                self.forward(s1, l1, s2, l2, None)
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                res: &Tensor,
                grad: &Tensor,
            ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
                let (gx, gw, _) = self.backward(x, w, res, grad, None)?;
                Ok((gx, gw))
            }
        }

        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
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
                self.forward(s1, l1, s2, l2, Some((s3, l3)))
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                b: &Tensor,
                res: &Tensor,
                grad: &Tensor,
            ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
                self.backward(x, w, res, grad, Some(b))
            }
        }
    };
}

weighted_op!(LinearOp, "distill-linear");

/// The gradients of a fused linear layer from the output's gradient `g` (and the output, for the ReLU
/// mask), packed as `[gw (out·in) | gb (out) | gx (rows·in)]`, each present only when wanted.
struct LinearGrad {
    x: Tensor,
    w: Tensor,
    relu: bool,
    want_x: bool,
    want_w: bool,
    want_b: bool,
}

impl CustomOp2 for LinearGrad {
    fn name(&self) -> &'static str {
        "distill-linear-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n) = l1.shape().dims2()?;
        let g = f32_slice(s1, l1, "linear gradient")?;
        let masked;
        let g: &[f32] = if self.relu {
            let r = f32_slice(s2, l2, "linear output")?;
            masked = relu_masked(g, r);
            &masked
        } else {
            g
        };
        let (xst, xl) = self.x.storage_and_layout();
        let (wst, wl) = self.w.storage_and_layout();
        let (x, w) = match (&*xst, &*wst) {
            (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) => (
                f32_slice(xs, xl, "linear input")?,
                f32_slice(ws, wl, "linear weight")?,
            ),
            _ => candle_core::bail!("linear gradient: the input or weight is not on the CPU"),
        };
        let k = w.len() / n.max(1);
        let len =
            self.want_w as usize * n * k + self.want_b as usize * n + self.want_x as usize * m * k;
        // written through a raw pointer, region by region, without a zero fill; length set at the end
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let base = out.as_mut_ptr();
        let mut off = 0;
        if self.want_w {
            // gw[n, k] = gᵀ[n, m] · x[m, k]
            // SAFETY: the extents follow from the shapes checked when the layer ran forward.
            unsafe {
                gemm::gemm(
                    n,
                    k,
                    m,
                    base.add(off),
                    1,
                    k as isize,
                    false,
                    g.as_ptr(),
                    n as isize,
                    1,
                    x.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
            off += n * k;
        }
        if self.want_b {
            let mut gb = vec![0f32; n];
            for row in g.chunks(n) {
                for (b, v) in gb.iter_mut().zip(row) {
                    *b += v;
                }
            }
            // SAFETY: `off + n <= len`, and the capacity is `len`.
            unsafe { std::ptr::copy_nonoverlapping(gb.as_ptr(), base.add(off), n) };
            off += n;
        }
        if self.want_x {
            // gx[m, k] = g[m, n] · w[n, k]
            // SAFETY: as above.
            unsafe {
                gemm::gemm(
                    m,
                    k,
                    n,
                    base.add(off),
                    1,
                    k as isize,
                    false,
                    g.as_ptr(),
                    1,
                    n as isize,
                    w.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
            off += m * k;
        }
        debug_assert_eq!(off, len);
        // SAFETY: every one of the `len` elements was written above (both GEMMs write their whole outputs
        // with read_dst = false; the bias's sums were copied in).
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `grad · [res > 0]` in one pass (the backward of a fused ReLU, from its output).
struct ReluGrad;

/// `g · [r > 0]` elementwise, in parallel.
fn relu_masked(g: &[f32], r: &[f32]) -> Vec<f32> {
    g.par_iter()
        .zip(r.par_iter())
        .map(|(&g, &r)| if r > 0.0 { g } else { 0.0 })
        .collect()
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "distill-relu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, "relu grad")?;
        let r = f32_slice(s2, l2, "relu output")?;
        Ok((CpuStorage::F32(relu_masked(g, r)), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// losses
// ---------------------------------------------------------------------------------------------------------

/// Row-wise softmax of `x / t` into `out` and the row's `log Σ exp(x/t − max)` + max (its log-normaliser).
fn softmax_row(x: &[f32], t: f32, out: &mut [f32]) -> f32 {
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

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("cross-entropy: class ids must be a contiguous u32 tensor"),
    }
}

/// Mean cross-entropy of `[N, C]` logits against `[N]` u32 class ids, as one node: `None` unless the logits
/// are `f32` on the CPU (the caller then uses the composed version). The caller checks shapes and the id
/// range.
pub(crate) fn cross_entropy(logits: &Tensor, ids: &Tensor) -> Result<Option<Tensor>> {
    if !fast(&[logits]) || logits.rank() != 2 || ids.dtype() != DType::U32 {
        return Ok(None);
    }
    Ok(Some(
        logits
            .contiguous()?
            .apply_op2(&ids.contiguous()?, CrossEntropy)?,
    ))
}

struct CrossEntropy;

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
struct CeGrad(f32);

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
pub(crate) fn kd_kl(student: &Tensor, teacher: &Tensor, t: f64) -> Result<Option<Tensor>> {
    if !fast(&[student, teacher]) || student.rank() != 2 || teacher.track_op() {
        return Ok(None);
    }
    Ok(Some(
        student
            .contiguous()?
            .apply_op2(&teacher.contiguous()?, KdKl(t as f32))?,
    ))
}

struct KdKl(f32);

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
struct KdGrad(f32, f32);

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
fn row_stats(r: &[f32], eps: f32) -> (f32, f32) {
    let n = r.len() as f32;
    let mean = r.iter().sum::<f32>() / n;
    let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNormOp(f32);

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

struct LayerNormGrad(f32);

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

struct SoftmaxOp;

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

struct SoftmaxGrad;

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

mod conv1d;
pub use conv1d::conv1d;

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

fn check_pool(pool: usize) -> Result<()> {
    if pool == 0 {
        return Err(Error::Shape(
            "conv2d_relu_pool: the pooling window must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A convolution's output through the optional ReLU and `pool × pool` max-pool, as separate ops (the paths
/// the fused op does not cover).
fn relu_pool(y: Tensor, relu: bool, pool: usize) -> Result<Tensor> {
    let y = if relu { y.relu()? } else { y };
    if pool > 0 {
        max_pool2d(&y, pool)
    } else {
        Ok(y)
    }
}

/// A candle-nn `Conv2d` layer through [`conv2d_impl`]; layers with groups or dilation go through the layer's
/// own forward, then [`relu_pool`].
fn layer_conv(layer: &candle_nn::Conv2d, x: &Tensor, relu: bool, pool: usize) -> Result<Tensor> {
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

fn conv2d_impl(
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
struct ConvGeo {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
}

impl ConvGeo {
    fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.padding - self.kh) / self.stride + 1,
            (self.w + 2 * self.padding - self.kw) / self.stride + 1,
        )
    }
    /// Rows of the column matrix: `C·KH·KW`.
    fn k(&self) -> usize {
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
    fn im2col(&self, img: &[f32], cols: &mut [f32]) {
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
    fn col2im(&self, cols: &[f32], img: &mut [f32]) {
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
fn gemm1(
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

struct Conv2dOp {
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
const NO_GRAD: u16 = u16::MAX;

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
        out.par_chunks_mut(g.o * n)
            .zip(x.par_chunks(img))
            .for_each_init(
                || vec![0f32; k * n],
                |cols, (y, xi)| {
                    g.im2col(xi, cols);
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
const CONV_GRAD_GROUP: usize = 4;

/// The gradients of a convolution, packed in one `[O·K + O (+ B·C·H·W)]` vector: the kernel's, the bias's,
/// then the input's when asked.
struct Conv2dGrad {
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

struct MaxPoolOp(usize);

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

struct MaxPoolGrad(usize);

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

// ---------------------------------------------------------------------------------------------------------
// depthwise convolution
// ---------------------------------------------------------------------------------------------------------

/// Depthwise 2-D convolution: `x` `[B, C, H, W]`, `weight` `[C, 1, kh, kw]` (one filter per channel, as
/// PyTorch's `Conv2d(C, C, k, groups=C)`), zero `padding` `(rows, cols)` and `stride` `(rows, cols)`. On f32
/// CPU tensors it is one op, forward and backward, each a direct loop over the channel planes in parallel;
/// elsewhere it is [`crate::nn::depthwise_conv2d`] (shifted slices, the same mathematics).
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    padding: (usize, usize),
    stride: (usize, usize),
) -> Result<Tensor> {
    if !fast(&[x, weight]) {
        return crate::nn::depthwise_conv2d(x, weight, padding, stride);
    }
    let geo = DwGeo::new(x.dims(), weight.dims(), padding, stride)?;
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, DepthwiseOp(geo))?)
}

/// The shapes of one depthwise convolution.
#[derive(Clone, Copy)]
struct DwGeo {
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
fn axpy_strided(out: &mut [f32], a: f32, x: &[f32], s: usize) {
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
fn dot_strided(y: &[f32], x: &[f32], s: usize) -> f32 {
    if s == 1 {
        y.iter().zip(x).map(|(a, b)| a * b).sum()
    } else {
        y.iter().zip(x.iter().step_by(s)).map(|(a, b)| a * b).sum()
    }
}

struct DepthwiseOp(DwGeo);

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
struct DepthwiseGrad {
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

// ---------------------------------------------------------------------------------------------------------
// batch normalisation
// ---------------------------------------------------------------------------------------------------------

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
struct BatchNormOp {
    eps: f64,
    relu: bool,
    stats: std::sync::Arc<std::sync::Mutex<Vec<f32>>>,
}

/// `(batch, channels, elements per channel plane)` of a `[B, C, ...]` shape.
fn bn_dims(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.dims();
    (d[0], d[1], d[2..].iter().product())
}

/// Per-channel `(mean, biased variance)` of `x` `[B, C, plane]`, in f64 accumulators.
fn channel_stats(x: &[f32], b: usize, c: usize, plane: usize) -> Vec<(f32, f32)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0f64, 0f64);
            for bi in 0..b {
                for &v in &x[(bi * c + ch) * plane..][..plane] {
                    s += v as f64;
                    s2 += (v as f64) * (v as f64);
                }
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
struct ChannelAffineOp {
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
struct BatchNormGrad {
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
                    for (gv, xv) in g[at..at + plane].iter().zip(&x[at..at + plane]) {
                        sg += *gv as f64;
                        sgx += (*gv * (xv - mean) * r) as f64;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "element {i}: {x} vs {y}"
            );
        }
    }

    /// The fused linear (with and without bias and ReLU, input tracked or not, rank 3) equals candle's
    /// matmul + add + relu, values and every gradient.
    #[test]
    fn fused_linear_matches_the_composed_ops_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // the last case's weight is a transposed (non-contiguous) view: the op's general path
        for (relu, bias, track_x, rank3, strided_w) in [
            (false, false, false, false, false),
            (true, true, true, false, false),
            (true, true, false, false, false),
            (false, true, true, true, false),
            (true, true, true, false, true),
        ] {
            let xs = Tensor::randn(0f32, 1.0, (6, 5), &dev)?;
            let xs = if rank3 { xs.reshape((2, 3, 5))? } else { xs };
            let xv = Var::from_tensor(&xs)?;
            let x = if track_x {
                xv.as_tensor().clone()
            } else {
                xs.clone()
            };
            let w = if strided_w {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 4), &dev)?)?
            } else {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 5), &dev)?)?
            };
            let wt = if strided_w {
                w.as_tensor().t()?
            } else {
                w.as_tensor().clone()
            };
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 4, &dev)?)?;
            let bias_t = bias.then(|| b.as_tensor());
            let fused = linear(&x, &wt, bias_t, relu)?;
            let mut plain = x.broadcast_matmul(&wt.t()?)?;
            if bias {
                plain = plain.broadcast_add(b.as_tensor())?;
            }
            if relu {
                plain = plain.relu()?;
            }
            close(&fused, &plain, 1e-5);
            // a loss that weighs every output differently
            let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
            let gf = (&fused * &r)?.sum_all()?.backward()?;
            let gp = (&plain * &r)?.sum_all()?.backward()?;
            close(gf.get(&w).unwrap(), gp.get(&w).unwrap(), 1e-5);
            if bias {
                close(gf.get(&b).unwrap(), gp.get(&b).unwrap(), 1e-5);
            } else {
                assert!(gf.get(&b).is_none());
            }
            if track_x {
                close(gf.get(&xv).unwrap(), gp.get(&xv).unwrap(), 1e-5);
            } else {
                assert!(gf.get(&xv).is_none());
            }
        }
        Ok(())
    }

    #[test]
    fn linear_shape_errors_name_both_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let w = Tensor::zeros((4, 5), DType::F32, &dev)?;
        let e = linear(&x, &w, None, false).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
        let w = Tensor::zeros((4, 3), DType::F32, &dev)?;
        let b = Tensor::zeros(5, DType::F32, &dev)?;
        let e = linear(&x, &w, Some(&b), false).unwrap_err().to_string();
        assert!(e.contains("bias [5]"), "{e}");
        Ok(())
    }

    /// Cross-entropy and KD against values computed by hand in f64 from the definitions, and their
    /// gradients against the closed forms.
    #[test]
    fn fused_losses_equal_their_definitions() -> Result<()> {
        let dev = Device::Cpu;
        let s = [[1.0f32, -2.0, 0.5], [0.0, 3.0, -1.0]];
        let t = [[2.0f32, 0.0, -1.0], [-0.5, 1.0, 1.5]];
        let ids = [2u32, 1];
        let sv = Var::new(&s, &dev)?;
        let tt = Tensor::new(&t, &dev)?;
        let idt = Tensor::new(&ids, &dev)?;
        let sm = |r: &[f32], temp: f64| -> Vec<f64> {
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        };
        // cross-entropy
        let ce = cross_entropy(sv.as_tensor(), &idt)?.unwrap();
        let want: f64 = (0..2)
            .map(|i| -sm(&s[i], 1.0)[ids[i] as usize].ln())
            .sum::<f64>()
            / 2.0;
        assert!((ce.to_scalar::<f32>()? as f64 - want).abs() < 1e-6);
        let g = ce.backward()?;
        let g: Vec<Vec<f32>> = g.get(&sv).unwrap().to_vec2()?;
        for i in 0..2 {
            let p = sm(&s[i], 1.0);
            for j in 0..3 {
                let want = (p[j] - (j == ids[i] as usize) as u8 as f64) / 2.0;
                assert!((g[i][j] as f64 - want).abs() < 1e-6);
            }
        }
        // KD at T = 3
        let temp = 3.0;
        let kd = kd_kl(sv.as_tensor(), &tt, temp)?.unwrap();
        let mut want = 0.0;
        for i in 0..2 {
            let (p, q) = (sm(&t[i], temp), sm(&s[i], temp));
            want += (0..3).map(|j| p[j] * (p[j] / q[j]).ln()).sum::<f64>();
        }
        want *= temp * temp / 2.0;
        assert!(
            (kd.to_scalar::<f32>()? as f64 - want).abs() < 1e-5,
            "{want}"
        );
        let g: Vec<Vec<f32>> = kd.backward()?.get(&sv).unwrap().to_vec2()?;
        for i in 0..2 {
            let (p, q) = (sm(&t[i], temp), sm(&s[i], temp));
            for j in 0..3 {
                let want = temp * (q[j] - p[j]) / 2.0;
                assert!((g[i][j] as f64 - want).abs() < 1e-6);
            }
        }
        // a teacher that needs gradients takes the composed path
        let tv = Var::new(&t, &dev)?;
        assert!(kd_kl(sv.as_tensor(), tv.as_tensor(), temp)?.is_none());
        Ok(())
    }

    /// The fused LayerNorm and softmax equal the composed ops: values and gradients of every argument.
    #[test]
    fn fused_layer_norm_and_softmax_match_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 70, 9), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.5, 9, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 9, &dev)?)?;
        let r = Tensor::randn(0f32, 1.0, (3, 70, 9), &dev)?;
        let fused = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        let d = candle_core::D::Minus1;
        let xt = x.as_tensor();
        let mean = xt.mean_keepdim(d)?;
        let xc = xt.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(d)?;
        let plain = xc
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(w.as_tensor())?
            .broadcast_add(b.as_tensor())?;
        close(&fused, &plain, 1e-5);
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let gp = (&plain * &r)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-4);
        }
        let fused = softmax_last(x.as_tensor())?;
        let m = xt.max_keepdim(d)?.detach();
        let e = xt.broadcast_sub(&m)?.exp()?;
        let plain = e.broadcast_div(&e.sum_keepdim(d)?)?;
        close(&fused, &plain, 1e-6);
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let gp = (&plain * &r)?.sum_all()?.backward()?;
        close(gf.get(&x).unwrap(), gp.get(&x).unwrap(), 1e-5);
        Ok(())
    }

    /// The fused training-mode batch norm (with and without ReLU, input tracked or not) equals candle-nn's
    /// `BatchNorm::forward_t` on values, on the input's, scale's and shift's gradients and on the running
    /// statistics after two steps; evaluation mode (running statistics) matches it on values and gradients.
    #[test]
    fn fused_batch_norm_matches_candle_nn() -> Result<()> {
        use candle_nn::{BatchNorm, ModuleT};
        let dev = Device::Cpu;
        for (relu, track_x, dims) in [
            (false, true, vec![4, 3, 5, 6]),
            (true, true, vec![2, 3, 7, 1]),
            (true, false, vec![5, 3]),
        ] {
            let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.5, 3, &dev)?)?;
            let beta = Var::from_tensor(&Tensor::randn(0f32, 0.5, 3, &dev)?)?;
            let make = || -> Result<BatchNorm> {
                Ok(BatchNorm::new_with_momentum(
                    3,
                    Tensor::new(&[0.1f32, -0.2, 0.3], &dev)?,
                    Tensor::new(&[1.0f32, 2.0, 0.5], &dev)?,
                    gamma.as_tensor().clone(),
                    beta.as_tensor().clone(),
                    1e-5,
                    0.2,
                )?)
            };
            let (fused_bn, plain_bn) = (make()?, make()?);
            for step in 0..2 {
                let xs = (Tensor::randn(0f32, 2.0, dims.as_slice(), &dev)? + step as f64)?;
                let xv = Var::from_tensor(&xs)?;
                let x = if track_x {
                    xv.as_tensor().clone()
                } else {
                    xs.clone()
                };
                let fused = batch_norm(&fused_bn, &x, true, relu)?;
                let mut plain = plain_bn.forward_t(&x, true)?;
                if relu {
                    plain = plain.relu()?;
                }
                close(&fused, &plain, 1e-4);
                let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
                let gf = backward(&(&fused * &r)?.sum_all()?)?;
                let gp = (&plain * &r)?.sum_all()?.backward()?;
                close(gf.get(&gamma).unwrap(), gp.get(&gamma).unwrap(), 1e-3);
                close(gf.get(&beta).unwrap(), gp.get(&beta).unwrap(), 1e-4);
                if track_x {
                    close(gf.get(&xv).unwrap(), gp.get(&xv).unwrap(), 1e-3);
                } else {
                    assert!(gf.get(&xv).is_none());
                }
                close(fused_bn.running_mean(), plain_bn.running_mean(), 1e-5);
                close(fused_bn.running_var(), plain_bn.running_var(), 1e-5);
            }
            let xv = Var::from_tensor(&Tensor::randn(0f32, 1.0, dims.as_slice(), &dev)?)?;
            let x = xv.as_tensor();
            let plain = plain_bn.forward_t(x, false)?;
            let plain = if relu { plain.relu()? } else { plain };
            let fused = batch_norm(&fused_bn, x, false, relu)?;
            close(&fused, &plain, 1e-5);
            let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
            let gf = backward(&(&fused * &r)?.sum_all()?)?;
            let gp = (&plain * &r)?.sum_all()?.backward()?;
            for v in [&gamma, &beta, &xv] {
                close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-4);
            }
        }
        let bn = candle_nn::batch_norm(
            4,
            candle_nn::BatchNormConfig::default(),
            candle_nn::VarBuilder::zeros(DType::F32, &dev),
        )?;
        let err = batch_norm(
            &bn,
            &Tensor::zeros((2, 3, 2, 2), DType::F32, &dev)?,
            true,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("4 channels"), "{err}");
        Ok(())
    }

    /// The convolution's backward pass sums its images' kernel gradients in a fixed order: repeated on the
    /// same batch it gives bit-identical gradients however rayon schedules the images.
    #[test]
    fn conv2d_gradients_are_bitwise_reproducible() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (37, 3, 9, 9), &dev)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (8, 3, 3, 3), &dev)?)?;
        let r = Tensor::randn(0f32, 1.0, (37, 8, 9, 9), &dev)?;
        let grad = || -> Result<Vec<f32>> {
            let y = conv2d_relu(&x, w.as_tensor(), None, 1, 1)?;
            let g = (&y * &r)?.sum_all()?.backward()?;
            Ok(g.get(&w).unwrap().flatten_all()?.to_vec1()?)
        };
        let first = grad()?;
        for _ in 0..20 {
            let again = grad()?;
            assert!(
                first
                    .iter()
                    .zip(&again)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "kernel gradient changed between identical passes"
            );
        }
        Ok(())
    }

    /// The fused depthwise convolution equals candle's grouped conv2d (`groups = C`) on values, and the
    /// composed shifted-slice version on the weight's and the input's gradients, for strides, asymmetric
    /// padding, a 5x3 kernel and an untracked input; through [`backward`] as through `loss.backward()`.
    #[test]
    fn fused_depthwise_conv2d_matches_grouped_conv_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (k, padding, stride, track_x) in [
            ((3, 3), (1, 1), (1, 1), true),
            ((3, 3), (1, 1), (2, 2), true),
            ((5, 3), (2, 0), (1, 2), false),
            ((3, 3), (0, 0), (1, 1), true),
        ] {
            let xs = Tensor::randn(0f32, 1.0, (3, 4, 9, 8), &dev)?;
            let xv = Var::from_tensor(&xs)?;
            let x = if track_x {
                xv.as_tensor().clone()
            } else {
                xs.clone()
            };
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (4, 1, k.0, k.1), &dev)?)?;
            let fused = depthwise_conv2d(&x, w.as_tensor(), padding, stride)?;
            let composed = crate::nn::depthwise_conv2d(&x, w.as_tensor(), padding, stride)?;
            if padding.0 == padding.1 && stride.0 == stride.1 {
                let grouped = xs.conv2d(w.as_tensor(), padding.0, stride.0, 1, 4)?;
                assert_eq!(fused.dims(), grouped.dims());
                close(&fused, &grouped, 1e-5);
            }
            assert_eq!(fused.dims(), composed.dims());
            close(&fused, &composed, 1e-5);
            let r = Tensor::randn(0f32, 1.0, fused.dims(), &dev)?;
            let gf = backward(&(&fused * &r)?.sum_all()?)?;
            let gc = (&composed * &r)?.sum_all()?.backward()?;
            close(gf.get(&w).unwrap(), gc.get(&w).unwrap(), 1e-4);
            if track_x {
                close(gf.get(&xv).unwrap(), gc.get(&xv).unwrap(), 1e-4);
            } else {
                assert!(gf.get(&xv).is_none());
            }
        }
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
        let w = Tensor::zeros((2, 1, 3, 3), DType::F32, &dev)?;
        assert!(depthwise_conv2d(&x, &w, (1, 1), (1, 1)).is_err());
        Ok(())
    }

    /// The im2col convolution (strides, padding, bias, input tracked or not) equals candle's conv2d, values
    /// and gradients; max-pooling equals candle's on values and on gradients (no ties in random data).
    #[test]
    fn fused_conv2d_and_max_pool_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (stride, padding, bias, track_x, relu) in [
            (1, 0, true, false, false),
            (2, 1, false, true, false),
            (1, 1, true, true, true),
            (2, 0, true, true, true),
        ] {
            // odd sizes: candle's own conv backward (the reference) mis-sizes stride-2 gradients of even widths
            let xs = Tensor::randn(0f32, 1.0, (3, 4, 9, 7), &dev)?;
            let xv = Var::from_tensor(&xs)?;
            let x = if track_x {
                xv.as_tensor().clone()
            } else {
                xs.clone()
            };
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (5, 4, 3, 3), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 5, &dev)?)?;
            let bt = bias.then(|| b.as_tensor());
            let fused = if relu {
                conv2d_relu(&x, w.as_tensor(), bt, stride, padding)?
            } else {
                conv2d(&x, w.as_tensor(), bt, stride, padding)?
            };
            let mut plain = x.conv2d(w.as_tensor(), padding, stride, 1, 1)?;
            if bias {
                plain = plain.broadcast_add(&b.as_tensor().reshape((1, 5, 1, 1))?)?;
            }
            if relu {
                plain = plain.relu()?;
            }
            assert_eq!(fused.dims(), plain.dims());
            close(&fused, &plain, 1e-4);
            let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
            let gf = (&fused * &r)?.sum_all()?.backward()?;
            let gp = (&plain * &r)?.sum_all()?.backward()?;
            close(gf.get(&w).unwrap(), gp.get(&w).unwrap(), 1e-4);
            if bias {
                close(gf.get(&b).unwrap(), gp.get(&b).unwrap(), 1e-4);
            }
            if track_x {
                close(gf.get(&xv).unwrap(), gp.get(&xv).unwrap(), 1e-4);
            } else {
                assert!(gf.get(&xv).is_none());
            }
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 7, 6), &dev)?)?;
        let fused = max_pool2d(x.as_tensor(), 2)?;
        let plain = x.as_tensor().max_pool2d(2)?;
        assert_eq!(fused.dims(), [2, 3, 3, 3]);
        close(&fused, &plain, 0.0);
        // The gradient: each window's weight lands on its maximum, whole (as in PyTorch). candle 0.11.1's own
        // max-pool backward scales it by (number of maxima / k²), i.e. by 1/4 here, so the reference is
        // computed by hand.
        let r = Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &dev)?;
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let xs: Vec<f32> = x.as_tensor().flatten_all()?.to_vec1()?;
        let rs: Vec<f32> = r.flatten_all()?.to_vec1()?;
        let mut want = vec![0f32; xs.len()];
        for plane in 0..6 {
            for oy in 0..3 {
                for ox in 0..3 {
                    let cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .map(|(dy, dx)| plane * 42 + (2 * oy + dy) * 6 + 2 * ox + dx);
                    let best = cells
                        .into_iter()
                        .max_by(|&a, &b| xs[a].total_cmp(&xs[b]))
                        .unwrap();
                    want[best] += rs[plane * 9 + oy * 3 + ox];
                }
            }
        }
        close(
            gf.get(&x).unwrap(),
            &Tensor::from_vec(want, (2, 3, 7, 6), &dev)?,
            0.0,
        );
        let e = conv2d(
            x.as_tensor(),
            &Tensor::zeros((4, 2, 3, 3), DType::F32, &dev)?,
            None,
            1,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[2, 3, 7, 6]") && e.contains("[4, 2, 3, 3]"),
            "{e}"
        );
        Ok(())
    }

    /// `ops::backward` gives the same gradients as `loss.backward()` through every fused op, including a
    /// weight used twice (its direct gradients and candle's are summed) and a frozen (non-variable) weight.
    #[test]
    fn direct_backward_equals_plain_backward() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 2, 5, 5), &dev)?;
        let k = Var::from_tensor(&Tensor::randn(0f32, 0.3, (3, 2, 3, 3), &dev)?)?;
        let kb = Var::from_tensor(&Tensor::randn(0f32, 0.3, 3, &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (12, 12), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 12, &dev)?)?;
        let frozen = Tensor::randn(0f32, 0.3, (6, 12), &dev)?;
        let ln_w = Var::from_tensor(&Tensor::ones(6, DType::F32, &dev)?)?;
        let ln_b = Var::from_tensor(&Tensor::zeros(6, DType::F32, &dev)?)?;
        let ids = Tensor::new(&[0u32, 5, 2, 3], &dev)?;
        let loss = || -> Result<Tensor> {
            let h = conv2d(&x, k.as_tensor(), Some(kb.as_tensor()), 1, 0)?; // [4, 3, 3, 3]
            let h = max_pool2d(&h, 2)?.flatten_from(1)?; // [4, 3]
            let h = Tensor::cat(&[&h, &h, &h, &h], 1)?; // [4, 12]
            let h = linear(&h, w.as_tensor(), Some(b.as_tensor()), true)?;
            let h = linear(&h, w.as_tensor(), None, false)?; // w used twice
            let h = (&h + h.matmul(w.as_tensor())?)?; // and once more by candle's own matmul
            let h = linear(&h, &frozen, None, false)?;
            let h = layer_norm(&h, ln_w.as_tensor(), ln_b.as_tensor(), 1e-5)?;
            let h = softmax_last(&h)?;
            crate::losses::ce_loss(&h, &ids)
        };
        let plain = loss()?.backward()?;
        let direct = backward(&loss()?)?;
        for v in [&k, &kb, &w, &b, &ln_w, &ln_b] {
            close(direct.get(v).unwrap(), plain.get(v).unwrap(), 1e-5);
        }
        assert!(direct.get(&frozen).is_none() && plain.get(&frozen).is_none());
        Ok(())
    }

    /// im2col and col2im against their definitions, element by element, over strides 1-3 and paddings 0-2
    /// (the cases candle's own convolution backward cannot serve as a reference for).
    #[test]
    fn im2col_and_col2im_follow_their_definitions() {
        for (h, w, k, stride, padding) in [
            (5, 7, 3, 1, 0),
            (6, 5, 3, 2, 1),
            (7, 8, 2, 3, 2),
            (4, 4, 3, 3, 2),
        ] {
            let g = ConvGeo {
                c: 2,
                h,
                w,
                o: 1,
                kh: k,
                kw: k,
                stride,
                padding,
            };
            let (oh, ow) = g.out_hw();
            let img: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
            let mut cols = vec![f32::NAN; g.k() * oh * ow];
            g.im2col(&img, &mut cols);
            let mut back = vec![0f32; img.len()];
            let mut want_back = vec![0f32; img.len()];
            for c in 0..2 {
                for ky in 0..k {
                    for kx in 0..k {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                let inside =
                                    iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                                let at = ((c * k + ky) * k + kx) * oh * ow + oy * ow + ox;
                                let want = if inside {
                                    img[(c * h + iy as usize) * w + ix as usize]
                                } else {
                                    0.0
                                };
                                assert_eq!(
                                    cols[at], want,
                                    "{h}x{w} k{k} s{stride} p{padding} at {at}"
                                );
                                if inside {
                                    want_back[(c * h + iy as usize) * w + ix as usize] += cols[at];
                                }
                            }
                        }
                    }
                }
            }
            g.col2im(&cols, &mut back);
            assert_eq!(back, want_back);
        }
    }

    /// The fused conv + ReLU + max-pool equals the three ops one after the other (the separate max-pool is
    /// checked against a hand-computed gradient above): values and every gradient, odd sizes included.
    #[test]
    fn fused_conv_relu_pool_equals_the_separate_ops() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w, stride, padding, pool) in [
            (9, 7, 1, 0, 2),
            (8, 8, 1, 1, 2),
            (10, 9, 2, 1, 2),
            (9, 9, 1, 1, 3),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, h, w), &dev)?)?;
            let k = Var::from_tensor(&Tensor::randn(0f32, 0.5, (5, 4, 3, 3), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 5, &dev)?)?;
            let fused = conv2d_relu_pool(
                x.as_tensor(),
                k.as_tensor(),
                Some(b.as_tensor()),
                stride,
                padding,
                pool,
            )?;
            let plain = max_pool2d(
                &conv2d_relu(
                    x.as_tensor(),
                    k.as_tensor(),
                    Some(b.as_tensor()),
                    stride,
                    padding,
                )?,
                pool,
            )?;
            assert_eq!(fused.dims(), plain.dims());
            close(&fused, &plain, 0.0);
            let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
            let gf = backward(&(&fused * &r)?.sum_all()?)?;
            let gp = (&plain * &r)?.sum_all()?.backward()?;
            for v in [&x, &k, &b] {
                close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-5);
            }
        }
        Ok(())
    }
}
