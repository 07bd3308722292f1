//! A fully connected layer, PyTorch's `nn.Linear`: `weight` `[out, in]`, `bias` `[out]`.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{ops, Error, Result};

/// How a [`Linear`]'s parameters start (when the var builder does not hold them already).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LinearInit {
    /// candle-nn's `linear`: weight Kaiming-normal (std `sqrt(2 / in)`), bias `U(±1/sqrt(in))`.
    #[default]
    Candle,
    /// BERT's: weight `N(0, std)`, bias 0.
    Normal {
        /// Standard deviation of the weight.
        std: f64,
    },
}

/// The shape of a [`Linear`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearConfig {
    /// Input width.
    pub in_features: usize,
    /// Output width.
    pub out_features: usize,
    /// Whether there is a bias.
    pub bias: bool,
    /// Initialisation.
    #[serde(default)]
    pub init: LinearInit,
}

impl LinearConfig {
    /// `in_features -> out_features` with a bias and candle's initialisation.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            bias: true,
            init: LinearInit::Candle,
        }
    }
    /// The same with `init`.
    pub fn with_init(mut self, init: LinearInit) -> Self {
        self.init = init;
        self
    }
    /// The same without a bias.
    pub fn without_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

/// `y = x·wᵀ + b` over the last dimension (any leading dimensions), one fused node on the CPU
/// ([`ops::linear`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer with parameters `weight` and `bias` under `vb`.
    pub fn new(cfg: &LinearConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.in_features == 0 || cfg.out_features == 0 {
            return Err(Error::Shape(format!(
                "linear {} -> {}: widths must be positive",
                cfg.in_features, cfg.out_features
            )));
        }
        let (i, o) = (cfg.in_features, cfg.out_features);
        match cfg.init {
            LinearInit::Candle => {
                let l = if cfg.bias {
                    candle_nn::linear(i, o, vb)?
                } else {
                    candle_nn::linear_no_bias(i, o, vb)?
                };
                Ok(Self {
                    weight: l.weight().clone(),
                    bias: l.bias().cloned(),
                })
            }
            LinearInit::Normal { std } => {
                let weight = vb.get_with_hints(
                    (o, i),
                    "weight",
                    Init::Randn {
                        mean: 0.0,
                        stdev: std,
                    },
                )?;
                let bias = if cfg.bias {
                    Some(vb.get_with_hints(o, "bias", Init::Const(0.0))?)
                } else {
                    None
                };
                Ok(Self { weight, bias })
            }
        }
    }

    /// A layer over existing tensors.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `x·wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref(), false)
    }

    /// `relu(x·wᵀ + b)`, as one node.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref(), true)
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// FLOPs per row (2 per multiply-add).
    pub fn flops(&self) -> u64 {
        2 * self.weight.elem_count() as u64
    }
}
