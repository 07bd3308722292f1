//! Normalisation layers with PyTorch's names: `LayerNorm` (`weight`, `bias`) and `BatchNorm2d` (`weight`,
//! `bias`, `running_mean`, `running_var`).

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::{ops, Result};

/// LayerNorm over the last dimension, one fused node (with its backward pass) on the CPU.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

impl LayerNorm {
    /// Normalises `size` values with `eps`; scale 1 and shift 0 unless `vb` holds them.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    /// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A 2-D batch norm over `c` channels with PyTorch's defaults (eps 1e-5, momentum 0.1, scale and shift),
/// run through the fused [`ops::batch_norm`] by [`BatchNorm2d::forward`].
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    inner: candle_nn::BatchNorm,
}

impl BatchNorm2d {
    /// A batch norm over `c` channels.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::batch_norm(c, candle_nn::BatchNormConfig::default(), vb)?,
        })
    }

    /// Normalises `x` `[B, C, ..]`: batch statistics (updating the running ones) when `train`, else the
    /// running statistics; then ReLU when `relu`.
    pub fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        ops::batch_norm(&self.inner, x, train, relu)
    }

    /// candle's batch norm (running statistics and affine parameters).
    pub fn inner(&self) -> &candle_nn::BatchNorm {
        &self.inner
    }
}
