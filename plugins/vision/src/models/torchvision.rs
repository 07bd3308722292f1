//! torchvision's ImageNet ResNets (`torchvision.models.resnet18/34/50`), laid out and named as torchvision
//! lays them out, so `torch.save(model.state_dict(), "resnet18.pth")` loads as it is:
//!
//! ```text
//! conv1  7x7, stride 2, padding 3, no bias (C -> w)   bn1   ReLU   maxpool 3x3, stride 2, padding 1
//! layer1..layer4   BasicBlocks (resnet18: 2-2-2-2, resnet34: 3-4-6-3) or Bottlenecks (resnet50: 3-4-6-3)
//!                  of widths w, 2w, 4w, 8w (Bottleneck outputs 4x wider), strides 1, 2, 2, 2
//! avgpool (adaptive, 1x1)   fc
//! ```
//!
//! `w` is the model option `width` (torchvision's 64 by default; a smaller one makes a scaled-down copy of
//! the same shape, e.g. the 8 of the import fixtures). Blocks are distill-nn's [`BasicBlock`] and
//! [`Bottleneck`] (stride on the 3x3, torchvision's "v1.5"), whose names are torchvision's:
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `layer2.0.downsample.1.running_mean`, …
//!
//! Features: `layer1` … `layer4` (Map, each stage's output) and `penultimate` (Vector `[B, 8w]` or `[B, 32w]`,
//! the pooled map, the input of `fc`). Any input of at least 1x1 works (the pooling is global); a 224x224
//! image gives 56, 28, 14 and 7 pixel maps.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_core::{Error, FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::layers::{
    BasicBlock, BatchNorm2d, BlockKind, Bottleneck, Conv2d, ConvConfig, Linear, LinearConfig,
};

/// The torchvision ResNets this module builds.
pub const NAMES: &[&str] = &["resnet18", "resnet34", "resnet50"];

/// torchvision's base width (the stem's channels and the first stage's width).
pub const DEFAULT_WIDTH: usize = 64;

/// Depth, block and width of a torchvision ResNet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TvResNetConfig {
    /// Arch name, e.g. `resnet18`.
    pub name: String,
    /// Blocks per stage.
    pub blocks: [usize; 4],
    /// The block.
    pub block: BlockKind,
    /// Base width `w` (stem and first stage; the stages are w, 2w, 4w, 8w).
    pub width: usize,
}

impl TvResNetConfig {
    /// The config of `resnet18`, `resnet34` or `resnet50` with base `width`.
    pub fn by_name(name: &str, width: usize) -> Option<Self> {
        let (blocks, block) = match name {
            "resnet18" => ([2, 2, 2, 2], BlockKind::Basic),
            "resnet34" => ([3, 4, 6, 3], BlockKind::Basic),
            "resnet50" => ([3, 4, 6, 3], BlockKind::Bottleneck),
            _ => return None,
        };
        Some(Self {
            name: name.to_string(),
            blocks,
            block,
            width,
        })
    }
}

enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Block::Basic(b) => b.forward(x, train),
            Block::Bottleneck(b) => b.forward(x, train),
        }
    }
}

/// Output side of a `k`x`k` window with `stride` and `pad` over `n` inputs (PyTorch's floor rule).
fn out_side(n: usize, k: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad - k) / stride + 1
}

/// Every other entry of `x` along `dim`, starting at `start`, `n` of them.
fn every_other(x: &Tensor, dim: usize, start: usize, n: usize) -> Result<Tensor> {
    let mut shape = x.dims().to_vec();
    let y = x.narrow(dim, start, 2 * n)?;
    shape[dim] = n;
    shape.insert(dim + 1, 2);
    Ok(y.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?)
}

/// torchvision's stem pooling, `nn.MaxPool2d(3, stride=2, padding=1)`, as the maximum of strided views
/// (rows, then columns), so it has candle's backward (whose own max-pool has none for overlapping windows).
/// It follows a ReLU: every window holds a real value ≥ 0, so zero padding gives what PyTorch's -∞ does.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = (out_side(h, 3, 2, 1), out_side(w, 3, 2, 1));
    let mut y = x.pad_with_zeros(2, 1, 2 * oh + 1 - h)?;
    y = (0..3)
        .map(|d| every_other(&y, 2, d, oh))
        .reduce(|a, b| Ok(a?.maximum(&b?)?))
        .expect("three rows")?;
    y = y.pad_with_zeros(3, 1, 2 * ow + 1 - w)?;
    (0..3)
        .map(|d| every_other(&y, 3, d, ow))
        .reduce(|a, b| Ok(a?.maximum(&b?)?))
        .expect("three columns")
}

