//! The teacher: a small ResNet over time-frequency maps.
//!
//! `conv1` 3x3 stride 2 (1 -> w0) + `bn1` + ReLU, then `layer1..3`: one BasicBlock each
//! (`conv3x3-bn-relu-conv3x3-bn` plus the identity or a `downsample` 1x1 conv + bn, then ReLU) with widths
//! w1, w2, w3 and strides 1, 2, 2 (a 40 x 32 input gives 20 x 16, 10 x 8 and 5 x 4 maps),
//! global average pooling, optional dropout and `fc`. Parameter names follow PyTorch's state-dict naming
//! (`layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, …).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_core::{FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::{
    init::seeded_var_builder,
    layers::{dropout, BlockKind, Linear, LinearConfig, ResNetTrunk, ResNetTrunkConfig},
};

/// The `res-cnn` teacher.
pub struct ResCnn {
    pub(crate) trunk: ResNetTrunk,
    pub(crate) fc: Linear,
    dropout: f64,
    widths: [usize; 4],
    /// `[1, rows, frames]`.
    pub(crate) input: [usize; 3],
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
        let cfg = ResNetTrunkConfig {
            in_channels: input[0],
            stem_width: widths[0],
            stem_stride: 2,
            stage_widths: widths[1..].to_vec(),
            blocks_per_stage: 1,
            block: BlockKind::Basic,
        };
        let trunk = ResNetTrunk::new(&cfg, vb.clone())?;
        let fc = Linear::new(&LinearConfig::new(widths[3], classes), vb.pp("fc"))?;
        let flops = ResNetTrunk::flops(&cfg, input[1], input[2]) + fc.flops();
        Ok(Self {
            trunk,
            fc,
            dropout,
            widths,
            input,
            flops,
            varmap,
        })
    }
}

impl Network for ResCnn {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        let train = mode.is_train();
        let (_, maps) = self.trunk.forward(input, train)?;
        let pen = maps.last().expect("three stages").mean((2, 3))?;
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
    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> Result<()> {
        self.emit_onnx(g)
    }
    fn describe(&self) -> String {
        let w = self.widths;
        format!("res-cnn {}-{}-{}-{}", w[0], w[1], w[2], w[3])
    }
}
