//! ONNX emission of the layers: each layer writes its eval-mode forward pass (batch norm with its running
//! statistics, no dropout) into a [`Graph`] and returns the name of its output value.
//!
//! Initializers take the layer's parameter names when the graph was told them ([`Graph::name_params`]
//! with a network's varmap, as `distill_core::network::export_onnx` does), so `layer1.0.conv1.weight` in
//! the `.onnx` file is the checkpoint's `layer1.0.conv1.weight`; node names use the same prefixes.
//!
//! | layer | ONNX |
//! |---|---|
//! | [`Linear`] | `Gemm` (`transB = 1`) over `[B, in]`; `MatMul` + `Add` over any rank ([`Linear::onnx_nd`]) |
//! | [`Mlp`] | `Gemm` + `Relu` per hidden layer, `Gemm` |
//! | [`Conv1d`], [`Conv2d`] | `Conv` |
//! | [`BatchNorm2d`] | `BatchNormalization` (running statistics) [+ `Relu`] |
//! | [`ConvBn`] | `Conv`, `BatchNormalization` [+ `Relu`] |
//! | [`DepthwiseSeparable`] | `Conv` (`group = C`), BN, `Relu`, `Conv` 1x1, BN, `Relu` |
//! | [`BasicBlock`], [`Bottleneck`], [`ResNetTrunk`] | the above, `Add`, `Relu` |
//! | [`LayerNorm`] | `LayerNormalization` (opset 17) |
//! | [`Embedding`] | `Gather` |
//! | [`bert::Bert`](crate::layers::bert::Bert) | see [`BertOnnx`] |
//!
//! ```
//! use candle_core::Device;
//! use candle_nn::VarMap;
//! use distill_nn::{init::seeded_var_builder, layers::{Mlp, MlpConfig}, onnx};
//! # fn main() -> distill_nn::Result<()> {
//! let varmap = VarMap::new();
//! let mlp = Mlp::new(&MlpConfig::new(4, &[8], 3), seeded_var_builder(&varmap, 0, &Device::Cpu))?;
//! let mut g = onnx::Graph::new("mlp");
//! g.name_params(varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())));
//! let x = onnx::input_f32(&mut g, "input", &[4])?;
//! let y = mlp.onnx(&mut g, &x)?;
//! onnx::output_f32(&mut g, &y, "logits", &[3])?;
//! let bytes = onnx::encode_network(&g)?;
//! assert!(!bytes.is_empty());
//! # Ok(()) }
//! ```

mod bert;

pub use bert::{cls_pool, mean_pool, BertOnnx};
pub use distill_onnx::{Attr, Dim, Elem, Graph, IR_VERSION, OPSET};

use candle_core::Tensor;

use crate::layers::{
    BasicBlock, BatchNorm2d, Bottleneck, Conv1d, Conv2d, ConvBn, DepthwiseSeparable, Embedding,
    LayerNorm, Linear, Mlp, ResNetBlock, ResNetTrunk,
};
use crate::{Error, Result};

impl From<distill_onnx::Error> for Error {
    fn from(e: distill_onnx::Error) -> Self {
        match e {
            distill_onnx::Error::Candle(e) => Error::Candle(e),
            distill_onnx::Error::Name(m) => Error::Msg(format!("ONNX export: {m}")),
        }
    }
}

/// Declares the f32 graph input `name` of shape `[batch, dims..]` (a symbolic batch).
pub fn input_f32(g: &mut Graph, name: &str, dims: &[usize]) -> Result<String> {
    Ok(g.input(name, Elem::F32, &batch_dims(dims))?)
}

/// Declares `value` the f32 graph output `name` of shape `[batch, dims..]`.
pub fn output_f32(g: &mut Graph, value: &str, name: &str, dims: &[usize]) -> Result<()> {
    Ok(g.output(value, name, Elem::F32, &batch_dims(dims))?)
}

