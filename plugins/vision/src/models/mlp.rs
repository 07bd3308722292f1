//! Multi-layer perceptron: `in -> hidden1 -> ... -> hidden{n} -> classes`, ReLU between layers, optional
//! dropout on the input and after every hidden layer (the MNIST teacher of Hinton, Vinyals & Dean 2015 is
//! `784-1200-1200-10` with dropout; its student `784-800-800-10` without).
//!
//! Parameters: `fc1.weight` `[h1, in]`, `fc1.bias`, …, `fc{n+1}.weight` `[classes, h_n]` (the output layer).
//! Features: `hidden1` … `hidden{n}` (`[B, h_i]`, post-ReLU, before dropout) and `penultimate` (= `hidden{n}`).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_core::{Error, FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::{
    init::seeded_var_builder,
    layers::{Mlp as MlpLayer, MlpConfig},
};

/// A multi-layer perceptron over flattened input: [`distill_nn::layers::Mlp`] as a [`Network`].
pub struct Mlp {
    pub(crate) mlp: MlpLayer,
    /// `[in, h1, ..., hn, classes]`.
    pub(crate) sizes: Vec<usize>,
    /// `[C, H, W]` of the images the input rows are flattened from, when known (the ONNX export's input).
    pub(crate) image: Option<[usize; 3]>,
    /// Pre-ReLU taps in training as well as in evaluation.
    pub(crate) pre_in_training: bool,
    varmap: VarMap,
}

impl Mlp {
    /// An MLP over `input_dim` inputs with `hidden` layer sizes (at least one) and `num_classes` outputs;
    /// `dropout` applies after every hidden layer, `input_dropout` to the input (training only).
    pub fn new(
        input_dim: usize,
        hidden: &[usize],
        num_classes: usize,
        dropout: f64,
        input_dropout: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let cfg = MlpConfig {
            dropout,
            input_dropout,
            ..MlpConfig::new(input_dim, hidden, num_classes)
        };
        let mlp = MlpLayer::new(&cfg, seeded_var_builder(&varmap, seed, device))?;
        Ok(Self {
            sizes: cfg.sizes(),
            mlp,
            image: None,
            pre_in_training: false,
            varmap,
        })
    }

    /// The same network, exposing its pre-ReLU taps in training too when `on` (evaluation always does; in
    /// training each hidden layer is then a linear node and a ReLU node instead of one fused node).
    pub fn with_pre_activations(mut self, on: bool) -> Self {
        self.pre_in_training = on;
        self
    }

    /// The same network, told that its input rows are flattened `[C, H, W]` images: its ONNX export then
    /// takes `[batch, C, H, W]` images. `C·H·W` must be the input width.
    pub fn with_image_shape(mut self, shape: [usize; 3]) -> Result<Self> {
        if shape.iter().product::<usize>() != self.sizes[0] {
            return Err(Error::Shape(format!(
                "{}: an image of shape {shape:?} is not {} input values",
                self.describe(),
                self.sizes[0]
            )));
        }
        self.image = Some(shape);
        Ok(self)
    }

    /// Layer sizes `[in, h1, ..., hn, classes]`.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
}

