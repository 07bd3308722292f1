//! `distill predict MODEL_DIR INPUT...`: runs an exported network (distill's safetensors, or ONNX through
//! tract) on image files, WAV files or text lines and prints the top-k classes, or the boxes of a detector.
//!
//! The export's card names the plugin, the recipe and the task; the plugin turns the inputs into the network
//! input and the outputs into predictions (`Plugin::predict`), so both formats share one pre- and
//! post-processing. An ONNX model runs here, in the binary, on plain arrays ([`OnnxRunner`]).

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use distill_core::{
    checkpoint::read_json,
    deploy::{Array, ModelRunner, PredictRequest, Prediction},
    recipe::Recipe,
};
use distill_registry::Registry;
use tract_onnx::prelude::*;

use crate::cards::Card;
use crate::dirs::{device, dir_from, Dirs};
use crate::plugins::find_plugin;

/// What `distill predict` is asked.
pub struct PredictArgs {
    /// The export dir (or a run's phase dir).
    pub model: PathBuf,
    /// Files or text lines; `-` reads lines from stdin.
    pub inputs: Vec<String>,
    /// Classes per input.
    pub top_k: usize,
    /// One JSON document instead of lines.
    pub json: bool,
    /// auto, safetensors or onnx.
    pub format: String,
}

/// An ONNX model run by tract: the network input in, every output out (in the model's order).
pub struct OnnxRunner {
    path: PathBuf,
}

fn tract_err(path: &Path, e: impl std::fmt::Display) -> distill_core::Error {
    distill_core::Error::data(path, format!("ONNX model: {e}"))
}

