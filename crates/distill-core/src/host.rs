//! The plugin contract the `distill` binary calls: whole jobs, each with a default built on the
//! [`Domain`] building blocks and the generic [`crate::pipeline`].
//!
//! The binary calls only these entry points and [`Domain::manifest`]; that keeps every tensor of a plugin
//! loaded from a dynamic library inside the library's own copy of candle (see [`crate::abi`]), because the
//! defaults are compiled into the plugin.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{
    deploy::{Array, ExportInfo, ExportRequest, PredictRequest, Prediction},
    network::{export_onnx, load_network},
    pipeline::{check_recipe, evaluate_saved, run_recipe, CheckSummary},
    plugin::{BuildContext, Domain, RunContext},
    recipe::Recipe,
    report::RunReport,
    task::{Evaluation, TaskInfo},
    Error, FeatureKind, Mode, Network, Outputs, Result,
};

/// A domain plugin: a [`Domain`] plus the entry points, which most plugins take as they are:
///
/// ```ignore
/// impl distill_core::Plugin for MyPlugin {}
/// ```
pub trait Plugin: Domain {
    /// Validates a recipe without data or training (`distill check`): a dry run on zeros.
    fn check(&self, recipe: &Recipe, ctx: &RunContext) -> Result<CheckSummary> {
        check_recipe(self, recipe, ctx)
    }
    /// Runs a recipe: teacher, scratch student and distilled student per seed, then one report.
    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> Result<RunReport> {
        run_recipe(self, recipe, ctx)
    }
    /// Evaluates saved `weights` of the network `model` on the test split (`distill eval`). Returns the
    /// network's description and its evaluation.
    fn evaluate(
        &self,
        recipe: &Recipe,
        model: &toml::Table,
        weights: &Path,
        ctx: &RunContext,
    ) -> Result<(String, Evaluation)> {
        evaluate_saved(self, recipe, model, weights, ctx)
    }
    /// Exports a trained network with what predicting needs (`distill export`): the plugin's files
    /// ([`Domain::export_files`]), then (unless `hf`) the network rebuilt from what the export holds and
    /// written as `model.safetensors` (a copy) or `model.onnx`.
    fn export(&self, req: &ExportRequest) -> Result<ExportInfo> {
        export(self, req)
    }
    /// Runs an exported network on files or text lines (`distill predict`): [`Domain::predict_input`], the
    /// network (distill's, or the export's ONNX model through `req.runner`), [`Domain::predict_output`].
    fn predict(&self, req: &PredictRequest) -> Result<Vec<Prediction>> {
        predict(self, req)
    }
}

/// A saved network: built for `task` (with the plugin's placeholder task, if any), then `weights` loaded.
fn rebuild<P: Domain + ?Sized>(
    p: &P,
    (recipe, model, task): (&Recipe, &toml::Table, &TaskInfo),
    (models_dir, data_dir, device): (&Path, &Path, &Device),
    weights: &Path,
) -> Result<Box<dyn Network>> {
    let placeholder = p.placeholder_task(recipe)?;
    let ctx = BuildContext {
        info: task,
        seed: 0,
        device,
        models_dir,
        data_dir,
        task: placeholder.as_deref(),
        recipe: None,
        model_key: "model",
    };
    let net = p.build_network(model, &ctx)?;
    load_network(net.as_ref(), weights, device)?;
    Ok(net)
}

fn export<P: Domain + ?Sized>(p: &P, req: &ExportRequest) -> Result<ExportInfo> {
    let mut info = p.export_files(req)?;
    if req.format == "hf" {
        return match info.files.iter().any(|f| f == "model.safetensors") {
            true => Ok(info),
            false => Err(Error::config(
                "--format hf",
                format!(
                    "is for text (BERT) students; plugin `{}` exports safetensors or onnx",
                    p.manifest().name
                ),
            )),
        };
    }
    let task = match &info.task {
        Some(t) => t.clone(),
        None => p.task_info(req.recipe)?,
    };
    // a self-contained model table reads its files from the export
    let models_dir = if info.model.is_some() {
        req.dir
    } else {
        req.models_dir
    };
    let model = info.model.as_ref().unwrap_or(req.model);
    let dirs = (models_dir, req.data_dir, req.device);
    let net = rebuild(p, (req.recipe, model, &task), dirs, req.weights)?;
    let file = format!("model.{}", req.format);
    match req.format {
        "onnx" => export_onnx(net.as_ref(), &req.dir.join(&file))?,
        _ => drop(
            std::fs::copy(req.weights, req.dir.join(&file))
                .map_err(|e| Error::io(req.weights, e))?,
        ),
    }
    info.files.push(file);
    info.task = Some(task);
    Ok(info)
}

fn predict<P: Domain + ?Sized>(p: &P, req: &PredictRequest) -> Result<Vec<Prediction>> {
    let input = p.predict_input(req)?;
    let outputs = match req.runner {
        Some(r) => {
            let mut outs = r.run(&Array::from_tensor(&input)?)?.into_iter();
            let tensor = |a: Array| Tensor::from_vec(a.data, a.shape, req.device);
            let first = outs
                .next()
                .ok_or_else(|| Error::msg("the model has no outputs"))?;
            let mut o = Outputs::logits(tensor(first.1)?);
            for (name, a) in outs {
                let kind = [FeatureKind::Vector, FeatureKind::Sequence, FeatureKind::Map];
                if let Some(&k) = kind.get(a.shape.len().wrapping_sub(2)) {
                    o = o.with_feature(&name, k, tensor(a)?)?;
                }
            }
            o
        }
        None => {
            let dirs = (req.models_dir, req.dir, req.device);
            let weights = req.dir.join("model.safetensors");
            let net = rebuild(p, (req.recipe, req.model, req.task), dirs, &weights)?;
            net.forward(&input, Mode::Eval)?
        }
    };
    p.predict_output(req, &outputs)
}
