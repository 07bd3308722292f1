//! The CenterNet-style detector (see the module above for its shape).

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use distill_core::{Error, FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::{
    init::seeded_var_builder,
    layers::{BasicBlock, Conv2d, ConvBn, ConvConfig},
};

/// Sizes of a CenterNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CenterNetConfig {
    /// Input channels.
    pub channels: usize,
    /// Input side (multiple of 16).
    pub size: usize,
    /// Classes (heatmap channels).
    pub classes: usize,
    /// Stem width w.
    pub width: usize,
    /// BasicBlocks per stage.
    pub depth: usize,
    /// Neck channels.
    pub neck: usize,
    /// Head hidden channels.
    pub head: usize,
}

/// The heatmap bias: −log((1 − 0.1) / 0.1), a prior probability of 0.1 (CenterNet's −2.19).
pub const HEATMAP_PRIOR_BIAS: f32 = -2.19;

fn conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(&ConvConfig::new(cin, cout, k), vb)
}

fn conv_bn(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<ConvBn> {
    ConvBn::new(&ConvConfig::new(cin, cout, k).stride(stride), vb)
}

fn conv_flops(cin: usize, cout: usize, k: usize, hw: usize) -> u64 {
    2 * (cin * cout * k * k * hw) as u64
}

pub(crate) struct Head {
    pub(crate) hidden: Conv2d,
    pub(crate) out: Conv2d,
}

impl Head {
    fn new(cin: usize, hidden: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            hidden: conv(cin, hidden, 3, vb.pp("0"))?,
            out: conv(hidden, cout, 1, vb.pp("2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.hidden.forward_relu(x)?)
    }
}

/// A CenterNet-style detector.
pub struct CenterNet {
    pub(crate) cfg: CenterNetConfig,
    pub(crate) stem: ConvBn,
    pub(crate) stages: Vec<Vec<BasicBlock>>,
    pub(crate) lateral: [Conv2d; 3],
    pub(crate) smooth: [ConvBn; 2],
    pub(crate) heatmap: Head,
    pub(crate) size: Head,
    pub(crate) offset: Head,
    varmap: VarMap,
    flops: u64,
}

impl CenterNet {
    /// Builds the network, parameters initialised from `seed`.
    pub fn new(cfg: CenterNetConfig, seed: u64, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, device);
        let w = cfg.width;
        let s = cfg.size;
        let stem = conv_bn(cfg.channels, w, 3, 2, vb.pp("stem"))?;
        let mut flops = conv_flops(cfg.channels, w, 3, (s / 2) * (s / 2));
        let widths = [2 * w, 4 * w, 8 * w];
        let mut stages = Vec::new();
        let mut cin = w;
        for (i, &cout) in widths.iter().enumerate() {
            let side = s >> (i + 2);
            let mut blocks = Vec::new();
            for j in 0..cfg.depth {
                let stride = if j == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    cout,
                    stride,
                    vb.pp(format!("layer{}.{j}", i + 1)),
                )?);
                flops += BasicBlock::flops(cin, cout, stride, side * side);
                cin = cout;
            }
            stages.push(blocks);
        }
        let n = cfg.neck;
        let lateral = [
            conv(widths[0], n, 1, vb.pp("neck.lateral.0"))?,
            conv(widths[1], n, 1, vb.pp("neck.lateral.1"))?,
            conv(widths[2], n, 1, vb.pp("neck.lateral.2"))?,
        ];
        let smooth = [
            conv_bn(n, n, 3, 1, vb.pp("neck.smooth.0"))?,
            conv_bn(n, n, 3, 1, vb.pp("neck.smooth.1"))?,
        ];
        let (s4, s8, s16) = ((s / 4).pow(2), (s / 8).pow(2), (s / 16).pow(2));
        flops += conv_flops(widths[0], n, 1, s4)
            + conv_flops(widths[1], n, 1, s8)
            + conv_flops(widths[2], n, 1, s16)
            + conv_flops(n, n, 3, s8)
            + conv_flops(n, n, 3, s4);
        let h = cfg.head;
        let heatmap = Head::new(n, h, cfg.classes, vb.pp("heads.heatmap"))?;
        let size = Head::new(n, h, 2, vb.pp("heads.size"))?;
        let offset = Head::new(n, h, 2, vb.pp("heads.offset"))?;
        flops += 3 * conv_flops(n, h, 3, s4) + conv_flops(h, cfg.classes + 4, 1, s4);
        // the heatmap's prior: every location starts at p = 0.1, so the focal loss starts stable
        {
            let data = varmap.data().lock().expect("varmap lock");
            let b = data
                .get("heads.heatmap.2.bias")
                .ok_or_else(|| Error::msg("centernet: heatmap bias missing"))?;
            b.set(&Tensor::full(HEATMAP_PRIOR_BIAS, cfg.classes, device)?)?;
        }
        Ok(Self {
            cfg,
            stem,
            stages,
            lateral,
            smooth,
            heatmap,
            size,
            offset,
            varmap,
            flops,
        })
    }

    /// The sizes it was built with.
    pub fn config(&self) -> CenterNetConfig {
        self.cfg
    }
}

