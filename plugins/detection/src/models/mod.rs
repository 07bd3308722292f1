//! Detectors. One architecture, `centernet`: an anchor-free single-stage detector (Zhou et al., "Objects as
//! Points", 2019) with configurable width and depth, so teacher and student differ only in numbers.
//!
//! - backbone: a 3×3 stride-2 stem, then three ResNet stages (BasicBlocks, `depth` per stage) of widths
//!   2w, 4w, 8w at strides 4, 8, 16;
//! - neck: an FPN-style top-down path back to stride 4 (1×1 laterals, nearest upsampling, a 3×3 conv after
//!   each merge), `neck` channels;
//! - heads (3×3 conv `head` channels, ReLU, 1×1): a per-class centre heatmap (the logits; bias −2.19, a
//!   prior of 0.1), the box size (w, h in output cells) and the sub-cell centre offset.
//!
//! Outputs: `logits` = heatmap logits `[B, K, S/4, S/4]`; features `neck` (Map), `size` and `offset` (Map,
//! 2 channels each). Parameter names follow PyTorch state-dict style (`layer1.0.conv1.weight`, ...).

pub mod centernet;
mod onnx;
pub mod postprocess;

use candle_core::Device;
use distill_core::{Error, Network, Result};
use serde::{Deserialize, Serialize};

/// Architectures this plugin builds.
pub const ARCHS: &[&str] = &["centernet"];

/// Output stride of every detector (input side / heatmap side).
pub const STRIDE: usize = 4;

/// `{ arch = "centernet", width = 16, depth = 1 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// One of [`ARCHS`].
    pub arch: String,
    /// Stem width w; the stages have 2w, 4w, 8w channels (default 16).
    pub width: Option<usize>,
    /// BasicBlocks per stage (default 1).
    pub depth: Option<usize>,
    /// Neck channels (default 2w).
    pub neck: Option<usize>,
    /// Head hidden channels (default the neck's).
    pub head: Option<usize>,
}

/// Builds `spec` for `[channels, size, size]` inputs and `classes` classes, parameters from `seed`.
pub fn build_model(
    spec: &ModelSpec,
    channels: usize,
    size: usize,
    classes: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Network>> {
    match spec.arch.as_str() {
        "centernet" => {
            let width = spec.width.unwrap_or(16);
            let depth = spec.depth.unwrap_or(1);
            let neck = spec.neck.unwrap_or(2 * width);
            let head = spec.head.unwrap_or(neck);
            for (k, v) in [
                ("width", width),
                ("depth", depth),
                ("neck", neck),
                ("head", head),
            ] {
                if v == 0 {
                    return Err(Error::config(format!("model.{k}"), "must be > 0"));
                }
            }
            if !size.is_multiple_of(16) || size == 0 {
                return Err(Error::config(
                    "data.options.size",
                    format!("the input side must be a multiple of 16 (the backbone's stride), got {size}"),
                ));
            }
            let cfg = centernet::CenterNetConfig {
                channels,
                size,
                classes,
                width,
                depth,
                neck,
                head,
            };
            Ok(Box::new(centernet::CenterNet::new(cfg, seed, device)?))
        }
        other => Err(Error::Unknown {
            what: "model arch",
            name: other.to_string(),
            known: ARCHS.join(", "),
        }),
    }
}