fn batch_dims(dims: &[usize]) -> Vec<Dim> {
    std::iter::once(Dim::batch())
        .chain(dims.iter().map(|&d| Dim::Fixed(d)))
        .collect()
}

/// The model bytes of a network's graph, after checking the contract of `export_onnx`: the first output
/// is `logits`.
pub fn encode_network(g: &Graph) -> Result<Vec<u8>> {
    let model = g.to_model()?;
    let first = model
        .graph
        .as_ref()
        .and_then(|gr| gr.output.first())
        .map(|o| o.name.as_str());
    if first != Some("logits") {
        return Err(Error::Msg(format!(
            "ONNX export: the first output must be `logits`, got {first:?}"
        )));
    }
    Ok(g.encode()?)
}

/// `Relu(x)`.
pub fn relu(g: &mut Graph, x: &str, name: &str) -> Result<String> {
    Ok(g.op("Relu", &[x], &[], name)?)
}

/// `MaxPool` with a `k`x`k` window and stride `k`, no padding (rows and columns that do not fill a window
/// are dropped, as [`crate::ops::max_pool2d`]).
pub fn max_pool2d(g: &mut Graph, x: &str, k: usize, name: &str) -> Result<String> {
    let k = k as i64;
    Ok(g.op(
        "MaxPool",
        &[x],
        &[
            Attr::Ints("kernel_shape", vec![k, k]),
            Attr::Ints("strides", vec![k, k]),
        ],
        name,
    )?)
}

/// Global average pooling `[B, C, H, W] -> [B, C]` (`GlobalAveragePool`, `Flatten`).
pub fn global_avg_pool(g: &mut Graph, x: &str, name: &str) -> Result<String> {
    let p = g.op("GlobalAveragePool", &[x], &[], name)?;
    Ok(g.op("Flatten", &[&p], &[Attr::Int("axis", 1)], name)?)
}

/// `Flatten` from dimension 1: `[B, ..] -> [B, prod(..)]`.
pub fn flatten(g: &mut Graph, x: &str, name: &str) -> Result<String> {
    Ok(g.op("Flatten", &[x], &[Attr::Int("axis", 1)], name)?)
}

/// A `Conv` node with `weight`, optional `bias`, square `stride` / `padding` over `spatial` dimensions
/// (1 or 2) and `group`.
#[allow(clippy::too_many_arguments)]
fn conv(
    g: &mut Graph,
    x: &str,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spatial: usize,
    stride: usize,
    padding: usize,
    group: usize,
) -> Result<String> {
    let base = g.prefix_of(weight, "conv");
    let w = g.param(weight, &format!("{base}.weight"))?;
    let b = match bias {
        Some(b) => Some(g.param(b, &format!("{base}.bias"))?),
        None => None,
    };
    let k: Vec<i64> = weight.dims()[2..].iter().map(|&d| d as i64).collect();
    let mut inputs = vec![x, w.as_str()];
    if let Some(b) = &b {
        inputs.push(b);
    }
    Ok(g.op(
        "Conv",
        &inputs,
        &[
            Attr::Ints("kernel_shape", k),
            Attr::Ints("strides", vec![stride as i64; spatial]),
            Attr::Ints("pads", vec![padding as i64; 2 * spatial]),
            Attr::Int("group", group as i64),
        ],
        &base,
    )?)
}

