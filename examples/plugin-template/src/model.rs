//! The plugin's network: an MLP, `features -> hidden... -> classes`, ReLU and optional dropout, with its
//! hidden activations exposed as features (`hidden1`, ...) for feature-based distillation losses.

use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarMap};
use distill_core::{Error, FeatureKind, Mode, Network, Outputs, Result, TaskInfo};
use distill_nn::layers::dropout;

/// A multi-layer perceptron.
pub struct Mlp {
    layers: Vec<Linear>,
    sizes: Vec<usize>,
    dropout: f64,
    varmap: VarMap,
}

impl Mlp {
    /// Reads a recipe's `model` table: `{ arch = "mlp", hidden = [64, 64], dropout = 0.1 }`.
    pub fn from_table(
        model: &toml::Table,
        info: &TaskInfo,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let err = |msg: String| Error::config("model", msg);
        for key in model.keys() {
            if !["arch", "hidden", "dropout"].contains(&key.as_str()) {
                return Err(err(format!(
                    "unknown key `{key}` (known: arch, hidden, dropout)"
                )));
            }
        }
        match model.get("arch").and_then(|a| a.as_str()) {
            Some("mlp") => {}
            other => {
                return Err(Error::Unknown {
                    what: "model",
                    name: other.unwrap_or("(missing `arch`)").to_string(),
                    known: "mlp".into(),
                })
            }
        }
        let hidden = model
            .get("hidden")
            .and_then(|h| h.as_array())
            .ok_or_else(|| err("`hidden` must be a list of layer sizes, e.g. [64, 64]".into()))?
            .iter()
            .map(|v| v.as_integer().filter(|n| *n > 0).map(|n| n as usize))
            .collect::<Option<Vec<_>>>()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err("`hidden` must hold at least one positive integer".into()))?;
        let dropout = match model.get("dropout") {
            None => 0.0,
            Some(v) => v
                .as_float()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| err(format!("`dropout` must be a number in [0, 1), got {v}")))?,
        };
        Self::new(
            info.input_shape[0],
            &hidden,
            info.num_classes,
            dropout,
            seed,
            device,
        )
    }

    /// An MLP with the given sizes, its parameters drawn from `seed`.
    pub fn new(
        inputs: usize,
        hidden: &[usize],
        classes: usize,
        dropout: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, device);
        let sizes: Vec<usize> = std::iter::once(inputs)
            .chain(hidden.iter().copied())
            .chain(std::iter::once(classes))
            .collect();
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("fc{}", i + 1))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            sizes,
            dropout,
            varmap,
        })
    }
}

impl Network for Mlp {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        if input.rank() != 2 || input.dim(1)? != self.sizes[0] {
            return Err(Error::Shape(format!(
                "{} expects [B, {}] input, got {:?}",
                self.describe(),
                self.sizes[0],
                input.dims()
            )));
        }
        let (last, hidden) = self.layers.split_last().expect("at least one hidden layer");
        let mut x = input.clone();
        let mut features = Vec::new();
        for (i, layer) in hidden.iter().enumerate() {
            let h = layer.forward(&x)?.relu()?;
            x = dropout(&h, self.dropout, mode, &format!("hidden{}", i + 1))?;
            features.push((format!("hidden{}", i + 1), h));
        }
        let mut out = Outputs::logits(last.forward(&x)?);
        for (name, h) in features {
            out = out.with_feature(&name, FeatureKind::Vector, h)?;
        }
        Ok(out)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        self.sizes
            .windows(2)
            .map(|w| 2 * (w[0] * w[1]) as u64)
            .sum()
    }

    fn describe(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(|s| s.to_string()).collect();
        format!("mlp {}", sizes.join("-"))
    }
}
