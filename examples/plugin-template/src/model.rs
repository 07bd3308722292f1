//! The plugin's network: an MLP, `features -> hidden... -> classes`, ReLU and optional dropout, composed from
//! distill-nn's [`Mlp`] layer, with its hidden activations exposed as features (`hidden1`, ...) for
//! feature-based distillation losses. Parameters are named as PyTorch names an `nn.Sequential`-free MLP's
//! (`fc1.weight`, `fc1.bias`, `fc2.weight`, ...), so a state dict loads both ways.

use candle_core::Tensor;
use candle_nn::VarMap;
use distill_core::{BuildContext, Error, FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::layers::{Mlp, MlpConfig};
use serde::Deserialize;

/// A recipe's `model` table, checked once: `{ arch = "mlp", hidden = [64, 64], dropout = 0.1 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpOptions {
    /// Must be `"mlp"`.
    pub arch: String,
    /// Hidden layer widths (at least one).
    pub hidden: Vec<usize>,
    /// Dropout after each hidden layer while training (default 0).
    #[serde(default)]
    pub dropout: f64,
}

impl MlpOptions {
    /// Reads a recipe's `model` table.
    pub fn from_table(model: &toml::Table) -> Result<Self> {
        let options: Self = toml::Value::Table(model.clone())
            .try_into()
            .map_err(|e: toml::de::Error| Error::config("model", e.message()))?;
        if options.arch != "mlp" {
            return Err(Error::Unknown {
                what: "model",
                name: options.arch,
                known: "mlp".into(),
            });
        }
        Ok(options)
    }
}

/// The plugin's network: a [`Mlp`] and the variables it trains.
pub struct MlpNet {
    mlp: Mlp,
    varmap: VarMap,
}

impl MlpNet {
    /// Builds the network a recipe's `model` table describes for `ctx.info`, its parameters drawn from
    /// `ctx.seed`.
    pub fn from_table(model: &toml::Table, ctx: &BuildContext) -> Result<Self> {
        let options = MlpOptions::from_table(model)?;
        let cfg = MlpConfig {
            dropout: options.dropout,
            ..MlpConfig::new(
                ctx.info.input_shape[0],
                &options.hidden,
                ctx.info.num_classes,
            )
        };
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, ctx.seed, ctx.device);
        let mlp = Mlp::new(&cfg, vb)?;
        Ok(Self { mlp, varmap })
    }
}

impl Network for MlpNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        let inputs = self.mlp.config().input;
        if input.rank() != 2 || input.dim(1)? != inputs {
            return Err(Error::Shape(format!(
                "{} expects [B, {inputs}] input, got {:?}",
                self.describe(),
                input.dims()
            )));
        }
        let out = self.mlp.forward_all(input, mode, "mlp")?;
        let mut outputs = Outputs::logits(out.output);
        for (i, h) in out.hidden.into_iter().enumerate() {
            outputs = outputs.with_feature(&format!("hidden{}", i + 1), FeatureKind::Vector, h)?;
        }
        Ok(outputs)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        self.mlp.flops()
    }

    fn describe(&self) -> String {
        let sizes: Vec<String> = self
            .mlp
            .config()
            .sizes()
            .iter()
            .map(|s| s.to_string())
            .collect();
        format!("mlp {}", sizes.join("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_options_are_typed_and_unknown_keys_refused() {
        let e = |text: &str| {
            MlpOptions::from_table(&text.parse().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(e("arch = \"mlp\"\nhidden = [4]\nwidth = 3").contains("unknown field `width`"));
        assert!(e("arch = \"cnn\"\nhidden = [4]").contains("cnn"));
        assert!(e("arch = \"mlp\"").contains("missing field `hidden`"));
        let o =
            MlpOptions::from_table(&"arch = \"mlp\"\nhidden = [4, 2]".parse().unwrap()).unwrap();
        assert_eq!((o.hidden, o.dropout), (vec![4, 2], 0.0));
    }
}