impl Linear {
    /// `x·wᵀ + b` over `x` `[B, in]`: one `Gemm` (`transB = 1`).
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let base = g.prefix_of(self.weight(), "linear");
        let w = g.param(self.weight(), &format!("{base}.weight"))?;
        let mut inputs = vec![x, w.as_str()];
        let b;
        if let Some(bias) = self.bias() {
            b = g.param(bias, &format!("{base}.bias"))?;
            inputs.push(&b);
        }
        Ok(g.op("Gemm", &inputs, &[Attr::Int("transB", 1)], &base)?)
    }

    /// `x·wᵀ + b` over `x` `[.., in]` of any rank: `MatMul` with the transposed weight (a `Transpose` of
    /// the stored `[out, in]` weight, which runtimes fold), then `Add` of the bias.
    pub fn onnx_nd(&self, g: &mut Graph, x: &str) -> Result<String> {
        let base = g.prefix_of(self.weight(), "linear");
        let w = g.param(self.weight(), &format!("{base}.weight"))?;
        let wt = g.op(
            "Transpose",
            &[&w],
            &[Attr::Ints("perm", vec![1, 0])],
            &format!("{base}.weight_t"),
        )?;
        let y = g.op("MatMul", &[x, &wt], &[], &base)?;
        match self.bias() {
            Some(bias) => {
                let b = g.param(bias, &format!("{base}.bias"))?;
                Ok(g.op("Add", &[&y, &b], &[], &base)?)
            }
            None => Ok(y),
        }
    }
}

impl Mlp {
    /// The MLP over `x` `[B, input]` in evaluation mode (no dropout): `Gemm` + `Relu` per hidden layer, then
    /// the output `Gemm`.
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let (out, hidden) = self.layers.split_last().expect("at least two layers");
        let mut h = x.to_string();
        for layer in hidden {
            let y = layer.onnx(g, &h)?;
            h = relu(g, &y, &format!("{y}.relu"))?;
        }
        out.onnx(g, &h)
    }
}

impl Conv2d {
    /// The convolution of `x` `[B, C, H, W]`: one `Conv`.
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let c = self.inner().config();
        let w = self.inner().weight().clone();
        let b = self.inner().bias().cloned();
        conv(g, x, &w, b.as_ref(), 2, c.stride, c.padding, c.groups)
    }
}

impl Conv1d {
    /// The convolution of `x` `[B, C, L]`: one `Conv` with a 1-D kernel.
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let (w, b) = (self.weight.clone(), self.bias.clone());
        conv(
            g,
            x,
            &w,
            b.as_ref(),
            1,
            self.cfg.stride,
            self.cfg.padding,
            1,
        )
    }
}

impl BatchNorm2d {
    /// Evaluation-mode batch norm of `x` (running statistics): `BatchNormalization`, then `Relu` when
    /// `relu`.
    pub fn onnx(&self, g: &mut Graph, x: &str, relu_after: bool) -> Result<String> {
        let bn = self.inner();
        let mean = bn.running_mean().clone();
        let var = bn.running_var().clone();
        let base = g.prefix_of(&mean, "bn");
        let c = mean.elem_count();
        let (scale, shift) = match bn.weight_and_bias() {
            Some((w, b)) => (
                g.param(w, &format!("{base}.weight"))?,
                g.param(b, &format!("{base}.bias"))?,
            ),
            None => (
                g.const_f32(&format!("{base}.weight"), &vec![1.0; c], &[c])?,
                g.const_f32(&format!("{base}.bias"), &vec![0.0; c], &[c])?,
            ),
        };
        let m = g.param(&mean, &format!("{base}.running_mean"))?;
        let v = g.param(&var, &format!("{base}.running_var"))?;
        let y = g.op(
            "BatchNormalization",
            &[x, &scale, &shift, &m, &v],
            &[Attr::Float("epsilon", bn.eps() as f32)],
            &base,
        )?;
        if relu_after {
            relu(g, &y, &format!("{base}.relu"))
        } else {
            Ok(y)
        }
    }
}

impl ConvBn {
    /// `bn(conv(x))` with running statistics, then `Relu` when `relu`.
    pub fn onnx(&self, g: &mut Graph, x: &str, relu_after: bool) -> Result<String> {
        let y = self.conv.onnx(g, x)?;
        self.bn.onnx(g, &y, relu_after)
    }
}

