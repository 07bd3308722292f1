//! The CIFAR ResNet and WideResNet families of the distillation literature, laid out as in CRD's /
//! mdistiller's `resnet.py` and `wrn.py`.
//!
//! **ResNet** (He et al. 2016, CIFAR variant): `conv1` 3x3 (C -> w0) + `bn1` + ReLU, then three stages
//! `layer1..3` of `n = (depth - 2) / 6` BasicBlocks with widths w1, w2, w3 (strides 1, 2, 2), global average
//! pooling and `fc`. A BasicBlock is `conv3x3-bn-relu-conv3x3-bn`, plus the identity or, when the stride or
//! width changes, a `downsample` 1x1 conv + bn, then ReLU.
//! - `resnet8/14/20/32/44/56/110`: widths 16 / 16-32-64;
//! - `resnet8x4`, `resnet32x4`: widths 32 / 64-128-256 (there is no fourth stage: `layer4` does not exist).
//!
//! Parameter names: `conv1.weight`, `bn1.{weight,bias,running_mean,running_var}`, `layer1.0.conv1.weight`,
//! `layer1.0.bn1.*`, `layer1.0.conv2.weight`, `layer1.0.bn2.*`, `layer1.0.downsample.0.weight` (conv),
//! `layer1.0.downsample.1.*` (bn), `fc.weight`, `fc.bias`.
//!
//! **WideResNet** WRN-d-k (Zagoruyko & Komodakis 2016): `conv1` 3x3 (C -> 16), three groups `block1..3` of
//! `n = (depth - 4) / 6` pre-activation blocks with widths 16k, 32k, 64k (strides 1, 2, 2), then `bn1` + ReLU,
//! global average pooling and `fc`. A block is `bn1-relu-conv1(3x3)-bn2-relu-conv2(3x3)` added to the input,
//! or, when the width changes, to `convShortcut` (1x1) applied to the pre-activated input (as in the
//! reference code). Names: `block1.layer.0.bn1.*`, `block1.layer.0.conv1.weight`, …,
//! `block1.layer.0.convShortcut.weight`, `bn1.*`, `fc.*`.
//!
//! Features (both families): `layer1`, `layer2`, `layer3` (Map, the output of each stage / group; for a
//! 32x32 input `[B, w, 32, 32]`, `[B, w, 16, 16]`, `[B, w, 8, 8]`) and `penultimate` (Vector `[B, w3]`, the
//! globally average-pooled final map, the input of `fc`). Pooling is global (adaptive), so any input size works.
//!
//! Batch norm: in [`Mode::Train`] batch statistics normalise and the running statistics are updated
//! (momentum 0.1, unbiased variance, as in PyTorch); in [`Mode::Eval`] the running statistics are used.

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use distill_core::{FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::layers::{
    out_size, BasicBlock, BatchNorm2d as BatchNorm, Conv2d, ConvConfig, Linear, LinearConfig,
};

fn conv(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(
        &ConvConfig::new(cin, cout, k).stride(stride).bias(false),
        vb,
    )
}

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    BatchNorm::new(c, vb)
}

/// FLOPs (2 per multiply-add) of a `k`x`k` conv `cin -> cout` producing an `h`x`w` map.
fn conv_flops(cin: usize, cout: usize, k: usize, h: usize, w: usize) -> u64 {
    2 * (cin * cout * k * k * h * w) as u64
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean((2, 3))?)
}

/// Depth and widths of a CIFAR ResNet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Arch name, e.g. `resnet8x4`.
    pub name: String,
    /// Depth `6n + 2`.
    pub depth: usize,
    /// Width of `conv1`, then of the three stages.
    pub widths: [usize; 4],
}

impl ResNetConfig {
    /// The config of `resnet{8,14,20,32,44,56,110}` or `resnet{8,32}x4`.
    pub fn by_name(name: &str) -> Option<Self> {
        let (depth, widths) = match name {
            "resnet8x4" => (8, [32, 64, 128, 256]),
            "resnet32x4" => (32, [32, 64, 128, 256]),
            _ => {
                let depth: usize = name.strip_prefix("resnet")?.parse().ok()?;
                if ![8, 14, 20, 32, 44, 56, 110].contains(&depth) {
                    return None;
                }
                (depth, [16, 16, 32, 64])
            }
        };
        Some(Self {
            name: name.to_string(),
            depth,
            widths,
        })
    }

