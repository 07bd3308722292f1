//! A multi-layer perceptron: `in -> hidden1 -> ... -> hidden{n} -> out`, ReLU between layers, optional
//! dropout on the input and after every hidden layer. Parameters `fc1.weight`, `fc1.bias`, …,
//! `fc{n+1}.*` (the output layer).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{dropout, Linear, LinearConfig};
use crate::{Error, Mode, Result};

/// The shape of an [`Mlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Input width.
    pub input: usize,
    /// Hidden widths (at least one).
    pub hidden: Vec<usize>,
    /// Output width.
    pub output: usize,
    /// Dropout after every hidden layer (training only).
    #[serde(default)]
    pub dropout: f64,
    /// Dropout on the input (training only).
    #[serde(default)]
    pub input_dropout: f64,
}

impl MlpConfig {
    /// `input -> hidden.. -> output` without dropout.
    pub fn new(input: usize, hidden: &[usize], output: usize) -> Self {
        Self {
            input,
            hidden: hidden.to_vec(),
            output,
            dropout: 0.0,
            input_dropout: 0.0,
        }
    }
}

/// What an [`Mlp`] computes: the output and every hidden layer's activation (post-ReLU, before dropout).
#[derive(Debug, Clone)]
pub struct MlpOutput {
    /// `[B, output]`.
    pub output: Tensor,
    /// `[B, hidden_i]` for each hidden layer.
    pub hidden: Vec<Tensor>,
    /// `[B, hidden_i]` before the ReLU, for each hidden layer; empty unless asked for
    /// ([`Mlp::forward_taps`]).
    pub pre: Vec<Tensor>,
}

/// A multi-layer perceptron over `[B, input]` rows; each layer is one fused [`Linear`] (+ ReLU) node.
#[derive(Debug, Clone)]
pub struct Mlp {
    cfg: MlpConfig,
    pub(crate) layers: Vec<Linear>,
}

impl Mlp {
    /// The MLP `cfg`, parameters under `vb` (`fc1`, `fc2`, …).
    pub fn new(cfg: &MlpConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.hidden.is_empty() || cfg.hidden.contains(&0) || cfg.input == 0 || cfg.output == 0 {
            return Err(Error::config(
                "model",
                format!(
                    "mlp needs positive sizes and at least one hidden layer, got {}-{:?}-{}",
                    cfg.input, cfg.hidden, cfg.output
                ),
            ));
        }
        for (k, p) in [
            ("dropout", cfg.dropout),
            ("input_dropout", cfg.input_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(
                    "model",
                    format!("{k} must be in [0, 1), got {p}"),
                ));
            }
        }
        let sizes = cfg.sizes();
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                Linear::new(
                    &LinearConfig::new(w[0], w[1]),
                    vb.pp(format!("fc{}", i + 1)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            layers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.cfg
    }

    /// The output and hidden activations; dropout masks are drawn from `mode`'s seed and `salt`
    /// (`{salt}.input`, `{salt}.hidden{i}`).
    pub fn forward_all(&self, x: &Tensor, mode: Mode, salt: &str) -> Result<MlpOutput> {
        self.forward_taps(x, mode, salt, false)
    }

    /// [`Mlp::forward_all`], with the hidden layers' pre-ReLU values as well when `pre` is set (each layer is
    /// then a linear node and a ReLU node instead of one fused node: the same numbers, one more pass over
    /// the activations).
    pub fn forward_taps(&self, x: &Tensor, mode: Mode, salt: &str, pre: bool) -> Result<MlpOutput> {
        let mut x = dropout(x, self.cfg.input_dropout, mode, &format!("{salt}.input"))?;
        let (out, hidden_layers) = self.layers.split_last().expect("at least two layers");
        let mut hidden = Vec::with_capacity(hidden_layers.len());
        let mut pres = Vec::new();
        for (i, layer) in hidden_layers.iter().enumerate() {
            let h = if pre {
                let p = layer.forward(&x)?;
                let h = p.relu()?;
                pres.push(p);
                h
            } else {
                layer.forward_relu(&x)?
            };
            x = dropout(
                &h,
                self.cfg.dropout,
                mode,
                &format!("{salt}.hidden{}", i + 1),
            )?;
            hidden.push(h);
        }
        Ok(MlpOutput {
            output: out.forward(&x)?,
            hidden,
            pre: pres,
        })
    }

    /// The output alone (dropout salt `mlp`).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(self.forward_all(x, mode, "mlp")?.output)
    }

    /// FLOPs per row.
    pub fn flops(&self) -> u64 {
        self.layers.iter().map(Linear::flops).sum()
    }
}

impl MlpConfig {
    /// `[input, hidden.., output]`.
    pub fn sizes(&self) -> Vec<usize> {
        let mut s = Vec::with_capacity(self.hidden.len() + 2);
        s.push(self.input);
        s.extend_from_slice(&self.hidden);
        s.push(self.output);
        s
    }
}