impl Network for CenterNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        let c = &self.cfg;
        if input.rank() != 4 || input.dims()[1..] != [c.channels, c.size, c.size] {
            return Err(Error::Shape(format!(
                "{} expects [B, {}, {}, {}] input, got {:?}",
                self.describe(),
                c.channels,
                c.size,
                c.size,
                input.dims()
            )));
        }
        let train = mode.is_train();
        let mut x = self.stem.forward(input, train, true)?;
        let mut taps = Vec::new();
        for stage in &self.stages {
            for b in stage {
                x = b.forward(&x, train)?;
            }
            taps.push(x.clone());
        }
        // top-down: stride 16 → 8 → 4
        let p16 = self.lateral[2].forward(&taps[2])?;
        let (h8, w8) = (taps[1].dim(2)?, taps[1].dim(3)?);
        let p8 = (p16.upsample_nearest2d(h8, w8)? + self.lateral[1].forward(&taps[1])?)?;
        let p8 = self.smooth[0].forward(&p8, train, true)?;
        let (h4, w4) = (taps[0].dim(2)?, taps[0].dim(3)?);
        let p4 = (p8.upsample_nearest2d(h4, w4)? + self.lateral[0].forward(&taps[0])?)?;
        let neck = self.smooth[1].forward(&p4, train, true)?;
        let heat = self.heatmap.forward(&neck)?;
        let size = self.size.forward(&neck)?;
        let offset = self.offset.forward(&neck)?;
        Outputs::logits(heat)
            .with_feature("neck", FeatureKind::Map, neck)?
            .with_feature("size", FeatureKind::Map, size)?
            .with_feature("offset", FeatureKind::Map, offset)
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
        let c = &self.cfg;
        format!(
            "centernet w{} d{} neck{} head{} ({}x{}x{} in, {} classes)",
            c.width, c.depth, c.neck, c.head, c.channels, c.size, c.size, c.classes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_core::network::num_params;

    #[test]
    fn shapes_and_parameter_ratio() {
        let dev = Device::Cpu;
        let cfg = |width, depth| CenterNetConfig {
            channels: 1,
            size: 64,
            classes: 10,
            width,
            depth,
            neck: 2 * width,
            head: 2 * width,
        };
        let t = CenterNet::new(cfg(24, 2), 0, &dev).unwrap();
        let s = CenterNet::new(cfg(10, 1), 0, &dev).unwrap();
        let x = Tensor::zeros((2, 1, 64, 64), candle_core::DType::F32, &dev).unwrap();
        let o = s.forward(&x, Mode::Eval).unwrap();
        assert_eq!(o.logits.dims(), [2, 10, 16, 16]);
        assert_eq!(o.feature("size").unwrap().tensor.dims(), [2, 2, 16, 16]);
        assert_eq!(o.feature("neck").unwrap().tensor.dims(), [2, 20, 16, 16]);
        let (pt, ps) = (num_params(&t), num_params(&s));
        assert!(ps * 4 <= pt, "student {ps} vs teacher {pt}");
        let e = s
            .forward(
                &Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &dev).unwrap(),
                Mode::Eval,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("expects [B, 1, 64, 64]"), "{e}");
    }
}
