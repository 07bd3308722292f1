//! Networks (teachers and students), their parameters and their checkpoints.

use std::{collections::BTreeMap, path::Path};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::{is_buffer, Error, Mode, Outputs, Result};
use distill_nn::state_dict::{self, weights_file};
pub use distill_nn::state_dict::{ImportReport, ImportRules, NameMatch};

/// A network: a forward pass that returns logits and named features, over parameters held in a `VarMap`.
///
/// Parameter names follow PyTorch's state-dict naming (`layers.0.weight`, `bn1.running_mean`, ...).
pub trait Network: Send + Sync {
    /// Forward pass over `input`.
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs>;
    /// The parameters (and buffers such as batch-norm running statistics).
    fn varmap(&self) -> &VarMap;
    /// Forward FLOPs per sample (multiply-adds count 2), an estimate for reports.
    fn flops(&self) -> u64 {
        0
    }
    /// One line describing the architecture, e.g. `mlp 784-1200-1200-10`.
    fn describe(&self) -> String;
    /// Writes the eval-mode forward pass into `g` (inputs, nodes, outputs; see [`export_onnx`] for the
    /// contract). By default: an error saying this network has no ONNX export.
    fn to_onnx(&self, _g: &mut distill_nn::onnx::Graph) -> Result<()> {
        Err(Error::config(
            "export",
            format!("`{}` has no ONNX export", self.describe()),
        ))
    }

    /// How a foreign (PyTorch) state dict maps onto this network beyond exact names, for
    /// [`import_network`]: `nn.Sequential` numbering, parts left out by configuration. None by default.
    fn import_rules(&self) -> ImportRules {
        ImportRules::default()
    }
}

/// Number of scalar parameters of a network (trainable weights and buffers).
pub fn num_params(net: &dyn Network) -> usize {
    let data = net.varmap().data().lock().expect("varmap lock");
    data.values().map(|v| v.as_tensor().elem_count()).sum()
}

/// The device a network's parameters live on (CPU for a network without parameters).
pub fn device_of(net: &dyn Network) -> Device {
    net.varmap()
        .all_vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu)
}

/// Number of trainable parameters (excludes batch-norm running statistics).
pub fn num_trainable_params(net: &dyn Network) -> usize {
    let data = net.varmap().data().lock().expect("varmap lock");
    data.iter()
        .filter(|(k, _)| !is_buffer(k))
        .map(|(_, v)| v.as_tensor().elem_count())
        .sum()
}

/// Saves a network's parameters as safetensors, atomically (temp file, fsync, rename).
pub fn save_network(net: &dyn Network, path: &Path) -> Result<u64> {
    let tensors = varmap_tensors(net.varmap())?;
    crate::checkpoint::write_safetensors_atomic(&tensors, path)
}

/// Loads parameters saved by [`save_network`] into `net`, checking that names and shapes match.
pub fn load_network(net: &dyn Network, path: &Path, device: &Device) -> Result<()> {
    let tensors = crate::checkpoint::read_safetensors(path, device)?;
    load_into_varmap(net.varmap(), &tensors, path)
}

/// All variables of a varmap by name (sorted), as plain tensors.
pub fn varmap_tensors(varmap: &VarMap) -> Result<std::collections::BTreeMap<String, Tensor>> {
    let data = varmap.data().lock().expect("varmap lock");
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// Sets every variable of `varmap` from `tensors`; every variable must be present with the same shape.
pub fn load_into_varmap(
    varmap: &VarMap,
    tensors: &std::collections::BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("has no tensor `{name}` (the model needs it; is this checkpoint for another model?)"),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
    }
    Ok(())
}

/// Reads a pretrained checkpoint (on the CPU, floats as `f32`): a safetensors file (distill's content checksum
/// checked when it carries one), a PyTorch `.pt` / `.pth` / `.bin` file, or a Hugging Face model folder.
pub fn read_checkpoint(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let file = weights_file(path)?;
    if file.extension().is_some_and(|e| e == "safetensors") {
        state_dict::to_f32(crate::checkpoint::read_safetensors(&file, &Device::Cpu)?)
    } else {
        state_dict::read_state_dict(&file)
    }
}

/// Loads a pretrained checkpoint ([`read_checkpoint`]) into `net` like PyTorch's `load_state_dict`, strictly
/// or not, with [`Network::import_rules`]: see [`state_dict::load_state_dict`].
pub fn import_network(net: &dyn Network, path: &Path, strict: bool) -> Result<ImportReport> {
    let tensors = read_checkpoint(path)?;
    let (rules, what) = (net.import_rules(), net.describe());
    state_dict::load_state_dict(
        net.varmap(),
        &tensors,
        &rules,
        strict,
        &weights_file(path)?,
        &what,
    )
}

/// A frozen network: evaluated in [`Mode::Eval`], its outputs detached from the graph.
pub struct Teacher {
    net: Box<dyn Network>,
}

impl Teacher {
    /// Freezes `net`.
    pub fn new(net: Box<dyn Network>) -> Self {
        Self { net }
    }
    /// Detached eval-mode outputs.
    pub fn forward(&self, input: &Tensor) -> Result<Outputs> {
        Ok(self.net.forward(input, Mode::Eval)?.detach())
    }
    /// The wrapped network.
    pub fn network(&self) -> &dyn Network {
        self.net.as_ref()
    }
}

/// Writes `net` as an ONNX model (opset ≥ 13) to `path`, atomically.
///
/// Inputs are named `input` (f32, the task's input shape with a dynamic batch) or, for BERT-family
/// networks, `input_ids` and `attention_mask` (i64 `[batch, tokens]`); the first output is `logits`,
/// further outputs carry the network's named maps a post-processor needs (e.g. CenterNet's `size` and
/// `offset`). Initializers carry the parameter names; the model's doc string states the preprocessing.
pub fn export_onnx(net: &dyn Network, path: &Path) -> Result<()> {
    let mut g = distill_nn::onnx::Graph::new(&net.describe());
    g.name_params(varmap_tensors(net.varmap())?);
    net.to_onnx(&mut g)?;
    let bytes = distill_nn::onnx::encode_network(&g)?;
    crate::checkpoint::write_atomic(path, &bytes)
}
