//! Keyword-spotting networks over `[B, 1, rows, frames]` feature maps (log-mel or MFCC):
//!
//! | arch | what | features |
//! |---|---|---|
//! | `res-cnn` | teacher: 3x3 stride-2 stem + three ResNet stages (strides 1, 2, 2), global pooling, `fc` | `layer1`, `layer2`, `layer3` (Map), `penultimate` (Vector) |
//! | `ds-cnn` | student: the "Hello Edge" DS-CNN: a strided stem conv, then `blocks` depthwise-separable blocks (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), global pooling, `fc` | `stem`, `block1` … `blockN` (Map), `penultimate` (Vector) |
//!
//! With the default input (40 x 32) `res-cnn`'s `layer1` and every `ds-cnn` map are 20 x 16, so a FitNets
//! hint between them needs only a 1x1 channel adapter (the core's).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use distill_core::{Mode, Network};
//! use distill_audio::models::{build_model, ModelSpec};
//! # fn main() -> distill_core::Result<()> {
//! let spec: ModelSpec = toml::from_str("arch = \"ds-cnn\"\nwidth = 32\nblocks = 2").unwrap();
//! let net = build_model(&spec, [1, 40, 32], 10, 0, &Device::Cpu)?;
//! let out = net.forward(&Tensor::zeros((2, 1, 40, 32), DType::F32, &Device::Cpu)?, Mode::Eval)?;
//! assert_eq!(out.logits.dims(), [2, 10]);
//! assert_eq!(out.feature("block2")?.tensor.dims(), [2, 32, 20, 16]);
//! # Ok(()) }
//! ```

pub mod dscnn;
mod onnx;
pub mod rescnn;

use candle_core::Device;
use distill_core::{Error, Network, Result};
use serde::{Deserialize, Serialize};

/// Architectures [`build_model`] knows.
pub const ARCHS: &[&str] = &["res-cnn", "ds-cnn"];

/// A model as a recipe writes it, e.g. `{ arch = "res-cnn", widths = [16, 16, 32, 64] }` or
/// `{ arch = "ds-cnn", width = 32, blocks = 4 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// One of [`ARCHS`].
    pub arch: String,
    /// `res-cnn`: stem width and the three stage widths (default `[16, 16, 32, 64]`).
    pub widths: Option<Vec<usize>>,
    /// `ds-cnn`: channels of every layer (default 32).
    pub width: Option<usize>,
    /// `ds-cnn`: depthwise-separable blocks (default 4).
    pub blocks: Option<usize>,
    /// Dropout before `fc`, in `[0, 1)` (default 0).
    pub dropout: Option<f64>,
}

/// Builds `spec` for inputs of shape `[1, rows, frames]`, parameters initialised from `seed`.
pub fn build_model(
    spec: &ModelSpec,
    input: [usize; 3],
    classes: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Network>> {
    let cfg = |m: String| Error::config("model", m);
    if let Some(p) = spec.dropout {
        if !(0.0..1.0).contains(&p) {
            return Err(cfg(format!("`dropout` must be in [0, 1), got {p}")));
        }
    }
    if input[0] != 1 {
        return Err(cfg(format!(
            "audio models take one input channel, got input shape {input:?}"
        )));
    }
    let dropout = spec.dropout.unwrap_or(0.0);
    match spec.arch.as_str() {
        "res-cnn" => {
            if spec.width.is_some() || spec.blocks.is_some() {
                return Err(cfg(
                    "`width` and `blocks` are ds-cnn options; res-cnn takes `widths`".into(),
                ));
            }
            let w = spec.widths.clone().unwrap_or_else(|| vec![16, 16, 32, 64]);
            let w: [usize; 4] = w.as_slice().try_into().map_err(|_| {
                cfg(format!(
                    "res-cnn `widths` needs 4 values (stem and three stages), got {}",
                    w.len()
                ))
            })?;
            if w.contains(&0) {
                return Err(cfg("res-cnn `widths` must all be positive".into()));
            }
            Ok(Box::new(rescnn::ResCnn::new(
                w, input, classes, dropout, seed, device,
            )?))
        }
        "ds-cnn" => {
            if spec.widths.is_some() {
                return Err(cfg(
                    "`widths` is a res-cnn option; ds-cnn takes `width` and `blocks`".into(),
                ));
            }
            let width = spec.width.unwrap_or(32);
            let blocks = spec.blocks.unwrap_or(4);
            if width == 0 || blocks == 0 {
                return Err(cfg("ds-cnn `width` and `blocks` must be positive".into()));
            }
            Ok(Box::new(dscnn::DsCnn::new(
                width, blocks, input, classes, dropout, seed, device,
            )?))
        }
        other => Err(Error::Unknown {
            what: "model arch",
            name: other.to_string(),
            known: ARCHS.join(", "),
        }),
    }
}
