//! The student: a DS-CNN as in "Hello Edge: Keyword Spotting on Microcontrollers" (Zhang et al. 2017).
//!
//! `conv1` 3x3 stride 2 (1 -> width) + `bn1` + ReLU, then `blocks` depthwise-separable blocks
//! `blocks.N.{dw,bn_dw,pw,bn_pw}`: depthwise 3x3 (`groups = width`, computed with
//! [`distill_core::ops::depthwise_conv2d`]) + BN + ReLU, pointwise 1x1 + BN + ReLU; global average pooling,
//! optional dropout, `fc`.

use candle_core::{Device, Tensor};
use candle_nn::{BatchNorm, Conv2d, Linear, Module, VarBuilder, VarMap};
use distill_core::{
    nn::{dropout, seeded_var_builder},
    ops::depthwise_conv2d,
    FeatureKind, Mode, Network, Outputs, Result,
};

use super::{bn, conv, out_size};

struct DsBlock {
    dw: Tensor,
    bn_dw: BatchNorm,
    pw: Conv2d,
    bn_pw: BatchNorm,
}

impl DsBlock {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        // PyTorch Conv2d(c, c, 3, groups=c) default init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(9), 1/sqrt(9))
        let bound = 1.0 / 3.0;
        let dw = vb.get_with_hints(
            (c, 1, 3, 3),
            "dw.weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            dw,
            bn_dw: bn(c, vb.pp("bn_dw"))?,
            pw: conv(c, c, 1, 1, vb.pp("pw"))?,
            bn_pw: bn(c, vb.pp("bn_pw"))?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = depthwise_conv2d(x, &self.dw, (1, 1), (1, 1))?;
        let y = distill_core::ops::batch_norm(&self.bn_dw, &y, train, true)?;
        distill_core::ops::batch_norm(
            &self.bn_pw,
            &distill_core::ops::conv2d_layer(&self.pw, &y)?,
            train,
            true,
        )
    }
}

/// The `ds-cnn` student.
pub struct DsCnn {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<DsBlock>,
    fc: Linear,
    dropout: f64,
    width: usize,
    flops: u64,
    varmap: VarMap,
}

impl DsCnn {
    /// `width` channels everywhere, `blocks` depthwise-separable blocks, input `[1, rows, frames]`.
    pub fn new(
        width: usize,
        blocks: usize,
        input: [usize; 3],
        classes: usize,
        dropout: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, device);
        let conv1 = conv(1, width, 3, 2, vb.pp("conv1"))?;
        let bn1 = bn(width, vb.pp("bn1"))?;
        let (h, w) = (out_size(input[1], 2), out_size(input[2], 2));
        let mut flops = 2 * (9 * width * h * w) as u64;
        let blocks = (0..blocks)
            .map(|i| DsBlock::new(width, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        flops += blocks.len() as u64 * 2 * ((9 * width + width * width) * h * w) as u64;
        let fc = candle_nn::linear(width, classes, vb.pp("fc"))?;
        flops += 2 * (width * classes) as u64;
        Ok(Self {
            conv1,
            bn1,
            blocks,
            fc,
            dropout,
            width,
            flops,
            varmap,
        })
    }
}

impl Network for DsCnn {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        let train = mode.is_train();
        let mut x = distill_core::ops::batch_norm(
            &self.bn1,
            &distill_core::ops::conv2d_layer(&self.conv1, input)?,
            train,
            true,
        )?;
        let mut maps = vec![("stem".to_string(), x.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, train)?;
            maps.push((format!("block{}", i + 1), x.clone()));
        }
        let pen = x.mean((2, 3))?;
        let logits = self.fc.forward(&dropout(&pen, self.dropout, mode, "fc")?)?;
        let mut out = Outputs::logits(logits);
        for (name, m) in maps {
            out = out.with_feature(&name, FeatureKind::Map, m)?;
        }
        out.with_feature("penultimate", FeatureKind::Vector, pen)
    }
    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    fn flops(&self) -> u64 {
        self.flops
    }
    fn describe(&self) -> String {
        format!("ds-cnn {}x{}", self.width, self.blocks.len())
    }
}
