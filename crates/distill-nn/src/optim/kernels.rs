//! The fused in-place CPU kernels of SGD and AdamW/Adam.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp2, Layout};
use rayon::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------------------
// Fused CPU kernels
// ---------------------------------------------------------------------------------------------------------

/// The contiguous f32 elements of a parameter's storage.
pub(crate) fn param_slice<'s>(
    s: &'s mut CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'s mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: the parameter is not f32")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the parameter is not contiguous")
    };
    Ok(&mut v[start..end])
}

/// Read access to a gradient in any (strided) layout, in the parameter's row-major element order.
pub(crate) enum GradView<'a> {
    Contiguous(&'a [f32]),
    Strided {
        data: &'a [f32],
        dims: &'a [usize],
        strides: &'a [usize],
        offset: usize,
    },
}

impl<'a> GradView<'a> {
    pub(crate) fn new(
        s: &'a CpuStorage,
        l: &'a Layout,
        n: usize,
        op: &'static str,
    ) -> candle_core::Result<Self> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("{op}: the gradient is not f32")
        };
        if l.shape().elem_count() != n {
            candle_core::bail!(
                "{op}: the gradient has {} elements, the parameter {n}",
                l.shape().elem_count()
            )
        }
        Ok(match l.contiguous_offsets() {
            Some((start, end)) => GradView::Contiguous(&v[start..end]),
            None => GradView::Strided {
                data: v,
                dims: l.dims(),
                strides: l.stride(),
                offset: l.start_offset(),
            },
        })
    }

    /// Elements `start..start + len`, gathered into `scratch` when strided.
    pub(crate) fn chunk<'s>(
        &'s self,
        start: usize,
        len: usize,
        scratch: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        match self {
            GradView::Contiguous(g) => &g[start..start + len],
            GradView::Strided {
                data,
                dims,
                strides,
                offset,
            } => {
                scratch.resize(len, 0.0);
                gather(data, dims, strides, *offset, start, scratch);
                scratch
            }
        }
    }
}

/// Copies the row-major elements `start..start + out.len()` of the strided view `(dims, strides, offset)` of
/// `data` into `out`.
pub(crate) fn gather(
    data: &[f32],
    dims: &[usize],
    strides: &[usize],
    offset: usize,
    start: usize,
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    let rank = dims.len();
    if rank == 0 {
        out[0] = data[offset];
        return;
    }
    let mut idx = vec![0usize; rank];
    let mut rem = start;
    for d in (0..rank).rev() {
        idx[d] = rem % dims[d];
        rem /= dims[d];
    }
    let mut pos = offset + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
    let last = rank - 1;
    let (n_in, s_in) = (dims[last], strides[last]);
    let mut k = 0;
    while k < out.len() {
        let run = (n_in - idx[last]).min(out.len() - k);
        for (j, o) in out[k..k + run].iter_mut().enumerate() {
            *o = data[pos + j * s_in];
        }
        k += run;
        idx[last] += run;
        pos += run * s_in;
        if idx[last] == n_in && k < out.len() {
            // carry into the outer dimensions
            pos -= n_in * s_in;
            idx[last] = 0;
            let mut d = last;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                pos += strides[d];
                if idx[d] < dims[d] {
                    break;
                }
                pos -= dims[d] * strides[d];
                idx[d] = 0;
            }
        }
    }
}

/// Fused SGD: `g += wd·w; buf = μ·buf + g (buf = g at first); g = nesterov ? g + μ·buf : buf; w -= lr·g`.
pub(crate) struct SgdKernel<'a> {
    /// The momentum buffer (`None` without momentum).
    pub(crate) buf: RefCell<Option<&'a mut [f32]>>,
    /// Whether `buf` is being created by this step (PyTorch: `buf = g`).
    pub(crate) first: bool,
    pub(crate) lr: f32,
    pub(crate) momentum: f32,
    pub(crate) weight_decay: f32,
    pub(crate) nesterov: bool,
}

impl SgdKernel<'_> {
    const NAME: &'static str = "distill-fused-sgd";
}

