//! # distill-onnx
//!
//! Writes ONNX models: the `onnx.proto` messages an exported network needs ([`proto`], declared with
//! prost's derive and the official field numbers, so no protoc or build script is involved) and a small
//! [`Graph`] builder (unique value names, initializers from candle tensors named after their parameters,
//! inputs and outputs with symbolic dimensions, checks that every node reads a defined value).
//!
//! Models are written with IR version [`IR_VERSION`] and the default operator set at [`OPSET`]. Layers
//! emit themselves into a graph in `distill_nn::onnx`; `distill_core::network::export_onnx` writes a
//! network's graph to a file.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use distill_onnx::{Dim, Elem, Graph};
//! # fn main() -> distill_onnx::Result<()> {
//! let mut g = Graph::new("relu");
//! let x = g.input("input", Elem::F32, &[Dim::batch(), 4.into()])?;
//! let y = g.op("Relu", &[&x], &[], "relu")?;
//! g.output(&y, "logits", Elem::F32, &[Dim::batch(), 4.into()])?;
//! let model = g.to_model()?;
//! assert_eq!(model.graph.unwrap().node.len(), 2); // Relu, then Identity to `logits`
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod graph;
pub mod proto;

pub use graph::{Attr, Dim, Elem, Graph, IR_VERSION, OPSET};

/// What can go wrong while building a graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor could not be read (e.g. an unsupported dtype).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A value name that is undefined, taken, or missing.
    #[error("{0}")]
    Name(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
