//! LeNet-5 in its common modern form (the Caffe / PyTorch-examples variant, with ReLU):
//!
//! ```text
//! conv1  C -> 20, 5x5, no padding  -> ReLU -> max-pool 2x2     (MNIST: [B, 20, 12, 12])
//! conv2 20 -> 50, 5x5, no padding  -> ReLU -> max-pool 2x2     (MNIST: [B, 50, 4, 4])
//! fc1   50·h·w -> 500              -> ReLU                     (penultimate, [B, 500])
//! fc2   500 -> classes
//! ```
//!
//! On 1x28x28 MNIST it has 431,080 parameters for 10 classes. Any input of at least 16x16 works (the
//! flattened size is computed at build time). Features: `conv1`, `conv2` (Map, after ReLU and pooling) and
//! `penultimate` (Vector, after the ReLU of `fc1`).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_core::{Error, FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::layers::{Conv2d, ConvConfig, Linear, LinearConfig};

/// Channels of the two convolutions and width of the hidden fully-connected layer.
const C1: usize = 20;
const C2: usize = 50;
const FC: usize = 500;
const K: usize = 5;

/// LeNet-5 (conv 20 / conv 50 / fc 500).
pub struct LeNet5 {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) input: [usize; 3],
    pub(crate) num_classes: usize,
    flops: u64,
    varmap: VarMap,
}

impl LeNet5 {
    /// LeNet-5 for `[C, H, W]` inputs (H, W >= 16) and `num_classes` classes.
    pub fn new(input: [usize; 3], num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let [c, h, w] = input;
        if h < 16 || w < 16 {
            return Err(Error::config(
                "model",
                format!("lenet5 needs inputs of at least 16x16 pixels, got {h}x{w}"),
            ));
        }
        let (h1, w1) = (h - K + 1, w - K + 1);
        let (p1h, p1w) = (h1 / 2, w1 / 2);
        let (h2, w2) = (p1h - K + 1, p1w - K + 1);
        let (p2h, p2w) = (h2 / 2, w2 / 2);
        let flat = C2 * p2h * p2w;
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, device);
        let conv1 = Conv2d::new(&ConvConfig::new(c, C1, K).padding(0), vb.pp("conv1"))?;
        let conv2 = Conv2d::new(&ConvConfig::new(C1, C2, K).padding(0), vb.pp("conv2"))?;
        let fc1 = Linear::new(&LinearConfig::new(flat, FC), vb.pp("fc1"))?;
        let fc2 = Linear::new(&LinearConfig::new(FC, num_classes), vb.pp("fc2"))?;
        let flops = 2
            * ((c * K * K * C1 * h1 * w1)
                + (C1 * K * K * C2 * h2 * w2)
                + flat * FC
                + FC * num_classes) as u64;
        Ok(Self {
            conv1,
            conv2,
            fc1,
            fc2,
            input,
            num_classes,
            flops,
            varmap,
        })
    }
}

impl Network for LeNet5 {
    fn forward(&self, input: &Tensor, _mode: Mode) -> Result<Outputs> {
        super::input::check_image_input(input, self.input, "lenet5")?;
        let c1 = self.conv1.forward_relu_pool(input, 2)?;
        let c2 = self.conv2.forward_relu_pool(&c1, 2)?;
        let pen = self.fc1.forward_relu(&c2.flatten_from(1)?)?;
        let logits = self.fc2.forward(&pen)?;
        Outputs::logits(logits)
            .with_feature("conv1", FeatureKind::Map, c1)?
            .with_feature("conv2", FeatureKind::Map, c2)?
            .with_feature("penultimate", FeatureKind::Vector, pen)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        self.flops
    }

    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> Result<()> {
        self.emit_onnx(g)
    }

    /// `nn.Sequential(Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d, Flatten, Linear, ReLU, Linear)`:
    /// the numbered modules with parameters are `conv1`, `conv2`, `fc1`, `fc2` in order.
    fn import_rules(&self) -> distill_core::network::ImportRules {
        distill_core::network::ImportRules {
            sequential: Some(["conv1", "conv2", "fc1", "fc2"].map(String::from).to_vec()),
            ..Default::default()
        }
    }

    fn describe(&self) -> String {
        let [c, h, w] = self.input;
        format!(
            "lenet5 conv{C1}-conv{C2}-fc{FC}, {c}x{h}x{w} -> {} classes",
            self.num_classes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_core::network::num_trainable_params;

    #[test]
    fn mnist_shapes_params_and_features() -> Result<()> {
        let dev = Device::Cpu;
        let net = LeNet5::new([1, 28, 28], 10, 0, &dev)?;
        // conv1 20·1·25+20, conv2 50·20·25+50, fc1 800·500+500, fc2 500·10+10
        assert_eq!(num_trainable_params(&net), 520 + 25_050 + 400_500 + 5_010);
        assert_eq!(num_trainable_params(&net), 431_080);
        let x = Tensor::rand(0f32, 1f32, (2, 1, 28, 28), &dev)?;
        let out = net.forward(&x, Mode::Train { seed: 0 })?;
        assert_eq!(out.logits.dims(), [2, 10]);
        assert_eq!(out.feature("conv1")?.tensor.dims(), [2, 20, 12, 12]);
        assert_eq!(out.feature("conv1")?.kind, FeatureKind::Map);
        assert_eq!(out.feature("conv2")?.tensor.dims(), [2, 50, 4, 4]);
        assert_eq!(out.feature("penultimate")?.tensor.dims(), [2, 500]);
        assert_eq!(out.feature("penultimate")?.kind, FeatureKind::Vector);
        // CIFAR-sized colour input: 32 -> 28 -> 14 -> 10 -> 5.
        let net = LeNet5::new([3, 32, 32], 100, 0, &dev)?;
        let out = net.forward(
            &Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &dev)?,
            Mode::Eval,
        )?;
        assert_eq!(out.logits.dims(), [1, 100]);
        assert_eq!(out.feature("conv2")?.tensor.dims(), [1, 50, 5, 5]);
        // Wrong input shape and too-small inputs are errors.
        let err = net.forward(&x, Mode::Eval).unwrap_err().to_string();
        assert!(err.contains("[B, 3, 32, 32]"), "{err}");
        assert!(LeNet5::new([1, 15, 28], 10, 0, &dev).is_err());
        Ok(())
    }
}