/// A torchvision ImageNet ResNet.
pub struct TvResNet {
    cfg: TvResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    fc: Linear,
    input: [usize; 3],
    num_classes: usize,
    flops: u64,
    varmap: VarMap,
}

impl TvResNet {
    /// The ResNet `cfg` for `[C, H, W]` inputs and `num_classes` classes, initialised from `seed`.
    pub fn new(
        cfg: &TvResNetConfig,
        input: [usize; 3],
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if cfg.width == 0 {
            return Err(Error::config("model", "`width` must be at least 1"));
        }
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, device);
        let [c, h, w] = input;
        let w0 = cfg.width;
        let conv1 = Conv2d::new(
            &ConvConfig::new(c, w0, 7).stride(2).padding(3).bias(false),
            vb.pp("conv1"),
        )?;
        let bn1 = BatchNorm2d::new(w0, vb.pp("bn1"))?;
        let (mut h, mut w) = (out_side(h, 7, 2, 3), out_side(w, 7, 2, 3));
        let mut flops = conv1.flops(h, w);
        (h, w) = (out_side(h, 3, 2, 1), out_side(w, 3, 2, 1));
        let mut cin = w0;
        let mut stages = Vec::with_capacity(4);
        for (s, &n) in cfg.blocks.iter().enumerate() {
            let width = w0 << s;
            let vbs = vb.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let (ho, wo) = (out_side(h, 3, stride, 1), out_side(w, 3, stride, 1));
                let vbi = vbs.pp(i.to_string());
                blocks.push(match cfg.block {
                    BlockKind::Basic => {
                        flops += BasicBlock::flops(cin, width, stride, ho * wo);
                        let b = BasicBlock::new(cin, width, stride, vbi)?;
                        cin = width;
                        Block::Basic(b)
                    }
                    BlockKind::Bottleneck => {
                        flops += Bottleneck::flops(cin, width, stride, h * w, ho * wo);
                        let b = Bottleneck::new(cin, width, stride, vbi)?;
                        cin = width * Bottleneck::EXPANSION;
                        Block::Bottleneck(b)
                    }
                });
                (h, w) = (ho, wo);
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

impl Network for TvResNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        super::input::check_image_input(input, self.input, &self.cfg.name)?;
        let train = mode.is_train();
        let x = distill_nn::layers::conv_bn(&self.conv1, &self.bn1, input, train, true)?;
        let mut x = max_pool_3x3_s2(&x)?;
        let mut maps = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x, train)?;
            }
            maps.push(x.clone());
        }
        let pen = x.mean((2, 3))?;
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

    /// `input` `[batch, C, H, W]` (normalised as in training) -> `logits`: conv1-bn1-relu, `MaxPool` 3x3 /2
    /// with padding 1 (ONNX pads with -inf, ours with zeros after the ReLU: the same maxima), the stages,
    /// `GlobalAveragePool`, fc.
    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> Result<()> {
        use distill_nn::onnx::{self, Attr};
        g.set_doc(
            "input: [batch, C, H, W] f32, the image normalised per channel as in training \
             ((pixel / 255 - mean[c]) / std[c]); logits: [batch, classes]",
        );
        let x = onnx::input_f32(g, "input", &self.input)?;
        let y = self.conv1.onnx(g, &x)?;
        let y = self.bn1.onnx(g, &y, true)?;
        let mut y = g.op(
            "MaxPool",
            &[y.as_str()],
            &[
                Attr::Ints("kernel_shape", vec![3, 3]),
                Attr::Ints("strides", vec![2, 2]),
                Attr::Ints("pads", vec![1, 1, 1, 1]),
            ],
            "maxpool",
        )?;
        for block in self.stages.iter().flatten() {
            y = match block {
                Block::Basic(b) => b.onnx(g, &y)?,
                Block::Bottleneck(b) => b.onnx(g, &y)?,
            };
        }
        let y = onnx::global_avg_pool(g, &y, "pool")?;
        let y = self.fc.onnx(g, &y)?;
        onnx::output_f32(g, &y, "logits", &[self.num_classes])
    }

    fn describe(&self) -> String {
        let [c, h, w] = self.input;
        let b = self.cfg.blocks;
        format!(
            "{} (torchvision ResNet, {} {}-{}-{}-{}, width {}), {c}x{h}x{w} -> {} classes",
            self.cfg.name,
            match self.cfg.block {
                BlockKind::Basic => "BasicBlocks",
                BlockKind::Bottleneck => "Bottlenecks",
            },
            b[0],
            b[1],
            b[2],
            b[3],
            self.cfg.width,
            self.num_classes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_core::network::num_trainable_params;

    /// torchvision's parameter counts (`sum(p.numel() for p in resnet18().parameters())`): 11,689,512 for
    /// resnet18, 21,797,672 for resnet34 and 25,557,032 for resnet50, with 1000 classes.
    #[test]
    fn parameter_counts_equal_torchvision() -> Result<()> {
        for (name, count) in [
            ("resnet18", 11_689_512),
            ("resnet34", 21_797_672),
            ("resnet50", 25_557_032),
        ] {
            let cfg = TvResNetConfig::by_name(name, DEFAULT_WIDTH).unwrap();
            let net = TvResNet::new(&cfg, [3, 32, 32], 1000, 0, &Device::Cpu)?;
            assert_eq!(num_trainable_params(&net), count, "{name}");
        }
        Ok(())
    }

    /// FLOPs of resnet18 at 224x224: 1.814 G multiply-adds as fvcore counts them (convolutions and fc; the
    /// figure torchvision's model card gives as 1.81 GFLOPS), 2 FLOPs each.
    #[test]
    fn flops_and_feature_shapes() -> Result<()> {
        let cfg = TvResNetConfig::by_name("resnet18", DEFAULT_WIDTH).unwrap();
        let net = TvResNet::new(&cfg, [3, 224, 224], 1000, 0, &Device::Cpu)?;
        let macs = net.flops() as f64 / 2.0;
        assert!((macs / 1e9 - 1.814).abs() < 0.002, "{macs}");
        let cfg = TvResNetConfig::by_name("resnet50", 8).unwrap();
        let net = TvResNet::new(&cfg, [3, 33, 31], 7, 0, &Device::Cpu)?;
        let out = net.forward(
            &Tensor::zeros((2, 3, 33, 31), candle_core::DType::F32, &Device::Cpu)?,
            Mode::Train { seed: 0 },
        )?;
        assert_eq!(out.logits.dims(), [2, 7]);
        // 33 -> 17 (conv1) -> 9 (maxpool) -> 9, 5, 3, 2; 31 -> 16 -> 8 -> 8, 4, 2, 1
        for (f, dims) in [
            ("layer1", [2, 32, 9, 8]),
            ("layer2", [2, 64, 5, 4]),
            ("layer3", [2, 128, 3, 2]),
            ("layer4", [2, 256, 2, 1]),
        ] {
            assert_eq!(out.feature(f)?.tensor.dims(), dims, "{f}");
        }
        assert_eq!(out.feature("penultimate")?.tensor.dims(), [2, 256]);
        Ok(())
    }

    /// The strided max-pool against a direct 3x3 / stride 2 / pad 1 maximum (padding −∞), on non-negative
    /// input of odd and even sides; and its gradient reaches the input.
    #[test]
    fn stem_pool_matches_a_direct_maximum() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w) in [(7, 6), (8, 9), (1, 2)] {
            let x = Tensor::rand(0f32, 1f32, (2, 3, h, w), &dev)?;
            let got = max_pool_3x3_s2(&x)?;
            let (oh, ow) = (out_side(h, 3, 2, 1), out_side(w, 3, 2, 1));
            assert_eq!(got.dims(), [2, 3, oh, ow]);
            let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let gv: Vec<f32> = got.flatten_all()?.to_vec1()?;
            for p in 0..6 {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for y in (2 * i).saturating_sub(1)..(2 * i + 2).min(h) {
                            for x_ in (2 * j).saturating_sub(1)..(2 * j + 2).min(w) {
                                m = m.max(xv[p * h * w + y * w + x_]);
                            }
                        }
                        assert_eq!(gv[p * oh * ow + i * ow + j], m, "{h}x{w} ({i}, {j})");
                    }
                }
            }
        }
        let x = candle_core::Var::rand(0f32, 1f32, (1, 1, 6, 6), &dev)?;
        let g = max_pool_3x3_s2(x.as_tensor())?.sum_all()?.backward()?;
        let gx: f32 = g.get(x.as_tensor()).unwrap().sum_all()?.to_scalar()?;
        assert!(
            (gx - 9.0).abs() < 1e-6,
            "one unit of gradient per output, got {gx}"
        );
        Ok(())
    }
}
