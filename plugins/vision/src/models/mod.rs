//! Image-classification networks: [`mlp`], [`lenet`], the CIFAR ResNet / WideResNet family ([`resnet`]) and
//! torchvision's ImageNet ResNets ([`torchvision`]).
//!
//! Parameter names are PyTorch's (torchvision's, mdistiller's), so a PyTorch state dict of the same
//! architecture loads as a teacher or a student (`teacher.pretrained`); `mlp` and `lenet5` also take the
//! numbered names of an `nn.Sequential` ([`distill_core::Network::import_rules`]).
//!
//! Every model takes `[B, C, H, W]` f32 input (the MLP also accepts `[B, D]`), returns `[B, num_classes]`
//! logits and exposes named intermediate features for feature-based distillation:
//!
//! | arch | features |
//! |---|---|
//! | `mlp` | `hidden1` … `hidden{n}` (Vector, post-ReLU, pre-dropout), `penultimate` (= `hidden{n}`) |
//! | `lenet5` | `conv1`, `conv2` (Map, post-ReLU and pooling), `penultimate` (Vector, the 500-unit layer) |
//! | `resnet*`, `wrn-*` | `layer1`, `layer2`, `layer3` (Map, output of each stage), `penultimate` (Vector, pooled) |
//! | `resnet18`, `resnet34`, `resnet50` | `layer1` … `layer4` (Map), `penultimate` (Vector, pooled) |
//!
//! Models are described in a recipe by a [`ModelSpec`] and built with [`build_model`]; parameters are
//! created through [`distill_nn::init::seeded_var_builder`], so the same seed gives the same weights.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use distill_core::{Mode, Network};
//! use distill_vision::models::{build_model, ModelSpec};
//! # fn main() -> distill_core::Result<()> {
//! let spec: ModelSpec = toml::from_str("arch = \"mlp\"\nhidden = [800, 800]").unwrap();
//! let net = build_model(&spec, [1, 28, 28], 10, 42, &Device::Cpu)?;
//! assert_eq!(net.describe(), "mlp 784-800-800-10");
//! let x = Tensor::zeros((4, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let out = net.forward(&x, Mode::Eval)?;
//! assert_eq!(out.logits.dims(), [4, 10]);
//! assert_eq!(out.feature("penultimate")?.tensor.dims(), [4, 800]);
//! # Ok(()) }
//! ```

mod input;
pub mod lenet;
pub mod mlp;
mod onnx;
pub mod resnet;
pub mod torchvision;

use candle_core::Device;
use distill_core::{Error, Network, Result};

/// The architecture names [`build_model`] accepts.
pub const ARCHS: &[&str] = &[
    "mlp",
    "lenet5",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn-16-1",
    "wrn-16-2",
    "wrn-40-1",
    "wrn-40-2",
    "resnet18",
    "resnet34",
    "resnet50",
];

/// Hidden layer sizes of an `mlp` whose spec gives none (the Hinton et al. 2015 MNIST teacher).
pub const DEFAULT_MLP_HIDDEN: &[usize] = &[1200, 1200];

/// A model as written in a recipe, e.g. `{ arch = "mlp", hidden = [1200, 1200], dropout = 0.5 }`
/// or `{ arch = "resnet8x4" }`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// One of [`ARCHS`].
    pub arch: String,
    /// `mlp` only: hidden layer sizes (default [`DEFAULT_MLP_HIDDEN`]); at least one, none zero.
    pub hidden: Option<Vec<usize>>,
    /// `mlp` only: dropout probability after each hidden layer, in `[0, 1)` (default 0).
    pub dropout: Option<f64>,
    /// `mlp` only: dropout probability on the (flattened) input, in `[0, 1)` (default 0).
    pub input_dropout: Option<f64>,
    /// `mlp` only: expose the hidden layers' pre-ReLU values (`hidden{i}.pre`, `penultimate.pre`) in training
    /// too (default false). Evaluation always exposes them (a teacher's taps); in training they cost the fused
    /// linear + ReLU node, so only a student distilled on them (OFD) asks for them.
    pub pre_activations: Option<bool>,
    /// `resnet18` / `resnet34` / `resnet50` only: the base width (default torchvision's 64).
    pub width: Option<usize>,
}

impl ModelSpec {
    /// A spec naming `arch` with every option left at its default.
    pub fn new(arch: &str) -> Self {
        Self {
            arch: arch.to_string(),
            hidden: None,
            dropout: None,
            input_dropout: None,
            pre_activations: None,
            width: None,
        }
    }

