//! ONNX export of the keyword-spotting networks (`ds-cnn`, `res-cnn`).
//!
//! The graph starts **after** the acoustic front end: its `input` is the feature map `[batch, 1, rows,
//! frames]` f32 that `crate::data::frontend` computes from a waveform (resampling, framing, Hann window,
//! power spectrogram, mel filterbank, dB, optional MFCC, per-utterance normalisation, pad/crop to `frames`,
//! all per the recipe's `[data.options.frontend]`). That front end is preprocessing: a deployment runs it (or
//! librosa with the same settings, which it matches) before the model. `logits` is `[batch, classes]`; the
//! graph is the eval-mode forward pass (batch norm with running statistics, no dropout).

use distill_core::Result;
use distill_nn::onnx::{self, Graph};

use super::dscnn::DsCnn;
use super::rescnn::ResCnn;

const DOC: &str = "input: [batch, 1, rows, frames] f32 acoustic features (log-mel dB or MFCC, \
     per-utterance normalised, padded/cropped to `frames`) computed by distill-audio's front end with the \
     recipe's [data.options.frontend] settings: the front end is preprocessing, outside this graph; \
     logits: [batch, classes]";

impl DsCnn {
    /// stem conv-bn-relu, the depthwise-separable blocks, global average pooling, fc.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        g.set_doc(DOC);
        let x = onnx::input_f32(g, "input", &self.input)?;
        let mut y = self.stem.onnx(g, &x, true)?;
        for b in &self.blocks {
            y = b.onnx(g, &y)?;
        }
        let y = onnx::global_avg_pool(g, &y, "pool")?;
        let y = self.fc.onnx(g, &y)?;
        onnx::output_f32(g, &y, "logits", &[self.fc.weight().dim(0)?])
    }
}

impl ResCnn {
    /// The ResNet trunk, global average pooling of the last stage, fc.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        g.set_doc(DOC);
        let x = onnx::input_f32(g, "input", &self.input)?;
        let (_, maps) = self.trunk.onnx(g, &x)?;
        let last = maps.last().expect("three stages");
        let y = onnx::global_avg_pool(g, last, "pool")?;
        let y = self.fc.onnx(g, &y)?;
        onnx::output_f32(g, &y, "logits", &[self.fc.weight().dim(0)?])
    }
}
