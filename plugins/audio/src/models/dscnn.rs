//! The student: a DS-CNN as in "Hello Edge: Keyword Spotting on Microcontrollers" (Zhang et al. 2017).
//!
//! `conv1` 3x3 stride 2 (1 -> width) + `bn1` + ReLU, then `blocks` depthwise-separable blocks
//! `blocks.N.{dw,bn_dw,pw,bn_pw}`: depthwise 3x3 (`groups = width`, computed with
//! [`distill_nn::ops::depthwise_conv2d`]) + BN + ReLU, pointwise 1x1 + BN + ReLU; global average pooling,
//! optional dropout, `fc`.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_core::{FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::{
    init::seeded_var_builder,
    layers::{dropout, out_size, ConvBn, ConvConfig, DepthwiseSeparable, Linear, LinearConfig},
};

/// The `ds-cnn` student.
pub struct DsCnn {
    pub(crate) stem: ConvBn,
    pub(crate) blocks: Vec<DepthwiseSeparable>,
    pub(crate) fc: Linear,
    dropout: f64,
    width: usize,
    /// `[1, rows, frames]`.
    pub(crate) input: [usize; 3],
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
        let stem = ConvBn::with_names(
            &ConvConfig::new(input[0], width, 3).stride(2),
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let (h, w) = (out_size(input[1], 2), out_size(input[2], 2));
        let mut flops = stem.flops(h, w);
        let blocks = (0..blocks)
            .map(|i| {
                DepthwiseSeparable::new(
                    &ConvConfig::new(width, width, 3),
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        flops += blocks.iter().map(|b| b.flops(h, w)).sum::<u64>();
        let fc = Linear::new(&LinearConfig::new(width, classes), vb.pp("fc"))?;
        flops += fc.flops();
        Ok(Self {
            stem,
            blocks,
            fc,
            dropout,
            width,
            input,
            flops,
            varmap,
        })
    }
}

impl Network for DsCnn {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        let train = mode.is_train();
        let mut x = self.stem.forward(input, train, true)?;
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
    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> Result<()> {
        self.emit_onnx(g)
    }
    fn describe(&self) -> String {
        format!("ds-cnn {}x{}", self.width, self.blocks.len())
    }
}
