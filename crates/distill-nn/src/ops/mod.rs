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

use candle_core::{CpuStorage, DType, Layout, Tensor};

use crate::Result;

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

mod conv;
mod conv1d;
mod depthwise;
mod linear;
mod norm;
mod pool;
mod rows;
mod softmax;
#[cfg(test)]
mod tests;

pub use conv::*;
pub use conv1d::*;
pub use depthwise::*;
pub use linear::*;
pub use norm::*;
pub use pool::*;
pub use rows::*;
pub use softmax::*;
