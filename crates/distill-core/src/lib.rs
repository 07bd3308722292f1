//! # distill-core
//!
//! The core of **distill**, a knowledge-distillation framework on candle: a large *teacher* network's
//! knowledge is moved into a small *student* by training the student to match the teacher's softened outputs
//! (logits divided by a temperature T, the loss scaled by T²) and, optionally, its intermediate features.
//!
//! This crate holds everything that does not depend on a domain: the [`Network`] and [`Task`] traits, the
//! [`Outputs`]/[`Feature`] types, the loss library ([`losses`]), the one
//! training loop that trains teacher, scratch student and distilled student alike ([`train`]), checkpoints,
//! recipes, reports and the type-erased [`Plugin`] trait that domain plugins implement. Layers, fused ops,
//! optimisers and the [`Error`] type live in [`distill_nn`], the layer library.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use distill_core::losses::kd_loss;
//! # fn main() -> distill_core::Result<()> {
//! let student = Tensor::new(&[[1.0f32, 2.0, 0.5]], &Device::Cpu)?;
//! let teacher = Tensor::new(&[[1.0f32, 2.0, 0.5]], &Device::Cpu)?;
//! // identical logits: the KL divergence is zero at any temperature
//! let loss = kd_loss(&student, &teacher, 4.0)?.to_scalar::<f32>()?;
//! assert!(loss.abs() < 1e-6);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod abi;
pub mod checkpoint;
pub mod deploy;
pub mod examples;
pub mod losses;
pub mod network;
mod outputs;
mod phase;

pub use distill_nn::{bail, is_buffer, Error, Mode, Result, Rng};
pub use network::{Network, Teacher};
pub use outputs::{Batch, Feature, FeatureKind, Outputs};
pub use phase::Phase;
mod host;
pub mod pipeline;
pub mod plugin;
pub mod recipe;
pub mod report;
pub mod run_record;
pub mod runtime;
pub mod stats;
pub mod task;
pub mod teacher_cache;
pub mod train;

pub use examples::{Examples, Holdout, Source, SplitTask};
pub use host::Plugin;
pub use plugin::{BuildContext, Domain, Manifest, RunContext};
pub use task::{Evaluation, Split, Task, TaskInfo};
