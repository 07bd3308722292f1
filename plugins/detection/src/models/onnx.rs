//! ONNX export of the CenterNet detector.
//!
//! `input` is the letterboxed image `[batch, C, S, S]` f32 scaled as the task's batches are
//! (`(pixel / 255 − 0.5) / 0.25`; letterboxing and scaling are preprocessing). Outputs, all at stride 4:
//! `logits` — the heatmap logits `[batch, K, S/4, S/4]` exactly as the network's forward pass returns them
//! (apply a sigmoid for probabilities); `size` — box width and height in output cells `[batch, 2, S/4,
//! S/4]`; `offset` — the sub-cell centre offset `[batch, 2, S/4, S/4]`. Box decoding (peak picking,
//! threshold, top-k, class-wise NMS, `crate::models::postprocess`) and the mapping back to original pixels
//! stay outside the graph.

use distill_core::Result;
use distill_nn::onnx::{self, Attr, Graph};

use super::centernet::CenterNet;

impl CenterNet {
    /// Backbone, FPN-style neck (nearest 2x upsampling as `Resize`), the three heads.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        let c = self.cfg;
        g.set_doc(
            "input: [batch, C, S, S] f32 letterboxed image, (pixel / 255 - 0.5) / 0.25; outputs at stride 4: \
             logits = heatmap logits [batch, K, S/4, S/4] (sigmoid for probabilities), size = box w, h in \
             output cells [batch, 2, S/4, S/4], offset = sub-cell centre offset [batch, 2, S/4, S/4]; \
             peak picking, top-k and NMS are post-processing outside this graph",
        );
        let x = onnx::input_f32(g, "input", &[c.channels, c.size, c.size])?;
        let mut y = self.stem.onnx(g, &x, true)?;
        let mut taps = Vec::new();
        for stage in &self.stages {
            for b in stage {
                y = b.onnx(g, &y)?;
            }
            taps.push(y.clone());
        }
        let scales = g.const_f32("neck.upsample_scales", &[1.0, 1.0, 2.0, 2.0], &[4])?;
        let up = |g: &mut Graph, v: &str| -> Result<String> {
            Ok(g.op(
                "Resize",
                &[v, "", &scales],
                &[
                    Attr::Str("mode", "nearest".into()),
                    Attr::Str("coordinate_transformation_mode", "asymmetric".into()),
                    Attr::Str("nearest_mode", "floor".into()),
                ],
                &format!("{v}.upsample"),
            )?)
        };
        let p16 = self.lateral[2].onnx(g, &taps[2])?;
        let l8 = self.lateral[1].onnx(g, &taps[1])?;
        let u = up(g, &p16)?;
        let p8 = g.op("Add", &[&u, &l8], &[], "neck.p8")?;
        let p8 = self.smooth[0].onnx(g, &p8, true)?;
        let l4 = self.lateral[0].onnx(g, &taps[0])?;
        let u = up(g, &p8)?;
        let p4 = g.op("Add", &[&u, &l4], &[], "neck.p4")?;
        let neck = self.smooth[1].onnx(g, &p4, true)?;
        let side = c.size / super::STRIDE;
        for (head, name, channels) in [
            (&self.heatmap, "logits", c.classes),
            (&self.size, "size", 2),
            (&self.offset, "offset", 2),
        ] {
            let h = head.hidden.onnx(g, &neck)?;
            let h = onnx::relu(g, &h, &format!("{h}.relu"))?;
            let out = head.out.onnx(g, &h)?;
            onnx::output_f32(g, &out, name, &[channels, side, side])?;
        }
        Ok(())
    }
}
