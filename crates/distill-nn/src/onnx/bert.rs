//! ONNX emission of the BERT encoder ([`Bert`], [`BertLayer`]) and of sentence pooling.

use super::{Attr, Graph};
use crate::layers::bert::{Bert, BertLayer};
use crate::Result;

/// What [`Bert::onnx`] leaves in the graph.
#[derive(Debug, Clone)]
pub struct BertOnnx {
    /// The last layer's states, `[B, T, H]` f32.
    pub hidden: String,
    /// The attention mask as f32 `[B, T]` (1 for a real token, 0 for padding).
    pub mask: String,
}

impl Bert {
    /// The encoder over `input_ids` and `attention_mask` (both int64 `[B, T]`), in evaluation mode:
    ///
    /// - embeddings: `Gather` of the word table, plus the first `T` rows of the position table (`Slice`
    ///   up to `Shape(input_ids)[1]`), plus token-type row 0, then `LayerNormalization`;
    /// - the attention bias `(mask − 1) · 10000` as `[B, 1, 1, T]`, exactly the network's (which derives
    ///   its mask from the ids: id 0 is padding, so a runtime caller passes `input_ids != 0`);
    /// - every layer ([`BertLayer::onnx`]).
    pub fn onnx(&self, g: &mut Graph, input_ids: &str, attention_mask: &str) -> Result<BertOnnx> {
        let words = self.emb.word.onnx(g, input_ids)?;
        let shape = g.op("Shape", &[input_ids], &[], "embeddings.input_shape")?;
        let one = g.ints("embeddings.seq_axis", &[1])?;
        let t = g.op(
            "Gather",
            &[&shape, &one],
            &[Attr::Int("axis", 0)],
            "embeddings.seq_len",
        )?;
        let zero = g.ints("embeddings.zero", &[0])?;
        let table = self.emb.position.weight().clone();
        let base = g.prefix_of(&table, "embeddings.position_embeddings");
        let pos_table = g.param(&table, &format!("{base}.weight"))?;
        let pos = g.op("Slice", &[&pos_table, &zero, &t, &zero], &[], &base)?;
        let table = self.emb.token_type.weight().clone();
        let base = g.prefix_of(&table, "embeddings.token_type_embeddings");
        let type_table = g.param(&table, &format!("{base}.weight"))?;
        let type0 = g.const_i64("embeddings.token_type_id", &[0], &[])?;
        let typ = g.op(
            "Gather",
            &[&type_table, &type0],
            &[Attr::Int("axis", 0)],
            &base,
        )?;
        let x = g.op("Add", &[&words, &pos], &[], "embeddings.sum")?;
        let x = g.op("Add", &[&x, &typ], &[], "embeddings.sum")?;
        let mut x = self.emb.norm.onnx(g, &x)?;

        let mask = g.op(
            "Cast",
            &[attention_mask],
            &[Attr::Int("to", 1)],
            "attention_mask.f32",
        )?;
        let one_f = g.const_f32("one", &[1.0], &[])?;
        let big = g.const_f32("attention_bias.scale", &[10000.0], &[])?;
        let m1 = g.op("Sub", &[&mask, &one_f], &[], "attention_bias")?;
        let bias = g.op("Mul", &[&m1, &big], &[], "attention_bias")?;
        let axes = g.ints("attention_bias.axes", &[1, 2])?;
        let bias = g.op("Unsqueeze", &[&bias, &axes], &[], "attention_bias")?;
        for layer in &self.layers {
            x = layer.onnx(g, &x, &bias)?;
        }
        Ok(BertOnnx { hidden: x, mask })
    }
}

