//! ONNX export of the text networks (BERT encoder, pooling, head).
//!
//! Inputs: `input_ids` and `attention_mask`, int64 `[batch, tokens]` (WordPiece ids from the model's
//! `tokenizer.json`, as `crate::data` tokenises: `[CLS] … [SEP]`, then `[PAD]` = 0; the mask is 1 for a real
//! token and 0 for padding — the network itself derives it as `input_ids != 0`, so pass exactly that).
//! Token types are all 0. Output `logits`: the classifier's `[batch, classes]`, or for an embedding model
//! the pooled sentence embedding `[batch, hidden]` (mean over real tokens, `[CLS]`, or `[CLS]` through
//! `pooler.dense` and tanh); a sentence pair is
//! two rows. The graph is the eval-mode forward pass (no dropout).

use distill_core::Result;
use distill_nn::onnx::{self, Dim, Elem, Graph};

use super::{Head, Pooling, TextNet};

impl TextNet {
    /// The encoder, pooling and head.
    pub(super) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        g.set_doc(
            "input_ids: [batch, tokens] int64 WordPiece ids ([CLS] ... [SEP], [PAD] = 0); attention_mask: \
             [batch, tokens] int64, 1 for real tokens and 0 for padding (input_ids != 0); logits: \
             [batch, classes] for a classifier, the pooled sentence embedding [batch, hidden] otherwise",
        );
        let dims = [Dim::batch(), Dim::Sym("tokens".into())];
        let ids = g.input("input_ids", Elem::I64, &dims)?;
        let mask = g.input("attention_mask", Elem::I64, &dims)?;
        let enc = self.bert.onnx(g, &ids, &mask)?;
        let pooled = match &self.pooling {
            Pooling::Mean => onnx::mean_pool(g, &enc.hidden, &enc.mask)?,
            Pooling::Cls => onnx::cls_pool(g, &enc.hidden)?,
            Pooling::Pooler(d) => {
                let cls = onnx::cls_pool(g, &enc.hidden)?;
                let dense = d.onnx(g, &cls)?;
                g.op("Tanh", &[dense.as_str()], &[], "pooler.tanh")?
            }
        };
        let (out, width) = match (&self.head, self.kind) {
            (Some(h), Head::Classify(c)) => (h.onnx(g, &pooled)?, c),
            _ => (pooled, self.bert.config().hidden_size),
        };
        onnx::output_f32(g, &out, "logits", &[width])
    }
}
