//! The teacher: a small ResNet over time-frequency maps.
//!
//! `conv1` 3x3 stride 2 (1 -> w0) + `bn1` + ReLU, then `layer1..3`: one BasicBlock each
//! (`conv3x3-bn-relu-conv3x3-bn` plus the identity or a `downsample` 1x1 conv + bn, then ReLU) with widths
//! w1, w2, w3 and strides 1, 2, 2 (a 40 x 32 input gives 20 x 16, 10 x 8 and 5 x 4 maps),
//! global average pooling, optional dropout and `fc`. Parameter names follow PyTorch's state-dict naming
//! (`layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, …).

use candle_core::{Device, Tensor};
use candle_nn::{BatchNorm, Conv2d, Linear, Module, VarMap};
use distill_core::{
    nn::dropout, nn::seeded_var_builder, nn::BasicBlock, FeatureKind, Mode, Network, Outputs,
    Result,
};

use super::{bn, conv, out_size};

/// The `res-cnn` teacher.
pub struct ResCnn {
    conv1: Conv2d,
    bn1: BatchNorm,
    layers: Vec<BasicBlock>,
    fc: Linear,
    dropout: f64,
    widths: [usize; 4],
    flops: u64,
    varmap: VarMap,
}

impl ResCnn {
    /// Widths `[stem, stage1, stage2, stage3]`, input `[1, rows, frames]`.
    pub fn new(
        widths: [usize; 4],
        input: [usize; 3],
        classes: usize,
        dropout: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, device);
        let conv1 = conv(1, widths[0], 3, 2, vb.pp("conv1"))?;
        let bn1 = bn(widths[0], vb.pp("bn1"))?;
        let (mut h, mut w) = (out_size(input[1], 2), out_size(input[2], 2));
        let mut flops = 2 * (9 * widths[0] * h * w) as u64;
        let mut layers = Vec::new();
        for i in 0..3 {
            let (cin, cout) = (widths[i], widths[i + 1]);
            let stride = if i == 0 { 1 } else { 2 };
            let block = BasicBlock::new(cin, cout, stride, vb.pp(format!("layer{}.0", i + 1)))?;
            (h, w) = (out_size(h, stride), out_size(w, stride));
            flops += BasicBlock::flops(cin, cout, stride, h * w);
            layers.push(block);
        }
        let fc = candle_nn::linear(widths[3], classes, vb.pp("fc"))?;
        flops += 2 * (widths[3] * classes) as u64;
        Ok(Self {
            conv1,
            bn1,
            layers,
            fc,
            dropout,
            widths,
            flops,
            varmap,
        })
    }
}

impl Network for ResCnn {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        let train = mode.is_train();
        let mut x = distill_core::ops::batch_norm(
            &self.bn1,
            &distill_core::ops::conv2d_layer(&self.conv1, input)?,
            train,
            true,
        )?;
        let mut maps = Vec::new();
        for l in &self.layers {
            x = l.forward(&x, train)?;
            maps.push(x.clone());
        }
        let pen = x.mean((2, 3))?;
        let logits = self.fc.forward(&dropout(&pen, self.dropout, mode, "fc")?)?;
        let mut out = Outputs::logits(logits);
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
    fn describe(&self) -> String {
        let w = self.widths;
        format!("res-cnn {}-{}-{}-{}", w[0], w[1], w[2], w[3])
    }
}