impl BertLayer {
    /// The layer over `x` `[B, T, H]` with the additive attention `bias` `[B, 1, 1, T]`, in evaluation
    /// mode: scaled dot-product attention (`MatMul`, `Mul` by `1/sqrt(head size)`, `Add` of the bias,
    /// `Softmax` over keys), the output projection, residual and `LayerNormalization`, then the
    /// feed-forward block with the exact (erf) GELU `x · (erf(x / sqrt 2) + 1) · 0.5`, residual and
    /// `LayerNormalization`.
    pub fn onnx(&self, g: &mut Graph, x: &str, bias: &str) -> Result<String> {
        let h = self.query.weight().dim(0)?;
        let heads = self.heads;
        let hd = h / heads;
        let base = g.prefix_of(self.query.weight(), "attention.self.query");
        let base = base
            .strip_suffix(".attention.self.query")
            .unwrap_or("layer")
            .to_string();
        let split_shape = g.ints(
            &format!("{base}.heads_shape"),
            &[0, 0, heads as i64, hd as i64],
        )?;
        let split = |g: &mut Graph, y: &str, perm: Vec<i64>| -> Result<String> {
            let r = g.op("Reshape", &[y, &split_shape], &[], &format!("{y}.heads"))?;
            Ok(g.op(
                "Transpose",
                &[&r],
                &[Attr::Ints("perm", perm)],
                &format!("{y}.heads"),
            )?)
        };
        let q = self.query.onnx_nd(g, x)?;
        let q = split(g, &q, vec![0, 2, 1, 3])?;
        let k = self.key.onnx_nd(g, x)?;
        let kt = split(g, &k, vec![0, 2, 3, 1])?;
        let v = self.value.onnx_nd(g, x)?;
        let v = split(g, &v, vec![0, 2, 1, 3])?;
        let scores = g.op("MatMul", &[&q, &kt], &[], &format!("{base}.scores"))?;
        let scale = g.const_f32(
            &format!("{base}.scale"),
            &[(1.0 / (hd as f64).sqrt()) as f32],
            &[],
        )?;
        let scores = g.op("Mul", &[&scores, &scale], &[], &format!("{base}.scores"))?;
        let scores = g.op("Add", &[&scores, bias], &[], &format!("{base}.scores"))?;
        let probs = g.op(
            "Softmax",
            &[&scores],
            &[Attr::Int("axis", -1)],
            &format!("{base}.probs"),
        )?;
        let ctx = g.op("MatMul", &[&probs, &v], &[], &format!("{base}.context"))?;
        let ctx = g.op(
            "Transpose",
            &[&ctx],
            &[Attr::Ints("perm", vec![0, 2, 1, 3])],
            &format!("{base}.context"),
        )?;
        let merge = g.ints(&format!("{base}.merge_shape"), &[0, 0, h as i64])?;
        let ctx = g.op("Reshape", &[&ctx, &merge], &[], &format!("{base}.context"))?;
        let a = self.attn_out.onnx_nd(g, &ctx)?;
        let a = g.op("Add", &[&a, x], &[], &format!("{base}.attention.residual"))?;
        let a = self.attn_norm.onnx(g, &a)?;
        let f = self.inter.onnx_nd(g, &a)?;
        let f = gelu_erf(g, &f)?;
        let f = self.out.onnx_nd(g, &f)?;
        let f = g.op("Add", &[&f, &a], &[], &format!("{base}.output.residual"))?;
        self.out_norm.onnx(g, &f)
    }
}

/// The exact GELU as candle computes it: `(erf(x · 1/sqrt 2) + 1) · 0.5 · x`.
fn gelu_erf(g: &mut Graph, x: &str) -> Result<String> {
    let name = format!("{x}.gelu");
    let c = g.const_f32(
        "gelu.frac_1_sqrt_2",
        &[std::f32::consts::FRAC_1_SQRT_2],
        &[],
    )?;
    let one = g.const_f32("gelu.one", &[1.0], &[])?;
    let half = g.const_f32("gelu.half", &[0.5], &[])?;
    let y = g.op("Mul", &[x, &c], &[], &name)?;
    let y = g.op("Erf", &[&y], &[], &name)?;
    let y = g.op("Add", &[&y, &one], &[], &name)?;
    let y = g.op("Mul", &[&y, &half], &[], &name)?;
    Ok(g.op("Mul", &[&y, x], &[], &name)?)
}

/// Mean of the token states over real tokens, as [`crate::layers::bert::mean_pool`]: `hidden` `[B, T, H]`
/// and `mask` f32 `[B, T]` to `[B, H]` (`Σ hidden·mask / max(Σ mask, 1e-9)`).
pub fn mean_pool(g: &mut Graph, hidden: &str, mask: &str) -> Result<String> {
    let axes2 = g.ints("pool.token_axis", &[2])?;
    let m = g.op("Unsqueeze", &[mask, &axes2], &[], "pool.mask")?;
    let masked = g.op("Mul", &[hidden, &m], &[], "pool.masked")?;
    let axes1 = g.ints("pool.seq_axis", &[1])?;
    let sum = g.op(
        "ReduceSum",
        &[&masked, &axes1],
        &[Attr::Int("keepdims", 0)],
        "pool.sum",
    )?;
    let count = g.op(
        "ReduceSum",
        &[mask, &axes1],
        &[Attr::Int("keepdims", 1)],
        "pool.count",
    )?;
    let eps = g.const_f32("pool.min_count", &[1e-9], &[])?;
    let count = g.op("Max", &[&count, &eps], &[], "pool.count")?;
    Ok(g.op("Div", &[&sum, &count], &[], "pool.mean")?)
}

/// The `[CLS]` (first) token's state: `hidden` `[B, T, H]` to `[B, H]`.
pub fn cls_pool(g: &mut Graph, hidden: &str) -> Result<String> {
    let zero = g.const_i64("pool.cls_index", &[0], &[])?;
    Ok(g.op(
        "Gather",
        &[hidden, &zero],
        &[Attr::Int("axis", 1)],
        "pool.cls",
    )?)
}