    /// Checks the spec without building anything: a known arch, options allowed for it, probabilities in range.
    pub fn validate(&self) -> Result<()> {
        if !ARCHS.contains(&self.arch.as_str()) {
            return Err(Error::Unknown {
                what: "model arch",
                name: self.arch.clone(),
                known: ARCHS.join(", "),
            });
        }
        let is_mlp = self.arch == "mlp";
        for (field, given) in [
            ("hidden", self.hidden.is_some()),
            ("dropout", self.dropout.is_some()),
            ("input_dropout", self.input_dropout.is_some()),
            ("pre_activations", self.pre_activations.is_some()),
        ] {
            if given && !is_mlp {
                return Err(Error::config(
                    "model",
                    format!(
                        "`{field}` is only allowed for arch `mlp`, not `{}`",
                        self.arch
                    ),
                ));
            }
        }
        match self.width {
            Some(_) if !torchvision::NAMES.contains(&self.arch.as_str()) => {
                return Err(Error::config(
                    "model",
                    format!(
                        "`width` is only allowed for arch {}, not `{}`",
                        torchvision::NAMES.join(", "),
                        self.arch
                    ),
                ))
            }
            Some(0) => return Err(Error::config("model", "`width` must be at least 1")),
            _ => {}
        }
        for (field, p) in [
            ("dropout", self.dropout),
            ("input_dropout", self.input_dropout),
        ] {
            if let Some(p) = p {
                if !(0.0..1.0).contains(&p) {
                    return Err(Error::config(
                        "model",
                        format!("`{field}` must be in [0, 1), got {p}"),
                    ));
                }
            }
        }
        if let Some(hidden) = &self.hidden {
            if hidden.is_empty() {
                return Err(Error::config(
                    "model",
                    "`hidden` must list at least one layer size, e.g. [1200, 1200]",
                ));
            }
            if let Some(i) = hidden.iter().position(|&h| h == 0) {
                return Err(Error::config(
                    "model",
                    format!("`hidden[{i}]` is 0; layer sizes must be positive"),
                ));
            }
        }
        Ok(())
    }
}