impl Network for Mlp {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        let x = if input.rank() == 2 {
            input.clone()
        } else if input.rank() > 2 {
            input.flatten_from(1)?
        } else {
            return Err(Error::Shape(format!(
                "mlp expects [B, ...] input, got {:?}",
                input.dims()
            )));
        };
        if x.dim(1)? != self.sizes[0] {
            return Err(Error::Shape(format!(
                "{} expects {} input values per sample, got input {:?}",
                self.describe(),
                self.sizes[0],
                input.dims()
            )));
        }
        // the pre-ReLU taps (`hidden{i}.pre`, `penultimate.pre`) are what OFD distils: always in evaluation
        // (the same numbers as the fused path), in training only when asked (the fused node's training
        // trajectory stays what it was)
        let pre = !mode.is_train() || self.pre_in_training;
        let out = self.mlp.forward_taps(&x, mode, "mlp", pre)?;
        let penultimate = out.hidden.last().expect("a hidden layer").clone();
        let penultimate_pre = out.pre.last().cloned();
        let mut outputs = Outputs::logits(out.output);
        for (i, h) in out.hidden.into_iter().enumerate() {
            outputs = outputs.with_feature(&format!("hidden{}", i + 1), FeatureKind::Vector, h)?;
        }
        for (i, p) in out.pre.into_iter().enumerate() {
            outputs =
                outputs.with_feature(&format!("hidden{}.pre", i + 1), FeatureKind::Vector, p)?;
        }
        outputs = outputs.with_feature("penultimate", FeatureKind::Vector, penultimate)?;
        match penultimate_pre {
            Some(p) => outputs.with_feature("penultimate.pre", FeatureKind::Vector, p),
            None => Ok(outputs),
        }
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        self.mlp.flops()
    }

    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> Result<()> {
        self.emit_onnx(g)
    }

    /// An MLP written in PyTorch as `nn.Sequential(nn.Flatten(), nn.Linear(..), nn.ReLU(), ...)` has
    /// numbered names: its Linear layers are `fc1`, `fc2`, … in order.
    fn import_rules(&self) -> distill_core::network::ImportRules {
        distill_core::network::ImportRules {
            sequential: Some((1..self.sizes.len()).map(|i| format!("fc{i}")).collect()),
            ..Default::default()
        }
    }

    fn describe(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(|s| s.to_string()).collect();
        let mut d = format!("mlp {}", sizes.join("-"));
        let cfg = self.mlp.config();
        if cfg.input_dropout > 0.0 || cfg.dropout > 0.0 {
            d.push_str(&format!(
                " (dropout input {}, hidden {})",
                cfg.input_dropout, cfg.dropout
            ));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_core::network::{num_params, num_trainable_params};

    #[test]
    fn shapes_names_features_and_flops() -> Result<()> {
        let dev = Device::Cpu;
        let net = Mlp::new(784, &[1200, 1200], 10, 0.5, 0.2, 1, &dev)?;
        assert_eq!(
            net.describe(),
            "mlp 784-1200-1200-10 (dropout input 0.2, hidden 0.5)"
        );
        let expected = 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10;
        assert_eq!(num_trainable_params(&net), expected);
        assert_eq!(num_params(&net), expected);
        assert_eq!(
            net.flops(),
            2 * (784 * 1200 + 1200 * 1200 + 1200 * 10) as u64
        );
        let mut names: Vec<String> = net
            .varmap()
            .data()
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "fc1.bias",
                "fc1.weight",
                "fc2.bias",
                "fc2.weight",
                "fc3.bias",
                "fc3.weight"
            ]
        );
        let x = Tensor::rand(0f32, 1f32, (3, 1, 28, 28), &dev)?;
        let out = net.forward(&x, Mode::Eval)?;
        assert_eq!(out.logits.dims(), [3, 10]);
        let keys: Vec<&String> = out.features.keys().collect();
        assert_eq!(
            keys,
            [
                "hidden1",
                "hidden1.pre",
                "hidden2",
                "hidden2.pre",
                "penultimate",
                "penultimate.pre"
            ]
        );
        assert_eq!(out.feature("hidden1")?.tensor.dims(), [3, 1200]);
        assert_eq!(out.feature("penultimate")?.kind, FeatureKind::Vector);
        let h2: Vec<f32> = out.feature("hidden2")?.tensor.flatten_all()?.to_vec1()?;
        let pen: Vec<f32> = out
            .feature("penultimate")?
            .tensor
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(h2, pen);
        assert!(h2.iter().all(|&v| v >= 0.0), "post-ReLU");
        // the pre-ReLU tap is the hidden layer before its ReLU: negative values where the tap is 0
        let pre: Vec<f32> = out
            .feature("penultimate.pre")?
            .tensor
            .flatten_all()?
            .to_vec1()?;
        assert!(pre.iter().any(|&v| v < 0.0));
        assert!(pre.iter().zip(&h2).all(|(p, h)| *h == p.max(0.0)));
        // in training the taps come only when asked for (the fused node otherwise)
        let train = Mode::Train { seed: 3 };
        let keys = |o: &Outputs| o.features.keys().cloned().collect::<Vec<String>>();
        assert_eq!(
            keys(&net.forward(&x, train)?),
            ["hidden1", "hidden2", "penultimate"]
        );
        let asked = Mlp::new(784, &[1200, 1200], 10, 0.5, 0.2, 1, &dev)?.with_pre_activations(true);
        let with = asked.forward(&x, train)?;
        assert!(keys(&with).contains(&"penultimate.pre".to_string()));
        let plain = net.forward(&x, train)?;
        let (a, b): (Vec<f32>, Vec<f32>) = (
            with.logits.flatten_all()?.to_vec1()?,
            plain.logits.flatten_all()?.to_vec1()?,
        );
        assert_eq!(a, b, "the same training outputs either way");
        // the logits are those of the fused path
        let fused = net
            .mlp
            .forward_all(&x.flatten_from(1)?, Mode::Eval, "mlp")?;
        let lf: Vec<f32> = fused.output.flatten_all()?.to_vec1()?;
        assert_eq!(lf, out.logits.flatten_all()?.to_vec1::<f32>()?);
        // [B, D] input works too, and a wrong size is a shape error.
        let out2 = net.forward(&x.flatten_from(1)?, Mode::Eval)?;
        let a: Vec<f32> = out.logits.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = out2.logits.flatten_all()?.to_vec1()?;
        assert_eq!(a, b);
        let err = net
            .forward(
                &Tensor::zeros((2, 3, 28, 28), candle_core::DType::F32, &dev)?,
                Mode::Eval,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("784") && err.contains("[2, 3, 28, 28]"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn matches_a_manual_forward_pass() -> Result<()> {
        let dev = Device::Cpu;
        let net = Mlp::new(4, &[3], 2, 0.0, 0.0, 9, &dev)?;
        let data = net.varmap().data().lock().unwrap().clone();
        let get = |k: &str| -> Vec<Vec<f32>> {
            let t = data[k].as_tensor();
            if t.rank() == 1 {
                vec![t.to_vec1().unwrap()]
            } else {
                t.to_vec2().unwrap()
            }
        };
        let (w1, b1, w2, b2) = (
            get("fc1.weight"),
            get("fc1.bias"),
            get("fc2.weight"),
            get("fc2.bias"),
        );
        let x = [0.5f32, -1.0, 2.0, 0.25];
        let h: Vec<f32> = (0..3)
            .map(|j| (b1[0][j] + (0..4).map(|i| w1[j][i] * x[i]).sum::<f32>()).max(0.0))
            .collect();
        let y: Vec<f32> = (0..2)
            .map(|k| b2[0][k] + (0..3).map(|j| w2[k][j] * h[j]).sum::<f32>())
            .collect();
        let out = net.forward(&Tensor::new(&[x], &dev)?, Mode::Eval)?;
        let got: Vec<f32> = out.logits.flatten_all()?.to_vec1()?;
        for (g, e) in got.iter().zip(&y) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {y:?}");
        }
        Ok(())
    }

    #[test]
    fn dropout_only_in_training_and_seeded() -> Result<()> {
        let dev = Device::Cpu;
        let net = Mlp::new(20, &[50, 50], 5, 0.5, 0.2, 3, &dev)?;
        let x = Tensor::rand(0f32, 1f32, (4, 20), &dev)?;
        let v = |m: Mode| -> Vec<f32> {
            net.forward(&x, m)
                .unwrap()
                .logits
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(v(Mode::Eval), v(Mode::Eval));
        assert_eq!(v(Mode::Train { seed: 1 }), v(Mode::Train { seed: 1 }));
        assert_ne!(v(Mode::Train { seed: 1 }), v(Mode::Train { seed: 2 }));
        assert_ne!(v(Mode::Train { seed: 1 }), v(Mode::Eval));
        // Without dropout, training and evaluation agree.
        let plain = Mlp::new(20, &[50], 5, 0.0, 0.0, 3, &dev)?;
        let a: Vec<f32> = plain
            .forward(&x, Mode::Eval)?
            .logits
            .flatten_all()?
            .to_vec1()?;
        let b: Vec<f32> = plain
            .forward(&x, Mode::Train { seed: 7 })?
            .logits
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(a, b);
        Ok(())
    }
}

#[cfg(test)]
mod linear_op_tests {
    use super::*;

    /// The linear op gives exactly what candle's `x.matmul(w.t()) + b` gives, forward and backward.
    #[test]
    fn linear_op_matches_matmul() -> Result<()> {
        let dev = Device::Cpu;
        let net = Mlp::new(30, &[20, 16], 5, 0.0, 0.0, 4, &dev)?;
        let vars = distill_core::network::varmap_tensors(net.varmap())?;
        let x = Tensor::rand(-1f32, 1f32, (7, 30), &dev)?;
        let reference = |x: &Tensor| -> Result<Tensor> {
            let mut h = x.clone();
            for i in 1..=3 {
                let (w, b) = (
                    &vars[&format!("fc{i}.weight")],
                    &vars[&format!("fc{i}.bias")],
                );
                h = h.matmul(&w.t()?)?.broadcast_add(b)?;
                if i < 3 {
                    h = h.relu()?;
                }
            }
            Ok(h)
        };
        let ya = reference(&x)?;
        let yb = net.forward(&x, Mode::Train { seed: 0 })?.logits;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert!(diff(&ya, &yb)? < 1e-6);
        let ga = ya.sqr()?.sum_all()?.backward()?;
        let gb = yb.sqr()?.sum_all()?.backward()?;
        for (name, t) in &vars {
            let (a, b) = (ga.get(t).unwrap(), gb.get(t).unwrap());
            assert!(diff(a, b)? < 1e-5, "{name}");
        }
        // An input that tracks gradients gets one, equal to the reference's.
        let xv = candle_core::Var::from_tensor(&x)?;
        let ga = reference(xv.as_tensor())?.sqr()?.sum_all()?.backward()?;
        let gb = net
            .forward(xv.as_tensor(), Mode::Eval)?
            .logits
            .sqr()?
            .sum_all()?
            .backward()?;
        let (a, b) = (
            ga.get(xv.as_tensor()).unwrap(),
            gb.get(xv.as_tensor()).unwrap(),
        );
        assert!(diff(a, b)? < 1e-5);
        // Plain data gets none (that matmul is skipped).
        let gb = net.forward(&x, Mode::Eval)?.logits.sum_all()?.backward()?;
        assert!(gb.get(&x).is_none());
        Ok(())
    }
}