impl InplaceOp2 for SgdKernel<'_> {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let w = param_slice(s1, l1, Self::NAME)?;
        let grad = GradView::new(s2, l2, w.len(), Self::NAME)?;
        let (lr, mu, wd, nesterov, first) = (
            self.lr,
            self.momentum,
            self.weight_decay,
            self.nesterov,
            self.first,
        );
        let mut buf = self.buf.borrow_mut();
        // one chunk: elements `c * CHUNK ..` of the parameter and (when there is momentum) of the buffer
        let run = |c: usize, w: &mut [f32], b: Option<&mut [f32]>| {
            let mut scratch = Vec::new();
            let g = grad.chunk(c * CHUNK, w.len(), &mut scratch);
            match b {
                None => {
                    for (w, &g) in w.iter_mut().zip(g) {
                        let d = g + wd * *w;
                        *w += -lr * d;
                    }
                }
                Some(b) => {
                    for ((w, b), &g) in w.iter_mut().zip(b.iter_mut()).zip(g) {
                        let d = g + wd * *w;
                        let nb = if first { d } else { mu * *b + d };
                        *b = nb;
                        let u = if nesterov { d + mu * nb } else { nb };
                        *w += -lr * u;
                    }
                }
            }
        };
        match buf.as_deref_mut() {
            None if w.len() <= CHUNK => run(0, w, None),
            None => w
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, w)| run(c, w, None)),
            Some(b) if b.len() != w.len() => {
                candle_core::bail!("{}: momentum buffer size mismatch", Self::NAME)
            }
            Some(b) if w.len() <= CHUNK => run(0, w, Some(b)),
            Some(b) => w
                .par_chunks_mut(CHUNK)
                .zip(b.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, (w, b))| run(c, w, Some(b))),
        }
        Ok(())
    }
}

/// Fused AdamW (PyTorch's order of operations):
/// `w *= 1 − lr·wd; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; w −= step_size · m / (√v / √bc2 + ε)`.
pub(crate) struct AdamWKernel<'a> {
    pub(crate) m: RefCell<&'a mut [f32]>,
    pub(crate) v: RefCell<&'a mut [f32]>,
    pub(crate) decay: f32,
    /// Adam's coupled L2 (`g += l2·w`); 0 for AdamW.
    pub(crate) l2: f32,
    pub(crate) beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) step_size: f32,
    pub(crate) bc2_sqrt: f32,
    pub(crate) eps: f32,
}

impl AdamWKernel<'_> {
    const NAME: &'static str = "distill-fused-adamw";
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let w = param_slice(s1, l1, Self::NAME)?;
        let grad = GradView::new(s2, l2, w.len(), Self::NAME)?;
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let (m, v): (&mut [f32], &mut [f32]) = (&mut m, &mut v);
        if m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!("{}: state buffer size mismatch", Self::NAME)
        }
        let (decay, l2, b1, b2, step_size, bc2_sqrt, eps) = (
            self.decay,
            self.l2,
            self.beta1,
            self.beta2,
            self.step_size,
            self.bc2_sqrt,
            self.eps,
        );
        let (one_b1, one_b2) = (1.0 - b1, 1.0 - b2);
        let run = |c: usize, w: &mut [f32], m: &mut [f32], v: &mut [f32]| {
            let mut scratch = Vec::new();
            let g = grad.chunk(c * CHUNK, w.len(), &mut scratch);
            for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                let g = if l2 != 0.0 { g + l2 * *w } else { g };
                let nm = b1 * *m + one_b1 * g;
                let nv = b2 * *v + one_b2 * (g * g);
                *m = nm;
                *v = nv;
                let denom = nv.sqrt() / bc2_sqrt + eps;
                *w = *w * decay + -step_size * (nm / denom);
            }
        };
        if w.len() <= CHUNK {
            // no rayon round trip for small tensors (biases, norms)
            run(0, w, m, v);
        } else {
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, ((w, m), v))| run(c, w, m, v));
        }
        Ok(())
    }
}
