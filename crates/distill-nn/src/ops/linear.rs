//! The fused linear layer `y = x·wᵀ + b` (+ ReLU) and its backward pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------------------------------------

/// `x·wᵀ (+ b)` with `x` `[N, in]` and `w` `[out, in]` (`x` any layout, `w` any layout; `b` `[out]`),
/// optionally through ReLU. Rank > 2 inputs `[.., in]` are flattened to rows and reshaped back.
///
/// ```
/// use candle_core::{Device, Tensor};
/// # fn main() -> distill_nn::Result<()> {
/// let x = Tensor::new(&[[1.0f32, 2.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1.0f32, 1.0], [1.0, -1.0]], &Device::Cpu)?;
/// let b = Tensor::new(&[0.5f32, 0.0], &Device::Cpu)?;
/// let y = distill_nn::ops::linear(&x, &w, Some(&b), true)?;
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

/// Rows up to which [`linear`] splits its output columns between threads itself.
const SMALL_ROWS: usize = 64;
/// Rows below which [`linear`] runs on the calling thread alone.
const TINY_ROWS: usize = 8;

/// A raw pointer that rayon's tasks may share (each writes its own disjoint part).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes and shared reads inside one op, which outlives the tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

pub(crate) struct LinearOp {
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
        let (xp, wp) = (
            SendPtr(xs[lx.start_offset()..].as_ptr() as *mut f32),
            SendPtr(ws[lw.start_offset()..].as_ptr() as *mut f32),
        );
        let dp = SendPtr(dst.as_mut_ptr());
        // columns j0 .. j0 + nj of dst from rows j0 .. j0 + nj of w
        let block = |j0: usize, nj: usize, par: gemm::Parallelism| {
            // SAFETY: the pointers cover the layouts' extents (checked by candle when the tensors were
            // built); dst is m·n contiguous, and the blocks of columns given to different threads are
            // disjoint.
            unsafe {
                gemm::gemm(
                    m,
                    nj,
                    k,
                    dp.get().add(j0),
                    1,
                    n as isize,
                    read_dst,
                    xp.get(),
                    x_cs,
                    x_rs,
                    wp.get().offset(j0 as isize * w_rs),
                    w_rs,
                    w_cs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        };
        match parallelism() {
            // a handful of rows (a batch of one): less work than waking another thread costs
            gemm::Parallelism::Rayon(_) if m < TINY_ROWS => block(0, n, gemm::Parallelism::None),
            // few rows (a sentence's tokens, a small batch): gemm does not split them well, so each
            // thread takes its own block of output columns, one thread per block
            gemm::Parallelism::Rayon(t) if m <= SMALL_ROWS && n >= 32 * t => {
                let nj = n.div_ceil(t).next_multiple_of(16);
                (0..n.div_ceil(nj)).into_par_iter().for_each(|b| {
                    let j0 = b * nj;
                    block(j0, nj.min(n - j0), gemm::Parallelism::None)
                });
            }
            par => block(0, n, par),
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

/// gemm's threads: candle's thread count, but never more than the rayon pool the caller runs in (a latency
/// measurement installs a one-thread pool, and gemm must then run on that one thread).
pub(crate) fn parallelism() -> gemm::Parallelism {
    let n = candle_core::utils::get_num_threads().min(rayon::current_num_threads());
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

weighted_op!(LinearOp, "distill-linear");

/// The gradients of a fused linear layer from the output's gradient `g` (and the output, for the ReLU
/// mask), packed as `[gw (out·in) | gb (out) | gx (rows·in)]`, each present only when wanted.
pub(crate) struct LinearGrad {
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
pub(crate) struct ReluGrad;

/// `g · [r > 0]` elementwise, in parallel.
pub(crate) fn relu_masked(g: &[f32], r: &[f32]) -> Vec<f32> {
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