impl OnnxRunner {
    /// The model at `path` (read when it runs, with the batch's shapes).
    pub fn new(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("{}: not found", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    fn run_tract(&self, input: &Array) -> TractResult<Vec<(String, Array)>> {
        let mut model = tract_onnx::onnx().model_for_path(&self.path)?;
        let names: Vec<String> = model
            .input_outlets()?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let shape = input.shape.as_slice();
        // BERT-family models take i64 token ids and a mask (id 0 is padding); others the f32 input
        let ids: Vec<i64> = input.data.iter().map(|&v| v as i64).collect();
        let mut feed: TVec<TValue> = tvec![];
        for (i, name) in names.iter().enumerate() {
            let t: Tensor = match name.as_str() {
                "input_ids" => tract_ndarray::ArrayD::from_shape_vec(shape, ids.clone())?.into(),
                "attention_mask" => {
                    let m: Vec<i64> = ids.iter().map(|&v| (v != 0) as i64).collect();
                    tract_ndarray::ArrayD::from_shape_vec(shape, m)?.into()
                }
                "token_type_ids" => tract_ndarray::ArrayD::<i64>::zeros(shape).into(),
                _ if names.len() == 1 => {
                    tract_ndarray::ArrayD::from_shape_vec(shape, input.data.clone())?.into()
                }
                other => anyhow::bail!("does not know what to feed its input `{other}`"),
            };
            model.set_input_fact(i, InferenceFact::from(TypedFact::shape_and_dt_of(&t)))?;
            feed.push(t.into());
        }
        let outputs: Vec<String> = model
            .output_outlets()?
            .iter()
            .map(|&o| {
                model
                    .outlet_label(o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let plan = model.into_optimized()?.into_runnable()?;
        let result = plan.run(feed)?;
        outputs
            .into_iter()
            .zip(result)
            .map(|(name, v)| {
                let t = v.cast_to::<f32>()?;
                let view = t.to_plain_array_view::<f32>()?;
                let a = Array {
                    shape: view.shape().to_vec(),
                    data: view.iter().copied().collect(),
                };
                Ok((name, a))
            })
            .collect()
    }
}

impl ModelRunner for OnnxRunner {
    fn run(&self, input: &Array) -> distill_core::Result<Vec<(String, Array)>> {
        self.run_tract(input)
            .map_err(|e| tract_err(&self.path, format!("{e:#}")))
    }
}

/// The inputs, with each `-` replaced by the non-empty lines of stdin.
fn expand_inputs(inputs: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for i in inputs {
        if i == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("reading stdin")?;
                let line = line.trim_end_matches('\r');
                if !line.trim().is_empty() {
                    out.push(line.to_string());
                }
            }
        } else {
            out.push(i.clone());
        }
    }
    if out.is_empty() {
        bail!("no inputs (give files or text lines, or `-` to read lines from stdin)");
    }
    Ok(out)
}

/// Which format runs: `--format`, else the card's, else what the folder holds.
fn pick_format(asked: &str, card: &Card, dir: &Path) -> Result<String> {
    let f = match (asked, card.format.as_str()) {
        ("auto", "hf") => bail!(
            "{}: a Hugging Face export runs with transformers (see its README.md); export \
             --format safetensors or onnx for `distill predict`",
            dir.display()
        ),
        ("auto", "") if dir.join("model.safetensors").exists() => "safetensors",
        ("auto", "") => "onnx",
        ("auto", f) => f,
        ("safetensors" | "onnx", _) => asked,
        _ => bail!("--format {asked}: expected auto, safetensors or onnx"),
    };
    let file = dir.join(format!("model.{f}"));
    if !file.exists() {
        bail!(
            "{}: not found (the export has no {f} model)",
            file.display()
        );
    }
    Ok(f.to_string())
}

/// `distill predict`.
pub fn cmd_predict(reg: &Registry, a: &PredictArgs, dirs: &Dirs) -> Result<()> {
    let dir = &a.model;
    let card_path = dir.join("card.json");
    if !card_path.exists() {
        bail!(
            "{}: not found ({} is not an export: write one with `distill export RUN --to DIR`)",
            card_path.display(),
            dir.display()
        );
    }
    let card: Card = read_json(&card_path)?;
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let format = pick_format(&a.format, &card, dir)?;
    let inputs = expand_inputs(&a.inputs)?;
    let recipe = Recipe::parse(&card.recipe_toml, &card_path.display().to_string(), false)?;
    let plugin = find_plugin(reg, &card.plugin)
        .with_context(|| format!("{}: `plugin`", card_path.display()))?;
    let task = match &card.task {
        Some(t) => t.clone(),
        None => plugin.task_info(&recipe)?,
    };
    // a self-contained export rebuilds its network from its own files
    let (model_toml, models_dir) = match card.export_model.as_str() {
        "" => (
            card.model.as_str(),
            dir_from(&dirs.models_dir, "DISTILL_MODELS", "models"),
        ),
        m => (m, dir.clone()),
    };
    let model: toml::Table =
        toml::from_str(model_toml).with_context(|| format!("{}: `model`", card_path.display()))?;
    let device = device(&dirs.device)?;
    let runner = match format.as_str() {
        "onnx" => Some(OnnxRunner::new(&dir.join("model.onnx"))?),
        _ => None,
    };
    let preds = plugin.predict(&PredictRequest {
        recipe: &recipe,
        model: &model,
        task: &task,
        labels: &card.labels,
        inputs: &inputs,
        top_k: a.top_k,
        dir,
        models_dir: &models_dir,
        device: &device,
        runner: runner.as_ref().map(|r| r as &dyn ModelRunner),
    })?;
    if a.json {
        let doc = serde_json::json!({
            "model": dir.display().to_string(),
            "format": format,
            "plugin": card.plugin,
            "predictions": preds,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for p in &preds {
            println!("{}", line(p));
        }
    }
    Ok(())
}

/// `INPUT: label (score), ...`, or for boxes `INPUT: N boxes` and a line per box.
fn line(p: &Prediction) -> String {
    match p {
        Prediction::Classes { input, top } => {
            let cls: Vec<String> = top
                .iter()
                .map(|s| format!("{} ({:.4})", s.label, s.score))
                .collect();
            format!("{input}: {}", cls.join(", "))
        }
        Prediction::Boxes { input, boxes } => {
            let mut s = format!("{input}: {} boxes", boxes.len());
            for b in boxes {
                let [x, y, w, h] = b.bbox.unwrap_or_default();
                s.push_str(&format!(
                    "\n  {} ({:.4}) x={x:.1} y={y:.1} w={w:.1} h={h:.1}",
                    b.label, b.score
                ));
            }
            s
        }
    }
}
