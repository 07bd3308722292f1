//! ResNet building blocks (He et al. 2016) with torchvision's names: [`BasicBlock`], [`Bottleneck`] and a
//! CIFAR-style [`ResNetTrunk`] (`conv1`, `bn1`, `layer1..n`).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{conv_bn, BatchNorm2d, Conv2d, ConvConfig};
use crate::{Error, Result};

fn conv(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(
        &ConvConfig::new(cin, cout, k).stride(stride).bias(false),
        vb,
    )
}

/// Output side of a 3x3/pad-1 or 1x1/pad-0 convolution with `stride` over `n` inputs.
pub fn out_size(n: usize, stride: usize) -> usize {
    (n - 1) / stride + 1
}

/// The optional 1x1 conv + bn shortcut, `downsample.0` / `downsample.1`.
#[derive(Debug, Clone)]
pub(crate) struct Downsample(pub(crate) Option<(Conv2d, BatchNorm2d)>);

impl Downsample {
    fn new(cin: usize, cout: usize, stride: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self(if stride != 1 || cin != cout {
            Some((
                conv(cin, cout, 1, stride, vb.pp("downsample.0"))?,
                BatchNorm2d::new(cout, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        }))
    }
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.0 {
            Some((c, b)) => conv_bn(c, b, x, train, false),
            None => Ok(x.clone()),
        }
    }
}

/// The basic block: `conv3x3(stride)-bn-relu-conv3x3-bn`, plus the identity or a `downsample` 1x1 conv + bn
/// when the stride or width changes, then ReLU. Names: `conv1`, `bn1`, `conv2`, `bn2`, `downsample.{0,1}`.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm2d,
    pub(crate) conv2: Conv2d,
    pub(crate) bn2: BatchNorm2d,
    pub(crate) downsample: Downsample,
}

impl BasicBlock {
    /// A block `cin -> cout` whose first convolution has `stride`.
    pub fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let downsample = Downsample::new(cin, cout, stride, &vb)?;
        Ok(Self {
            conv1: conv(cin, cout, 3, stride, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(cout, vb.pp("bn1"))?,
            conv2: conv(cout, cout, 3, 1, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(cout, vb.pp("bn2"))?,
            downsample,
        })
    }

    /// FLOPs (2 per multiply-add) of the block's convolutions for `out_pixels` output positions per image.
    pub fn flops(cin: usize, cout: usize, stride: usize, out_pixels: usize) -> u64 {
        let conv = |cin: usize, k: usize| 2 * (cin * cout * k * k * out_pixels) as u64;
        let mut f = conv(cin, 3) + conv(cout, 3);
        if stride != 1 || cin != cout {
            f += conv(cin, 1);
        }
        f
    }

    /// The block on `x` `[B, cin, H, W]`; `train` selects batch statistics (and updates the running ones).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = conv_bn(&self.conv1, &self.bn1, x, train, true)?;
        let out = conv_bn(&self.conv2, &self.bn2, &out, train, false)?;
        let residual = self.downsample.forward(x, train)?;
        Ok((out + residual)?.relu()?)
    }
}

/// The bottleneck block (torchvision's `Bottleneck`, stride on the 3x3): `conv1x1-bn-relu-conv3x3(stride)-
/// bn-relu-conv1x1-bn` to `4·width` channels, plus the identity or `downsample`, then ReLU. Names: `conv1..3`,
/// `bn1..3`, `downsample.{0,1}`.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm2d,
    pub(crate) conv2: Conv2d,
    pub(crate) bn2: BatchNorm2d,
    pub(crate) conv3: Conv2d,
    pub(crate) bn3: BatchNorm2d,
    pub(crate) downsample: Downsample,
}

impl Bottleneck {
    /// Output channels per unit of width.
    pub const EXPANSION: usize = 4;

    /// A block `cin -> 4·width` whose 3x3 convolution has `stride`.
    pub fn new(cin: usize, width: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let cout = width * Self::EXPANSION;
        Ok(Self {
            conv1: conv(cin, width, 1, 1, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(width, vb.pp("bn1"))?,
            conv2: conv(width, width, 3, stride, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(width, vb.pp("bn2"))?,
            conv3: conv(width, cout, 1, 1, vb.pp("conv3"))?,
            bn3: BatchNorm2d::new(cout, vb.pp("bn3"))?,
            downsample: Downsample::new(cin, cout, stride, &vb)?,
        })
    }

    /// FLOPs for `in_pixels` input and `out_pixels` output positions per image.
    pub fn flops(
        cin: usize,
        width: usize,
        stride: usize,
        in_pixels: usize,
        out_pixels: usize,
    ) -> u64 {
        let cout = width * Self::EXPANSION;
        let mut f = 2 * (cin * width * in_pixels) as u64
            + 2 * (width * width * 9 * out_pixels) as u64
            + 2 * (width * cout * out_pixels) as u64;
        if stride != 1 || cin != cout {
            f += 2 * (cin * cout * out_pixels) as u64;
        }
        f
    }

    /// The block on `x` `[B, cin, H, W]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = conv_bn(&self.conv1, &self.bn1, x, train, true)?;
        let out = conv_bn(&self.conv2, &self.bn2, &out, train, true)?;
        let out = conv_bn(&self.conv3, &self.bn3, &out, train, false)?;
        let residual = self.downsample.forward(x, train)?;
        Ok((out + residual)?.relu()?)
    }
}

/// Which block a [`ResNetTrunk`] stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// [`BasicBlock`].
    Basic,
    /// [`Bottleneck`] (stage widths are the bottleneck widths; outputs are 4× wider).
    Bottleneck,
}

