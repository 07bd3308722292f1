//! ONNX export of the image classifiers: `mlp`, `lenet5`, the CIFAR ResNets and the WideResNets.
//!
//! Each graph takes `input`, the normalised image `[batch, C, H, W]` f32 exactly as the task's batches give
//! it (`(x / 255 − mean[c]) / std[c]`, see `crate::data::Normalize`: normalisation is preprocessing, not
//! part of the network), and returns `logits` `[batch, classes]`. The graph is the eval-mode forward pass:
//! batch norm with its running statistics, no dropout. (An `mlp` built without an image shape takes the
//! flattened `[batch, D]` rows.)
//!
//! These are `impl` blocks of the model types, kept in their own file; each model's `Network::to_onnx` calls
//! its `emit_onnx`.

use distill_core::Result;
use distill_nn::onnx::{self, Graph};

use super::lenet::LeNet5;
use super::mlp::Mlp;
use super::resnet::{ResNet, WideResNet};

/// Declares `input` and documents it.
fn image_input(g: &mut Graph, shape: [usize; 3]) -> Result<String> {
    g.set_doc(
        "input: [batch, C, H, W] f32, the image normalised per channel as in training \
         ((pixel / 255 - mean[c]) / std[c]); logits: [batch, classes]",
    );
    onnx::input_f32(g, "input", &shape)
}

impl Mlp {
    /// The MLP's graph: `Flatten` of the image (when built for one), then the layers.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        let x = match self.image {
            Some(shape) => {
                let x = image_input(g, shape)?;
                onnx::flatten(g, &x, "flatten")?
            }
            None => {
                g.set_doc("input: [batch, D] f32 rows; logits: [batch, classes]");
                onnx::input_f32(g, "input", &self.sizes[..1])?
            }
        };
        let y = self.mlp.onnx(g, &x)?;
        onnx::output_f32(g, &y, "logits", &self.sizes[self.sizes.len() - 1..])
    }
}

impl LeNet5 {
    /// conv-relu-pool twice, flatten, fc-relu, fc.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        let x = image_input(g, self.input)?;
        let y = self.conv1.onnx(g, &x)?;
        let y = onnx::relu(g, &y, "conv1.relu")?;
        let y = onnx::max_pool2d(g, &y, 2, "conv1.pool")?;
        let y = self.conv2.onnx(g, &y)?;
        let y = onnx::relu(g, &y, "conv2.relu")?;
        let y = onnx::max_pool2d(g, &y, 2, "conv2.pool")?;
        let y = onnx::flatten(g, &y, "flatten")?;
        let y = self.fc1.onnx(g, &y)?;
        let y = onnx::relu(g, &y, "fc1.relu")?;
        let y = self.fc2.onnx(g, &y)?;
        onnx::output_f32(g, &y, "logits", &[self.num_classes])
    }
}

impl ResNet {
    /// conv1-bn1-relu, the stages of BasicBlocks, global average pooling, fc.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        let x = image_input(g, self.input)?;
        let y = self.conv1.onnx(g, &x)?;
        let mut y = self.bn1.onnx(g, &y, true)?;
        for block in self.stages.iter().flatten() {
            y = block.onnx(g, &y)?;
        }
        let y = onnx::global_avg_pool(g, &y, "pool")?;
        let y = self.fc.onnx(g, &y)?;
        onnx::output_f32(g, &y, "logits", &[self.num_classes])
    }
}

impl WideResNet {
    /// conv1, the groups of pre-activation blocks, bn1-relu, global average pooling, fc.
    pub(crate) fn emit_onnx(&self, g: &mut Graph) -> Result<()> {
        let x = image_input(g, self.input)?;
        let mut y = self.conv1.onnx(g, &x)?;
        for block in self.groups.iter().flatten() {
            let pre = block.bn1.onnx(g, &y, true)?;
            let out = block.conv1.onnx(g, &pre)?;
            let out = block.bn2.onnx(g, &out, true)?;
            let out = block.conv2.onnx(g, &out)?;
            let residual = match &block.shortcut {
                Some(c) => c.onnx(g, &pre)?,
                None => y.clone(),
            };
            y = g.op("Add", &[&out, &residual], &[], &format!("{out}.add"))?;
        }
        let y = self.bn1.onnx(g, &y, true)?;
        let y = onnx::global_avg_pool(g, &y, "pool")?;
        let y = self.fc.onnx(g, &y)?;
        onnx::output_f32(g, &y, "logits", &[self.num_classes])
    }
}
