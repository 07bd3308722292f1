//! ONNX export of the node-feature MLP (the GLNN student).
//!
//! The exported graph takes a node's **features**, not its id: `input` is `[batch, F]` f32, the rows of the
//! graph's feature matrix as the data loader built it (row-normalised when the recipe asks for it). The MLP
//! reads no neighbours, so this is the whole model: `logits` is `[batch, classes]` (eval mode, no
//! dropout). The GNNs (GCN, GraphSAGE, GAT) read the graph itself and have no ONNX export.

use distill_core::Result;
use distill_nn::onnx::{self, Attr, Graph};

use super::mlp::Mlp;

impl Mlp {
    /// `Gemm` (+ `Relu`) per layer over the feature rows.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        g.set_doc(
            "input: [batch, F] f32 node feature rows (as the data loader builds them, row-normalised when \
             the recipe asks); logits: [batch, classes]",
        );
        let mut h = onnx::input_f32(g, "input", &self.sizes[..1])?;
        let n = self.layers.len();
        for (i, lin) in self.layers.iter().enumerate() {
            let base = g.prefix_of(&lin.weight, &format!("fc{}", i + 1));
            let w = g.param(&lin.weight, &format!("{base}.weight"))?;
            let mut inputs = vec![h.as_str(), w.as_str()];
            let b;
            if let Some(bias) = &lin.bias {
                b = g.param(bias, &format!("{base}.bias"))?;
                inputs.push(&b);
            }
            let y = g.op("Gemm", &inputs, &[Attr::Int("transB", 1)], &base)?;
            h = if i + 1 < n {
                onnx::relu(g, &y, &format!("{base}.relu"))?
            } else {
                y
            };
        }
        onnx::output_f32(g, &h, "logits", &self.sizes[self.sizes.len() - 1..])
    }
}