/// Builds the network `spec` describes for inputs of shape `input` = `[C, H, W]` and `num_classes` classes,
/// its parameters initialised from `seed` on `device`.
pub fn build_model(
    spec: &ModelSpec,
    input: [usize; 3],
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Network>> {
    spec.validate()?;
    if input.contains(&0) {
        return Err(Error::config(
            "model",
            format!("input shape {input:?} (C, H, W) has a zero dimension"),
        ));
    }
    if num_classes == 0 {
        return Err(Error::config("model", "num_classes must be at least 1"));
    }
    let arch = spec.arch.as_str();
    let net: Box<dyn Network> = match arch {
        "mlp" => {
            let hidden = spec
                .hidden
                .clone()
                .unwrap_or_else(|| DEFAULT_MLP_HIDDEN.to_vec());
            Box::new(
                mlp::Mlp::new(
                    input.iter().product(),
                    &hidden,
                    num_classes,
                    spec.dropout.unwrap_or(0.0),
                    spec.input_dropout.unwrap_or(0.0),
                    seed,
                    device,
                )?
                .with_image_shape(input)?
                .with_pre_activations(spec.pre_activations.unwrap_or(false)),
            )
        }
        "lenet5" => Box::new(lenet::LeNet5::new(input, num_classes, seed, device)?),
        _ => {
            let width = spec.width.unwrap_or(torchvision::DEFAULT_WIDTH);
            if let Some(cfg) = torchvision::TvResNetConfig::by_name(arch, width) {
                Box::new(torchvision::TvResNet::new(
                    &cfg,
                    input,
                    num_classes,
                    seed,
                    device,
                )?)
            } else if let Some(cfg) = resnet::ResNetConfig::by_name(arch) {
                Box::new(resnet::ResNet::new(&cfg, input, num_classes, seed, device)?)
            } else if let Some(cfg) = resnet::WrnConfig::by_name(arch) {
                Box::new(resnet::WideResNet::new(
                    &cfg,
                    input,
                    num_classes,
                    seed,
                    device,
                )?)
            } else {
                unreachable!("arch `{arch}` is in ARCHS but has no builder")
            }
        }
    };
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_core::network::{num_trainable_params, varmap_tensors};

    fn spec(arch: &str) -> ModelSpec {
        ModelSpec::new(arch)
    }

    #[test]
    fn every_arch_builds() -> Result<()> {
        for &arch in ARCHS {
            let input = if arch == "mlp" || arch == "lenet5" {
                [1, 28, 28]
            } else {
                [3, 32, 32]
            };
            let net = build_model(&spec(arch), input, 10, 0, &Device::Cpu)?;
            assert!(num_trainable_params(net.as_ref()) > 0, "{arch}");
            assert!(net.flops() > 0, "{arch}");
            assert!(net.describe().starts_with(arch), "{}", net.describe());
        }
        Ok(())
    }

    #[test]
    fn spec_validation_errors() {
        let err = build_model(&spec("resnet9000"), [3, 32, 32], 10, 0, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("resnet9000"), "{err}");
        assert!(err.contains("resnet8x4") && err.contains("wrn-40-2") && err.contains("mlp"));

        let mut s = spec("resnet20");
        s.hidden = Some(vec![10]);
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("`hidden`") && err.contains("only allowed for arch `mlp`"),
            "{err}"
        );
        let mut s = spec("lenet5");
        s.dropout = Some(0.5);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("`dropout`"), "{err}");
        let mut s = spec("wrn-16-2");
        s.input_dropout = Some(0.2);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`input_dropout`"));

        for bad in [1.0, -0.1, f64::NAN, 1.5] {
            let mut s = spec("mlp");
            s.dropout = Some(bad);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("`dropout` must be in [0, 1)"), "{err}");
        }
        let mut s = spec("mlp");
        s.input_dropout = Some(1.0);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("input_dropout"));
        let mut s = spec("mlp");
        s.dropout = Some(0.0);
        s.input_dropout = Some(0.999);
        s.hidden = Some(vec![5, 6]);
        s.validate().unwrap();
        s.hidden = Some(vec![]);
        assert!(s.validate().is_err());
        s.hidden = Some(vec![5, 0]);
        assert!(s.validate().unwrap_err().to_string().contains("hidden[1]"));
        let mut s = spec("resnet8");
        s.width = Some(8);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("`width`") && err.contains("resnet18"), "{err}");
        let mut s = spec("resnet50");
        s.width = Some(0);
        assert!(s.validate().unwrap_err().to_string().contains("at least 1"));
        s.width = Some(4);
        s.validate().unwrap();
    }

    #[test]
    fn spec_from_toml() {
        let s: ModelSpec = toml::from_str(
            "arch = \"mlp\"\nhidden = [1200, 1200]\ndropout = 0.5\ninput_dropout = 0.2",
        )
        .unwrap();
        assert_eq!(s.hidden, Some(vec![1200, 1200]));
        assert_eq!(s.dropout, Some(0.5));
        let s: ModelSpec = toml::from_str("arch = \"resnet8x4\"").unwrap();
        assert_eq!(s, ModelSpec::new("resnet8x4"));
        let err = toml::from_str::<ModelSpec>("arch = \"mlp\"\nhiden = [3]").unwrap_err();
        assert!(err.to_string().contains("hiden"), "{err}");
    }

    #[test]
    fn same_seed_same_weights() -> Result<()> {
        for arch in ["mlp", "lenet5", "resnet8x4", "wrn-16-1"] {
            let input = if arch == "resnet8x4" || arch == "wrn-16-1" {
                [3, 32, 32]
            } else {
                [1, 28, 28]
            };
            let a = build_model(&spec(arch), input, 10, 42, &Device::Cpu)?;
            let b = build_model(&spec(arch), input, 10, 42, &Device::Cpu)?;
            let c = build_model(&spec(arch), input, 10, 43, &Device::Cpu)?;
            let (ta, tb, tc) = (
                varmap_tensors(a.varmap())?,
                varmap_tensors(b.varmap())?,
                varmap_tensors(c.varmap())?,
            );
            assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
            let mut differs = false;
            for (k, t) in &ta {
                let va: Vec<f32> = t.flatten_all()?.to_vec1()?;
                let vb: Vec<f32> = tb[k].flatten_all()?.to_vec1()?;
                let vc: Vec<f32> = tc[k].flatten_all()?.to_vec1()?;
                assert_eq!(va, vb, "{arch} {k}");
                differs |= va != vc;
            }
            assert!(differs, "{arch}: seeds 42 and 43 gave identical weights");
        }
        Ok(())
    }
}