    /// BasicBlocks per stage.
    pub fn blocks_per_stage(&self) -> usize {
        (self.depth - 2) / 6
    }
}

/// A CIFAR ResNet (BasicBlocks, three stages).
pub struct ResNet {
    cfg: ResNetConfig,
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm,
    pub(crate) stages: Vec<Vec<BasicBlock>>,
    pub(crate) fc: Linear,
    pub(crate) input: [usize; 3],
    pub(crate) num_classes: usize,
    flops: u64,
    varmap: VarMap,
}

impl ResNet {
    /// The ResNet `cfg` for `[C, H, W]` inputs and `num_classes` classes.
    pub fn new(
        cfg: &ResNetConfig,
        input: [usize; 3],
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, device);
        let [c, mut h, mut w] = input;
        let w0 = cfg.widths[0];
        let conv1 = conv(c, w0, 3, 1, vb.pp("conv1"))?;
        let bn1 = bn(w0, vb.pp("bn1"))?;
        let mut flops = conv_flops(c, w0, 3, h, w);
        let mut cin = w0;
        let mut stages = Vec::with_capacity(3);
        for (s, &cout) in cfg.widths[1..].iter().enumerate() {
            let vbs = vb.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::with_capacity(cfg.blocks_per_stage());
            for i in 0..cfg.blocks_per_stage() {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let block = BasicBlock::new(cin, cout, stride, vbs.pp(i.to_string()))?;
                let (ho, wo) = (out_size(h, stride), out_size(w, stride));
                flops += BasicBlock::flops(cin, cout, stride, ho * wo);
                (h, w, cin) = (ho, wo, cout);
                blocks.push(block);
            }
            stages.push(blocks);
        }
        let fc = Linear::new(&LinearConfig::new(cin, num_classes), vb.pp("fc"))?;
        flops += 2 * (cin * num_classes) as u64;
        Ok(Self {
            cfg: cfg.clone(),
            conv1,
            bn1,
            stages,
            fc,
            input,
            num_classes,
            flops,
            varmap,
        })
    }
}

impl Network for ResNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        super::input::check_image_input(input, self.input, &self.cfg.name)?;
        let train = mode.is_train();
        let mut x = distill_nn::layers::conv_bn(&self.conv1, &self.bn1, input, train, true)?;
        let mut maps = Vec::with_capacity(3);
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x, train)?;
            }
            maps.push(x.clone());
        }
        let pen = global_avg_pool(&x)?;
        let mut out = Outputs::logits(self.fc.forward(&pen)?);
        for (i, m) in maps.into_iter().enumerate() {
            out = out.with_feature(&format!("layer{}", i + 1), FeatureKind::Map, m)?;
        }
        out.with_feature("penultimate", FeatureKind::Vector, pen)
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

    fn describe(&self) -> String {
        let [c, h, w] = self.input;
        let ws = self.cfg.widths;
        format!(
            "{} (CIFAR ResNet-{}, {} BasicBlocks/stage, widths {}/{}-{}-{}), {c}x{h}x{w} -> {} classes",
            self.cfg.name,
            self.cfg.depth,
            self.cfg.blocks_per_stage(),
            ws[0],
            ws[1],
            ws[2],
            ws[3],
            self.num_classes
        )
    }
}

/// Depth and widen factor of a WideResNet WRN-d-k.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrnConfig {
    /// Arch name, e.g. `wrn-40-2`.
    pub name: String,
    /// Depth `6n + 4`.
    pub depth: usize,
    /// Widen factor k.
    pub widen: usize,
}

