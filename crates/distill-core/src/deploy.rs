//! What a trained network needs to leave distill: `distill export` writes it with a card, `distill predict`
//! runs it on files. The entry points are [`crate::Plugin::export`] and [`crate::Plugin::predict`], whose
//! defaults are built on three [`crate::Domain`] hooks: `export_files`, `predict_input` and
//! `predict_output`. Between a plugin and the binary only plain data crosses: [`Array`]s to and from the
//! binary's ONNX runtime ([`ModelRunner`]), and [`Prediction`]s.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{recipe::Recipe, Error, Result, TaskInfo};

/// The export formats: distill's safetensors, ONNX, and Hugging Face's layout (text students).
pub const FORMATS: &[&str] = &["safetensors", "onnx", "hf"];

/// Row-major f32 values and their shape: a network input or output outside candle.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

impl Array {
    /// A tensor's values as f32.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Self {
            shape: t.dims().to_vec(),
            data,
        })
    }
}

/// Runs an exported model outside candle (the binary's ONNX runtime): named outputs, `logits` first.
pub trait ModelRunner {
    /// One forward pass.
    fn run(&self, input: &Array) -> Result<Vec<(String, Array)>>;
}

/// A class (or a detected box) and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Class index.
    pub class: usize,
    /// Class name (the index when the data set names none).
    pub label: String,
    /// Softmax probability; for a box, its heatmap peak's sigmoid.
    pub score: f32,
    /// A box's `[x, y, width, height]` in the input image's pixels (COCO's convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f32; 4]>,
}

/// What a network says about one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Prediction {
    /// The top-k classes, most probable first.
    Classes {
        /// The input as given (a file, a text line).
        input: String,
        /// Classes by decreasing probability.
        top: Vec<Scored>,
    },
    /// Detected objects, best first.
    Boxes {
        /// The input as given.
        input: String,
        /// Boxes by decreasing score.
        boxes: Vec<Scored>,
    },
}

/// What `distill export` asks of a plugin.
pub struct ExportRequest<'a> {
    /// `safetensors`, `onnx` or `hf`.
    pub format: &'a str,
    /// The run's recipe and the exported network's model table.
    pub recipe: &'a Recipe,
    /// See `recipe`.
    pub model: &'a toml::Table,
    /// Its trained weights (the run's `model.safetensors`).
    pub weights: &'a Path,
    /// The (temporary) folder to write into.
    pub dir: &'a Path,
    /// The data and models dirs (image folders' class names, a text model's config and tokenizer).
    pub data_dir: &'a Path,
    /// See `data_dir`.
    pub models_dir: &'a Path,
    /// Where networks are built.
    pub device: &'a Device,
}

/// What an export's card records, so that `distill predict` needs nothing else.
#[derive(Debug, Clone, Default)]
pub struct ExportInfo {
    /// The task's shape; `None`: [`crate::Domain::task_info`]'s.
    pub task: Option<TaskInfo>,
    /// Class names by index (empty: unknown).
    pub labels: Vec<String>,
    /// How a raw input becomes the network input, for people and other tools.
    pub preprocessing: serde_json::Value,
    /// A model table that rebuilds the network from the export alone, its paths under the export dir.
    pub model: Option<toml::Table>,
    /// Files written, relative to the export dir.
    pub files: Vec<String>,
}

/// What `distill predict` asks of a plugin.
pub struct PredictRequest<'a> {
    /// The recipe the network was trained with.
    pub recipe: &'a Recipe,
    /// Its model table (paths under `ctx.models_dir`).
    pub model: &'a toml::Table,
    /// The task's shape and class names (empty: unknown).
    pub task: &'a TaskInfo,
    /// See `task`.
    pub labels: &'a [String],
    /// The inputs as given: files, or text lines.
    pub inputs: &'a [String],
    /// Classes to report per input.
    pub top_k: usize,
    /// The export dir (`model.safetensors`, tokenizer files ...).
    pub dir: &'a Path,
    /// The models dir (the export dir when the card's model table is self-contained).
    pub models_dir: &'a Path,
    /// Where the network runs.
    pub device: &'a Device,
    /// Runs the export's ONNX model; `None`: distill's network with `dir/model.safetensors`.
    pub runner: Option<&'a dyn ModelRunner>,
}

impl PredictRequest<'_> {
    /// The name of class `c` (its index when unknown).
    pub fn label(&self, c: usize) -> String {
        self.labels.get(c).cloned().unwrap_or_else(|| c.to_string())
    }
}

/// The default [`crate::Domain::predict_output`]: softmax of `[batch, classes]` logits, the `top_k` classes per input.
pub fn top_classes(req: &PredictRequest, logits: &Tensor) -> Result<Vec<Prediction>> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    if req.task.num_classes == 0 || rows.len() != req.inputs.len() {
        return Err(Error::Shape(format!(
            "predict reports classes: expected [{}, classes] logits, got {:?}",
            req.inputs.len(),
            logits.dims()
        )));
    }
    let top = |row: &Vec<f32>| {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let score = |c: usize| ((row[c] as f64 - m).exp() / z) as f32;
        let s = |c| Scored {
            class: c,
            label: req.label(c),
            score: score(c),
            bbox: None,
        };
        idx.into_iter().take(req.top_k).map(s).collect()
    };
    Ok(rows
        .iter()
        .zip(req.inputs)
        .map(|(r, i)| Prediction::Classes {
            input: i.clone(),
            top: top(r),
        })
        .collect())
}