/// The shape of a [`ResNetTrunk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetTrunkConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Width of the 3x3 stem `conv1` (stride `stem_stride`).
    pub stem_width: usize,
    /// Stride of the stem.
    pub stem_stride: usize,
    /// Width of each stage; the first stage has stride 1, the others 2.
    pub stage_widths: Vec<usize>,
    /// Blocks per stage.
    pub blocks_per_stage: usize,
    /// The block.
    pub block: BlockKind,
}

#[derive(Debug, Clone)]
pub(crate) enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

/// A CIFAR-style ResNet trunk: `conv1` 3x3 + `bn1` + ReLU, then stages `layer1..n` of blocks (torchvision's
/// names: `layer1.0.conv1.weight`, …). Returns every stage's output map.
#[derive(Debug, Clone)]
pub struct ResNetTrunk {
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm2d,
    pub(crate) stages: Vec<Vec<Block>>,
    out_channels: usize,
}

impl ResNetTrunk {
    /// The trunk `cfg` under `vb`.
    pub fn new(cfg: &ResNetTrunkConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.stage_widths.is_empty() || cfg.blocks_per_stage == 0 {
            return Err(Error::Shape(format!(
                "resnet trunk: needs at least one stage of at least one block, got {cfg:?}"
            )));
        }
        let conv1 = conv(
            cfg.in_channels,
            cfg.stem_width,
            3,
            cfg.stem_stride,
            vb.pp("conv1"),
        )?;
        let bn1 = BatchNorm2d::new(cfg.stem_width, vb.pp("bn1"))?;
        let mut cin = cfg.stem_width;
        let mut stages = Vec::with_capacity(cfg.stage_widths.len());
        for (s, &w) in cfg.stage_widths.iter().enumerate() {
            let vbs = vb.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::with_capacity(cfg.blocks_per_stage);
            for i in 0..cfg.blocks_per_stage {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let vbi = vbs.pp(i.to_string());
                blocks.push(match cfg.block {
                    BlockKind::Basic => {
                        let b = Block::Basic(BasicBlock::new(cin, w, stride, vbi)?);
                        cin = w;
                        b
                    }
                    BlockKind::Bottleneck => {
                        let b = Block::Bottleneck(Bottleneck::new(cin, w, stride, vbi)?);
                        cin = w * Bottleneck::EXPANSION;
                        b
                    }
                });
            }
            stages.push(blocks);
        }
        Ok(Self {
            conv1,
            bn1,
            stages,
            out_channels: cin,
        })
    }

    /// Channels of the last stage's output.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// FLOPs per image for an `h`x`w` input.
    pub fn flops(cfg: &ResNetTrunkConfig, h: usize, w: usize) -> u64 {
        let (mut h, mut w) = (out_size(h, cfg.stem_stride), out_size(w, cfg.stem_stride));
        let mut f = 2 * (cfg.in_channels * cfg.stem_width * 9 * h * w) as u64;
        let mut cin = cfg.stem_width;
        for (s, &width) in cfg.stage_widths.iter().enumerate() {
            for i in 0..cfg.blocks_per_stage {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let (ho, wo) = (out_size(h, stride), out_size(w, stride));
                match cfg.block {
                    BlockKind::Basic => {
                        f += BasicBlock::flops(cin, width, stride, ho * wo);
                        cin = width;
                    }
                    BlockKind::Bottleneck => {
                        f += Bottleneck::flops(cin, width, stride, h * w, ho * wo);
                        cin = width * Bottleneck::EXPANSION;
                    }
                }
                (h, w) = (ho, wo);
            }
        }
        f
    }

    /// The stem's output, then each stage's output map.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let stem = conv_bn(&self.conv1, &self.bn1, x, train, true)?;
        let mut x = stem.clone();
        let mut maps = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                x = match block {
                    Block::Basic(b) => b.forward(&x, train)?,
                    Block::Bottleneck(b) => b.forward(&x, train)?,
                };
            }
            maps.push(x.clone());
        }
        Ok((stem, maps))
    }
}