impl WrnConfig {
    /// The config of `wrn-{16,40}-{1,2}`.
    pub fn by_name(name: &str) -> Option<Self> {
        let (depth, widen) = match name {
            "wrn-16-1" => (16, 1),
            "wrn-16-2" => (16, 2),
            "wrn-40-1" => (40, 1),
            "wrn-40-2" => (40, 2),
            _ => return None,
        };
        Some(Self {
            name: name.to_string(),
            depth,
            widen,
        })
    }

    /// Blocks per group.
    pub fn blocks_per_group(&self) -> usize {
        (self.depth - 4) / 6
    }

    /// Width of `conv1`, then of the three groups.
    pub fn widths(&self) -> [usize; 4] {
        [16, 16 * self.widen, 32 * self.widen, 64 * self.widen]
    }
}

pub(crate) struct WideBlock {
    pub(crate) bn1: BatchNorm,
    pub(crate) conv1: Conv2d,
    pub(crate) bn2: BatchNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            bn1: bn(cin, vb.pp("bn1"))?,
            conv1: conv(cin, cout, 3, stride, vb.pp("conv1"))?,
            bn2: bn(cout, vb.pp("bn2"))?,
            conv2: conv(cout, cout, 3, 1, vb.pp("conv2"))?,
            shortcut: if cin != cout {
                Some(conv(cin, cout, 1, stride, vb.pp("convShortcut"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let pre = self.bn1.forward(x, train, true)?;
        let out = self.bn2.forward(&self.conv1.forward(&pre)?, train, true)?;
        let out = self.conv2.forward(&out)?;
        let residual = match &self.shortcut {
            Some(c) => c.forward(&pre)?,
            None => x.clone(),
        };
        Ok((out + residual)?)
    }
}

/// A WideResNet WRN-d-k (pre-activation blocks, three groups).
pub struct WideResNet {
    cfg: WrnConfig,
    pub(crate) conv1: Conv2d,
    pub(crate) groups: Vec<Vec<WideBlock>>,
    pub(crate) bn1: BatchNorm,
    pub(crate) fc: Linear,
    pub(crate) input: [usize; 3],
    pub(crate) num_classes: usize,
    flops: u64,
    varmap: VarMap,
}

impl WideResNet {
    /// The WideResNet `cfg` for `[C, H, W]` inputs and `num_classes` classes.
    pub fn new(
        cfg: &WrnConfig,
        input: [usize; 3],
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, device);
        let [c, mut h, mut w] = input;
        let widths = cfg.widths();
        let conv1 = conv(c, widths[0], 3, 1, vb.pp("conv1"))?;
        let mut flops = conv_flops(c, widths[0], 3, h, w);
        let mut cin = widths[0];
        let mut groups = Vec::with_capacity(3);
        for (g, &cout) in widths[1..].iter().enumerate() {
            let vbg = vb.pp(format!("block{}", g + 1)).pp("layer");
            let mut blocks = Vec::with_capacity(cfg.blocks_per_group());
            for i in 0..cfg.blocks_per_group() {
                let stride = if g > 0 && i == 0 { 2 } else { 1 };
                let block = WideBlock::new(cin, cout, stride, vbg.pp(i.to_string()))?;
                let (ho, wo) = (out_size(h, stride), out_size(w, stride));
                flops += conv_flops(cin, cout, 3, ho, wo) + conv_flops(cout, cout, 3, ho, wo);
                if block.shortcut.is_some() {
                    flops += conv_flops(cin, cout, 1, ho, wo);
                }
                (h, w, cin) = (ho, wo, cout);
                blocks.push(block);
            }
            groups.push(blocks);
        }
        let bn1 = bn(cin, vb.pp("bn1"))?;
        let fc = Linear::new(&LinearConfig::new(cin, num_classes), vb.pp("fc"))?;
        flops += 2 * (cin * num_classes) as u64;
        Ok(Self {
            cfg: cfg.clone(),
            conv1,
            groups,
            bn1,
            fc,
            input,
            num_classes,
            flops,
            varmap,
        })
    }
}

impl Network for WideResNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        super::input::check_image_input(input, self.input, &self.cfg.name)?;
        let train = mode.is_train();
        let mut x = self.conv1.forward(input)?;
        let mut maps = Vec::with_capacity(3);
        for group in &self.groups {
            for block in group {
                x = block.forward(&x, train)?;
            }
            maps.push(x.clone());
        }
        let x = self.bn1.forward(&x, train, true)?;
        let pen = global_avg_pool(&x)?;
        let mut out = Outputs::logits(self.fc.forward(&pen)?);
        for (i, m) in maps.into_iter().enumerate() {
            out = out.with_feature(&format!("layer{}", i + 1), FeatureKind::Map, m)?;
        }
        out.with_feature("penultimate", FeatureKind::Vector, pen)
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

    fn describe(&self) -> String {
        let [c, h, w] = self.input;
        let ws = self.cfg.widths();
        format!(
            "{} (WideResNet-{}-{}, {} blocks/group, widths {}/{}-{}-{}), {c}x{h}x{w} -> {} classes",
            self.cfg.name,
            self.cfg.depth,
            self.cfg.widen,
            self.cfg.blocks_per_group(),
            ws[0],
            ws[1],
            ws[2],
            ws[3],
            self.num_classes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{build_model, ModelSpec};
    use candle_core::DType;
    use distill_core::network::{num_params, num_trainable_params, varmap_tensors};

    /// Trainable parameters of a CIFAR ResNet, counted independently of the code above:
    /// conv1 (3x3, no bias) + bn1, per stage the first block (two 3x3 convs + two BNs, plus a 1x1 conv + BN
    /// downsample when the width or stride changes) and n-1 identity blocks, and the fc layer.
    fn resnet_formula(n: usize, w: [usize; 4], c_in: usize, classes: usize) -> usize {
        let mut total = 9 * c_in * w[0] + 2 * w[0];
        let mut cin = w[0];
        for (s, &c) in w[1..].iter().enumerate() {
            let downsample = s > 0 || cin != c;
            total += 9 * cin * c + 2 * c + 9 * c * c + 2 * c;
            if downsample {
                total += cin * c + 2 * c;
            }
            total += (n - 1) * 2 * (9 * c * c + 2 * c);
            cin = c;
        }
        total + cin * classes + classes
    }

    /// Trainable parameters of WRN-d-k: conv1, per group the first block (bn on its input width, two 3x3
    /// convs, bn, 1x1 shortcut when the width changes) and n-1 equal-width blocks, the final bn and fc.
    fn wrn_formula(depth: usize, k: usize, c_in: usize, classes: usize) -> usize {
        let n = (depth - 4) / 6;
        let w = [16, 16 * k, 32 * k, 64 * k];
        let mut total = 9 * c_in * 16;
        let mut cin = 16;
        for &c in &w[1..] {
            total += 2 * cin + 9 * cin * c + 2 * c + 9 * c * c;
            if cin != c {
                total += cin * c;
            }
            total += (n - 1) * (2 * c + 9 * c * c + 2 * c + 9 * c * c);
            cin = c;
        }
        total + 2 * cin + cin * classes + classes
    }

    fn build(arch: &str, classes: usize) -> Box<dyn Network> {
        build_model(&ModelSpec::new(arch), [3, 32, 32], classes, 0, &Device::Cpu).unwrap()
    }

    #[test]
    fn parameter_counts_match_the_literature() {
        // (arch, independent formula, published count in millions for CIFAR-100, exact count by hand)
        let cases: [(&str, usize, f64, usize); 7] = [
            (
                "resnet8x4",
                resnet_formula(1, [32, 64, 128, 256], 3, 100),
                1.23,
                1_233_540,
            ),
            (
                "resnet32x4",
                resnet_formula(5, [32, 64, 128, 256], 3, 100),
                7.43,
                7_433_860,
            ),
            ("wrn-40-2", wrn_formula(40, 2, 3, 100), 2.26, 2_255_156),
            ("wrn-16-2", wrn_formula(16, 2, 3, 100), 0.70, 703_284),
            (
                "resnet20",
                resnet_formula(3, [16, 16, 32, 64], 3, 100),
                0.28,
                278_324,
            ),
            (
                "resnet56",
                resnet_formula(9, [16, 16, 32, 64], 3, 100),
                0.86,
                861_620,
            ),
            (
                "resnet110",
                resnet_formula(18, [16, 16, 32, 64], 3, 100),
                1.73,
                1_736_564,
            ),
        ];
        for (arch, formula, published_m, by_hand) in cases {
            assert_eq!(formula, by_hand, "{arch}: formula vs hand count");
            let net = build(arch, 100);
            let got = num_trainable_params(net.as_ref());
            assert_eq!(got, formula, "{arch}");
            // Within 0.5% of the published figure, or (where the figure's two decimals are coarser than
            // 0.5%, as 0.28M for resnet20's 278,324) equal to it once rounded to those two decimals.
            let published = published_m * 1e6;
            let rel = (got as f64 - published).abs() / published;
            let rounds_to = ((got as f64 / 1e4).round() - published_m * 100.0).abs() < 1e-9;
            assert!(
                rel < 0.005 || rounds_to,
                "{arch}: {got} vs published {published_m}M ({rel})"
            );
            // Buffers: two running statistics per BN channel, never counted as trainable.
            let buffers = num_params(net.as_ref()) - got;
            let bn_channels: usize = varmap_tensors(net.varmap())
                .unwrap()
                .iter()
                .filter(|(k, _)| k.ends_with("running_mean"))
                .map(|(_, t)| t.elem_count())
                .sum();
            assert_eq!(buffers, 2 * bn_channels, "{arch}");
        }
        // The CIFAR-10 resnet20 is the well-known 0.27M (272,474) network.
        assert_eq!(
            num_trainable_params(build("resnet20", 10).as_ref()),
            272_474
        );
    }

    #[test]
    fn pytorch_like_parameter_names() {
        let keys: Vec<String> = varmap_tensors(build("resnet8x4", 10).varmap())
            .unwrap()
            .into_keys()
            .collect();
        for k in [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "layer1.0.conv1.weight",
            "layer1.0.bn2.running_var",
            "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.weight",
            "layer3.0.downsample.1.running_mean",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.starts_with("layer4")));
        // resnet20's first stage keeps its width: no downsample there.
        let keys: Vec<String> = varmap_tensors(build("resnet20", 10).varmap())
            .unwrap()
            .into_keys()
            .collect();
        assert!(!keys.iter().any(|k| k.starts_with("layer1.0.downsample")));
        assert!(keys.iter().any(|k| k == "layer2.0.downsample.0.weight"));
        assert!(keys.iter().any(|k| k == "layer3.2.conv2.weight"));
        let keys: Vec<String> = varmap_tensors(build("wrn-16-2", 10).varmap())
            .unwrap()
            .into_keys()
            .collect();
        for k in [
            "conv1.weight",
            "block1.layer.0.bn1.weight",
            "block1.layer.0.convShortcut.weight",
            "block1.layer.1.conv2.weight",
            "block3.layer.0.convShortcut.weight",
            "bn1.running_var",
            "fc.weight",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
        assert!(!keys
            .iter()
            .any(|k| k.starts_with("block1.layer.1.convShortcut")));
    }

    #[test]
    fn forward_shapes_on_cifar_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &dev)?;
        let cases: [(&str, [usize; 3]); 5] = [
            ("resnet8x4", [64, 128, 256]),
            ("resnet20", [16, 32, 64]),
            ("resnet32x4", [64, 128, 256]),
            ("wrn-16-2", [32, 64, 128]),
            ("wrn-40-2", [32, 64, 128]),
        ];
        for (arch, w) in cases {
            let net = build(arch, 100);
            for mode in [Mode::Eval, Mode::Train { seed: 0 }] {
                let out = net.forward(&x, mode)?;
                assert_eq!(out.logits.dims(), [2, 100], "{arch}");
                let names: Vec<&String> = out.features.keys().collect();
                assert_eq!(
                    names,
                    ["layer1", "layer2", "layer3", "penultimate"],
                    "{arch}"
                );
                assert_eq!(out.feature("layer1")?.tensor.dims(), [2, w[0], 32, 32]);
                assert_eq!(out.feature("layer2")?.tensor.dims(), [2, w[1], 16, 16]);
                assert_eq!(out.feature("layer3")?.tensor.dims(), [2, w[2], 8, 8]);
                assert_eq!(out.feature("layer3")?.kind, FeatureKind::Map);
                assert_eq!(out.feature("penultimate")?.tensor.dims(), [2, w[2]]);
                assert_eq!(out.feature("penultimate")?.kind, FeatureKind::Vector);
                let v: Vec<f32> = out.logits.flatten_all()?.to_vec1()?;
                assert!(v.iter().all(|x| x.is_finite()), "{arch}");
            }
        }
        // The pooled feature is the spatial mean of the final map (ResNet: the layer3 output).
        let net = build("resnet20", 10);
        let out = net.forward(&x, Mode::Eval)?;
        let mean: Vec<Vec<f32>> = out.feature("layer3")?.tensor.mean((2, 3))?.to_vec2()?;
        let pen: Vec<Vec<f32>> = out.feature("penultimate")?.tensor.to_vec2()?;
        for (a, b) in mean.iter().flatten().zip(pen.iter().flatten()) {
            assert!((a - b).abs() < 1e-5);
        }
        // Other input sizes work (global pooling); a mismatched input is a shape error naming the model.
        let net = build_model(&ModelSpec::new("resnet8x4"), [1, 28, 28], 10, 0, &dev)?;
        let out = net.forward(
            &Tensor::zeros((1, 1, 28, 28), DType::F32, &dev)?,
            Mode::Eval,
        )?;
        assert_eq!(out.feature("layer3")?.tensor.dims(), [1, 256, 7, 7]);
        let err = net.forward(&x, Mode::Eval).unwrap_err().to_string();
        assert!(
            err.contains("resnet8x4") && err.contains("[2, 3, 32, 32]"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn batch_norm_train_updates_running_stats_eval_uses_them() -> Result<()> {
        let dev = Device::Cpu;
        let net = build("resnet8", 10);
        let running = |name: &str| -> Vec<f32> {
            varmap_tensors(net.varmap()).unwrap()[name]
                .to_vec1()
                .unwrap()
        };
        assert!(running("bn1.running_mean").iter().all(|&v| v == 0.0));
        let x = Tensor::rand(0f32, 1f32, (8, 3, 32, 32), &dev)?.affine(3.0, 2.0)?;
        let e1: Vec<f32> = net
            .forward(&x, Mode::Eval)?
            .logits
            .flatten_all()?
            .to_vec1()?;
        assert!(
            running("bn1.running_mean").iter().all(|&v| v == 0.0),
            "eval must not update"
        );
        let t: Vec<f32> = net
            .forward(&x, Mode::Train { seed: 1 })?
            .logits
            .flatten_all()?
            .to_vec1()?;
        assert_ne!(e1, t, "train mode normalises with batch statistics");
        // After one training pass: running = 0.9·0 + 0.1·batch mean of conv1's output, per channel.
        let conv1 = varmap_tensors(net.varmap())?["conv1.weight"].clone();
        let c1 = x.conv2d(&conv1, 1, 1, 1, 1)?;
        let batch_mean: Vec<f32> = c1.mean((0, 2, 3))?.to_vec1()?;
        for (r, m) in running("bn1.running_mean").iter().zip(&batch_mean) {
            assert!(
                (r - 0.1 * m).abs() < 1e-4 * (1.0 + m.abs()),
                "{r} vs 0.1·{m}"
            );
        }
        let e2: Vec<f32> = net
            .forward(&x, Mode::Eval)?
            .logits
            .flatten_all()?
            .to_vec1()?;
        assert_ne!(e1, e2, "eval uses the updated running statistics");
        // Gradients reach the first convolution through every BN in training mode.
        let out = net.forward(&x, Mode::Train { seed: 2 })?;
        let loss = out.logits.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let g = grads.get(&conv1).expect("gradient for conv1.weight");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }
}
