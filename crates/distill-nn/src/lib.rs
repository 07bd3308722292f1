//! # distill-nn
//!
//! The layer library of **distill**, on candle: the pieces networks are made of, independent of any
//! distillation logic, so that a plugin (or any candle program) composes its teachers and students from them.
//!
//! * [`ops`]: fused CPU operations with their own backward pass (linear, conv1d/conv2d with ReLU and pooling,
//!   depthwise conv, max-pool, batch/layer norm, softmax, cross-entropy and the KD divergence), each with a
//!   composed-candle fallback on other devices and dtypes, and [`ops::backward`].
//! * [`layers`]: layers built candle style, `Layer::new(cfg, vb)`, whose parameters carry PyTorch's names
//!   (torchvision / Hugging Face keys), so a network composed from them loads a PyTorch `state_dict` by name.
//! * [`init::seeded_var_builder`]: parameters initialised from a seed and their name (candle's CPU generator
//!   cannot be seeded), so the same seed gives the same weights whatever order layers are built in.
//! * [`state_dict`]: PyTorch state dicts read from safetensors and `.pt`/`.pth`/`.bin` files, and their names
//!   matched onto a model's (wrapper prefixes, `nn.Sequential` numbering, missing/unexpected/mismatched lists).
//! * [`optim`]: SGD and AdamW with fused in-place updates, schedules and gradient clipping.
//! * [`Rng`], [`Mode`] and the [`Error`] type shared with distill-core.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_nn::VarMap;
//! use distill_nn::{init::seeded_var_builder, layers::{Mlp, MlpConfig}, Mode};
//! # fn main() -> distill_nn::Result<()> {
//! let varmap = VarMap::new();
//! let vb = seeded_var_builder(&varmap, 0, &Device::Cpu);
//! let mlp = Mlp::new(&MlpConfig::new(784, &[100], 10), vb)?;
//! let x = Tensor::zeros((2, 784), candle_core::DType::F32, &Device::Cpu)?;
//! assert_eq!(mlp.forward(&x, Mode::Eval)?.dims(), [2, 10]);
//! // PyTorch's names: nn.Sequential-free `fc1`, `fc2`, ...
//! assert!(varmap.data().lock().unwrap().contains_key("fc2.weight"));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
pub mod init;
pub mod layers;
pub mod loss;
pub mod onnx;
pub mod ops;
pub mod optim;
mod rng;
pub mod state_dict;

pub use error::{Error, Result};
pub use rng::Rng;

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inference: no dropout, batch-norm uses running statistics.
    Eval,
    /// Training; `seed` drives dropout masks for this step, so a replayed step is identical.
    Train {
        /// Seed for this step's randomness.
        seed: u64,
    },
}

impl Mode {
    /// Whether this is a training pass.
    pub fn is_train(self) -> bool {
        matches!(self, Mode::Train { .. })
    }
}

/// Whether a variable name is a non-trainable buffer (batch-norm running statistics), by PyTorch's names.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}
