//! Networks (teachers and students), their parameters and their checkpoints.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::{is_buffer, Error, Mode, Outputs, Result};
pub use distill_nn::state_dict::{ImportRules, NameMatch};

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

/// Reads a pretrained checkpoint: a safetensors file (distill's own content checksum checked when the file
/// carries one), a PyTorch `.pt` / `.pth` / `.bin` file, or a folder holding `model.safetensors` or
/// `pytorch_model.bin` (a Hugging Face model folder). Floating-point tensors come back as `f32`.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let file = checkpoint_file(path)?;
    let tensors = if file.extension().is_some_and(|e| e == "safetensors") {
        distill_nn::state_dict::to_f32(crate::checkpoint::read_safetensors(&file, &Device::Cpu)?)?
    } else {
        distill_nn::state_dict::read_state_dict(&file)?
    };
    if device.is_cpu() {
        return Ok(tensors);
    }
    tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?)))
        .collect()
}

/// The weights file a pretrained path names: the file itself, or in a folder `model.safetensors`, else
/// `pytorch_model.bin`.
pub fn checkpoint_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|f| path.join(f))
        .find(|f| f.is_file())
        .ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "is a folder without model.safetensors or pytorch_model.bin".into(),
        })
}

/// What [`import_network`] did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The file read.
    pub path: PathBuf,
    /// How its keys met the network's names; `pairs` were loaded.
    pub names: NameMatch,
}

impl ImportReport {
    /// For a non-strict load that left something out: one line saying what.
    pub fn warning(&self) -> Option<String> {
        (!self.names.is_complete()).then(|| {
            format!(
                "{}: loaded {} tensors; {}",
                self.path.display(),
                self.names.pairs.len(),
                self.names.describe()
            )
        })
    }
}

/// Loads a pretrained checkpoint into `net` like PyTorch's `load_state_dict`, with the name rules of
/// [`distill_nn::state_dict`] (exact names, wrapper prefixes stripped, PyTorch-only buffers ignored, the
/// network's [`Network::import_rules`]).
///
/// `strict`: every parameter must be found with its shape and no tensor may be left over, else one error
/// lists every missing key, unexpected key and shape mismatch, and nothing is loaded. Not strict: the
/// tensors that fit are loaded, the rest of the network keeps its initial values, and the report's
/// [`ImportReport::warning`] lists what did not fit.
pub fn import_network(
    net: &dyn Network,
    path: &Path,
    strict: bool,
    device: &Device,
) -> Result<ImportReport> {
    let tensors = read_checkpoint(path, device)?;
    let file = checkpoint_file(path)?;
    let expected: BTreeMap<String, Vec<usize>> = {
        let data = net.varmap().data().lock().expect("varmap lock");
        data.iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect()
    };
    let found = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let names = distill_nn::state_dict::match_names(&expected, &found, &net.import_rules());
    if strict && !names.is_complete() {
        return Err(Error::Checkpoint {
            path: file,
            msg: format!(
                "does not fit {}: {} (strict loading, as PyTorch's load_state_dict; `strict = false` in the \
                 recipe's teacher/student section loads the tensors that fit and warns about the rest)",
                net.describe(),
                names.describe()
            ),
        });
    }
    let data = net.varmap().data().lock().expect("varmap lock");
    for (name, key) in &names.pairs {
        let var = &data[name];
        var.set(&tensors[key].to_dtype(DType::F32)?.to_device(var.device())?)?;
    }
    Ok(ImportReport { path: file, names })
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
/// `offset`).
pub fn export_onnx(net: &dyn Network, path: &Path) -> Result<()> {
    let _ = path;
    Err(Error::config(
        "export",
        format!("ONNX export of `{}` is not supported yet", net.describe()),
    ))
}