impl DepthwiseSeparable {
    /// The block on `x` `[B, C, H, W]`: depthwise `Conv` (`group = C`) + BN + `Relu`, pointwise `Conv` +
    /// BN + `Relu`.
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let c = self.cfg.in_channels;
        let dw = self.dw.clone();
        let y = conv(g, x, &dw, None, 2, self.cfg.stride, self.cfg.padding, c)?;
        let y = self.bn_dw.onnx(g, &y, true)?;
        let y = self.pw.onnx(g, &y)?;
        self.bn_pw.onnx(g, &y, true)
    }
}

impl BasicBlock {
    /// The block on `x`: `conv-bn-relu-conv-bn`, plus the identity or the downsample, then `Relu`.
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let y = self.conv1.onnx(g, x)?;
        let y = self.bn1.onnx(g, &y, true)?;
        let y = self.conv2.onnx(g, &y)?;
        let y = self.bn2.onnx(g, &y, false)?;
        residual_relu(g, &y, x, &self.downsample.0)
    }
}

impl Bottleneck {
    /// The block on `x`: `conv1x1-bn-relu-conv3x3-bn-relu-conv1x1-bn`, plus the identity or the downsample,
    /// then `Relu`.
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let y = self.conv1.onnx(g, x)?;
        let y = self.bn1.onnx(g, &y, true)?;
        let y = self.conv2.onnx(g, &y)?;
        let y = self.bn2.onnx(g, &y, true)?;
        let y = self.conv3.onnx(g, &y)?;
        let y = self.bn3.onnx(g, &y, false)?;
        residual_relu(g, &y, x, &self.downsample.0)
    }
}

/// `relu(y + shortcut(x))`, the shortcut a 1x1 conv + bn or the identity.
fn residual_relu(
    g: &mut Graph,
    y: &str,
    x: &str,
    downsample: &Option<(Conv2d, BatchNorm2d)>,
) -> Result<String> {
    let r = match downsample {
        Some((c, b)) => {
            let r = c.onnx(g, x)?;
            b.onnx(g, &r, false)?
        }
        None => x.to_string(),
    };
    let base = y.rsplit_once('.').map_or(y, |(p, _)| p).to_string();
    let s = g.op("Add", &[y, &r], &[], &format!("{base}.add"))?;
    relu(g, &s, &format!("{base}.out"))
}

impl ResNetTrunk {
    /// The trunk on `x`: returns the stem's output and each stage's output map, as
    /// [`ResNetTrunk::forward`].
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<(String, Vec<String>)> {
        let y = self.conv1.onnx(g, x)?;
        let stem = self.bn1.onnx(g, &y, true)?;
        let mut x = stem.clone();
        let mut maps = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                x = match block {
                    ResNetBlock::Basic(b) => b.onnx(g, &x)?,
                    ResNetBlock::Bottleneck(b) => b.onnx(g, &x)?,
                };
            }
            maps.push(x.clone());
        }
        Ok((stem, maps))
    }
}

impl LayerNorm {
    /// LayerNorm over the last dimension: one `LayerNormalization` (`axis = -1`).
    pub fn onnx(&self, g: &mut Graph, x: &str) -> Result<String> {
        let base = g.prefix_of(&self.weight, "layer_norm");
        let w = g.param(&self.weight, &format!("{base}.weight"))?;
        let b = g.param(&self.bias, &format!("{base}.bias"))?;
        Ok(g.op(
            "LayerNormalization",
            &[x, &w, &b],
            &[
                Attr::Int("axis", -1),
                Attr::Float("epsilon", self.eps as f32),
            ],
            &base,
        )?)
    }
}

impl Embedding {
    /// The rows `ids` (an int64 tensor of any shape) as `[.., dim]`: one `Gather` on the table.
    pub fn onnx(&self, g: &mut Graph, ids: &str) -> Result<String> {
        let base = g.prefix_of(self.weight(), "embedding");
        let w = g.param(self.weight(), &format!("{base}.weight"))?;
        Ok(g.op("Gather", &[&w, ids], &[Attr::Int("axis", 0)], &base)?)
    }
}
