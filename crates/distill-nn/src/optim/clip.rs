//! Gradient norms and clipping.

use candle_core::{backprop::GradStore, CpuStorage, DType, Storage, Tensor, Var};
use rayon::prelude::*;

use super::*;
use crate::{is_buffer, Error, Result};

// ---------------------------------------------------------------------------------------------------------
// Gradient norms and clipping
// ---------------------------------------------------------------------------------------------------------

/// Σx² in f64 over a chunk, with eight fixed accumulators (vectorisable and deterministic).
pub(crate) fn sum_sq(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            let v = c[k] as f64;
            acc[k] += v * v;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in it.remainder() {
        s += (v as f64) * (v as f64);
    }
    s
}

/// Σx² of a CPU f32 tensor (parallel, deterministic order), `None` for other tensors.
pub(crate) fn cpu_sum_sq(t: &Tensor) -> Option<f64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        return None;
    };
    let n = layout.shape().elem_count();
    let gathered;
    let data: &[f32] = match layout.contiguous_offsets() {
        Some((start, end)) => &v[start..end],
        None => {
            let mut out = vec![0f32; n];
            gather(
                v,
                layout.dims(),
                layout.stride(),
                layout.start_offset(),
                0,
                &mut out,
            );
            gathered = out;
            &gathered
        }
    };
    if data.len() <= CHUNK {
        return Some(sum_sq(data));
    }
    let parts: Vec<f64> = data.par_chunks(CHUNK).map(sum_sq).collect();
    Some(parts.iter().sum())
}

/// The global L2 norm of the gradients of `vars` in `grads` (variables without a gradient and buffers are
/// skipped), accumulated in f64.
pub fn grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64> {
    let mut total = 0f64;
    let mut device_parts = Vec::new();
    for (name, var) in vars {
        if is_buffer(name) {
            continue;
        }
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        match cpu_sum_sq(g) {
            Some(s) => total += s,
            None => device_parts.push(g.to_dtype(DType::F64)?.sqr()?.sum_all()?),
        }
    }
    if !device_parts.is_empty() {
        total += Tensor::stack(&device_parts, 0)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Clips gradients by their global L2 norm, as PyTorch's `clip_grad_norm_`: computes the norm of the
/// gradients of `vars` ([`grad_norm`]) and, if it exceeds `max_norm`, replaces each gradient in `grads` by
/// `g · max_norm / (norm + 1e-6)`. Returns the norm *before* clipping. A non-finite norm leaves the
/// gradients untouched (the caller decides whether that is divergence).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::msg(format!(
            "clip_grad_norm: max_norm must be > 0, got {max_norm}"
        )));
    }
    let norm = grad_norm(grads, vars)?;
    if norm.is_finite() && norm > max_norm {
        let coef = max_norm / (norm + 1e-6);
        for (name, var) in vars {
            if is_buffer(name) {
                continue;
            }
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = g.affine(coef, 0.0)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}
