//! # distill-detection: the object-detection plugin
//!
//! COCO-JSON data (images decoded with the `image` crate, letterboxed to a square input; horizontal flip and
//! scale jitter), a deterministic "digits on canvas" set generated from MNIST, CenterNet-style anchor-free
//! detectors of any width and depth, post-processing (score threshold, top-k, class-wise NMS), COCO mAP
//! computed in Rust (checked against pycocotools), and detection distillation losses: heatmap KD at a
//! temperature, fine-grained feature imitation and CenterNet localisation distillation.
//!
//! Data sets (`dataset = ...`): `digits-canvas` (generated under `<data dir>/digits-canvas/` from
//! `<data dir>/mnist`), `coco128` (`<data dir>/coco128`: train2017 trains, val2017 tests) and `coco` (any COCO
//! JSON: `root`, `train_annotations`, `test_annotations`, `classes`).
//!
//! Recipe `[data.options]` keys: `size` (input side, a multiple of 16; default 64), `channels` (1 or 3;
//! default 1 for digits, 3 for photos), `digits` (a [`data::digits::DigitsConfig`] table), `root`,
//! `train_annotations`, `test_annotations`, `classes` (for `coco`), and `postprocess` (a
//! [`models::postprocess::PostProcess`] table).
//!
//! ```
//! use distill_core::Domain;
//! let m = distill_detection::DetectionPlugin.manifest();
//! assert_eq!(m.name, "object-detection");
//! assert!(m.losses.iter().any(|l| l == "fgfi"));
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod predict;
pub mod task;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_core::Tensor;
use distill_core::{
    deploy::{ExportInfo, ExportRequest, PredictRequest, Prediction},
    examples::SplitTask,
    losses::{DistillLoss, LossSpec},
    recipe::Recipe,
    BuildContext, Domain, Error, Manifest, Network, Outputs, Plugin, Result, RunContext, Task,
    TaskInfo,
};
use serde::Deserialize;

use crate::{
    data::{coco, digits, digits::DigitsConfig, Augment},
    metrics::map_metric,
    models::{build_model, postprocess::PostProcess, ModelSpec, ARCHS},
    task::DetExamples,
};

/// Data sets this plugin reads.
pub const DATASETS: &[&str] = &["digits-canvas", "coco128", "coco"];

/// The object-detection plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetectionPlugin;

/// `[data.options]` of a detection recipe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetOptions {
    size: Option<usize>,
    channels: Option<usize>,
    digits: Option<DigitsConfig>,
    root: Option<PathBuf>,
    train_annotations: Option<PathBuf>,
    test_annotations: Option<PathBuf>,
    classes: Option<usize>,
    #[serde(default)]
    postprocess: PostProcess,
}

fn options(recipe: &Recipe) -> Result<DetOptions> {
    let o: DetOptions = recipe.options()?;
    o.postprocess.validate()?;
    if let Some(d) = &o.digits {
        if recipe.dataset != "digits-canvas" {
            return Err(Error::config(
                "data.options.digits",
                "is only used with dataset = \"digits-canvas\"",
            ));
        }
        d.validate()?;
    }
    if let Some(c) = o.channels {
        if c != 1 && c != 3 {
            return Err(Error::config(
                "data.options.channels",
                format!("must be 1 (grey) or 3 (RGB), got {c}"),
            ));
        }
    }
    let coco_keys = [
        ("root", o.root.is_some()),
        ("train_annotations", o.train_annotations.is_some()),
        ("test_annotations", o.test_annotations.is_some()),
        ("classes", o.classes.is_some()),
    ];
    if recipe.dataset != "coco" {
        if let Some((k, _)) = coco_keys.iter().find(|(_, on)| *on) {
            return Err(Error::config(
                format!("data.options.{k}"),
                "is only used with dataset = \"coco\"",
            ));
        }
    } else if let Some((k, _)) = coco_keys.iter().find(|(_, on)| !*on) {
        return Err(Error::config(
            "data.options",
            format!("dataset \"coco\" needs `{k}` (and root, train_annotations, test_annotations, classes)"),
        ));
    }
    Ok(o)
}

impl DetectionPlugin {
    fn info(&self, recipe: &Recipe, o: &DetOptions) -> Result<TaskInfo> {
        let (classes, channels) = match recipe.dataset.as_str() {
            "digits-canvas" => (10, 1),
            "coco128" => (80, 3),
            "coco" => (o.classes.unwrap_or(0), 3),
            other => {
                return Err(Error::Unknown {
                    what: "data set",
                    name: other.to_string(),
                    known: DATASETS.join(", "),
                })
            }
        };
        if classes == 0 {
            return Err(Error::config("data.options.classes", "must be > 0"));
        }
        let size = o.size.unwrap_or(64);
        if size == 0 || !size.is_multiple_of(16) {
            return Err(Error::config(
                "data.options.size",
                format!("must be a positive multiple of 16 (the detectors' stride), got {size}"),
            ));
        }
        Ok(TaskInfo {
            dataset: recipe.dataset.clone(),
            input_shape: vec![o.channels.unwrap_or(channels), size, size],
            num_classes: classes,
            metric: map_metric(),
        })
    }
}

/// Channels and side of a detector's `[C, S, S]` input.
fn channels_size(shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [c, s, _] => Ok((*c, *s)),
        _ => Err(Error::Shape(format!(
            "a detector takes [channels, size, size] inputs, not {shape:?}"
        ))),
    }
}

impl Plugin for DetectionPlugin {}

impl Domain for DetectionPlugin {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "object-detection".into(),
            domain: "object detection".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "COCO JSON and MNIST digits-on-canvas; CenterNet-style teacher and student; COCO mAP; heatmap KD, feature imitation, CenterNet localisation distillation".into(),
            models: ARCHS.iter().map(|s| s.to_string()).collect(),
            datasets: DATASETS.iter().map(|s| s.to_string()).collect(),
            losses: losses::LOSSES.iter().map(|s| s.to_string()).collect(),
            recipes: vec![
                "plugins/detection/recipes/digits-detection.toml".into(),
                "plugins/detection/recipes/coco128-smoke.toml".into(),
            ],
        }
    }

    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        self.info(recipe, &options(recipe)?)
    }

    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>> {
        let o = options(recipe)?;
        let info = self.info(recipe, &o)?;
        let (channels, size) = (info.input_shape[0], info.input_shape[1]);
        let train_limit = recipe.data.train_limit.map(|n| n + recipe.data.validation);
        let mut notes = BTreeMap::new();
        let (root, train_ann, test_ann) = match recipe.dataset.as_str() {
            "digits-canvas" => {
                let cfg = o.digits.clone().unwrap_or_default();
                let dir = digits::ensure_generated(&ctx.data_dir, &cfg)?;
                notes.insert(
                    "generated".into(),
                    serde_json::json!(dir.display().to_string()),
                );
                (
                    dir.clone(),
                    dir.join("annotations/instances_train.json"),
                    dir.join("annotations/instances_test.json"),
                )
            }
            "coco128" => {
                let dir = ctx.data_dir.join("coco128");
                (
                    dir.clone(),
                    dir.join("annotations/instances_train2017.json"),
                    dir.join("annotations/instances_val2017.json"),
                )
            }
            _ => {
                let root = ctx
                    .data_dir
                    .join(o.root.as_deref().unwrap_or(Path::new(".")));
                let tr = ctx
                    .data_dir
                    .join(o.train_annotations.as_deref().unwrap_or(Path::new("")));
                let te = ctx
                    .data_dir
                    .join(o.test_annotations.as_deref().unwrap_or(Path::new("")));
                (root, tr, te)
            }
        };
        if !root.is_dir() {
            return Err(Error::data(
                &root,
                format!(
                    "data set folder not found (data dir {}; set --data-dir or $DISTILL_DATA)",
                    ctx.data_dir.display()
                ),
            ));
        }
        let train_file = coco::load_coco(&train_ann)?;
        if train_file.categories.len() != info.num_classes {
            return Err(Error::data(
                &train_ann,
                format!(
                    "has {} categories but the recipe's data set has {} classes",
                    train_file.categories.len(),
                    info.num_classes
                ),
            ));
        }
        let cats = train_file.category_ids();
        let train = data::from_coco(
            &train_file,
            &train_ann,
            &root,
            size,
            channels,
            train_limit,
            None,
        )?;
        let test = data::load_coco_split(
            &test_ann,
            &root,
            size,
            channels,
            recipe.data.test_limit,
            Some(&cats),
        )?;
        notes.insert(
            "train_images".into(),
            serde_json::json!(train.len() - recipe.data.validation.min(train.len())),
        );
        notes.insert("test_images".into(), serde_json::json!(test.len()));
        notes.insert(
            "test_boxes".into(),
            serde_json::json!(test.ground_truth.len()),
        );
        // the validation split (the last `validation` of the images loaded), train_limit and test_limit are
        // cut by core's SplitTask; the loaders above read no more images than those need
        let examples =
            DetExamples::new(info, train, test, o.postprocess, notes, ctx.device.clone());
        Ok(Box::new(SplitTask::new(examples, &recipe.data)?))
    }

    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>> {
        let (info, seed, device) = (ctx.info, ctx.seed, ctx.device);
        let spec: ModelSpec = ctx.model(model)?;
        let s = &info.input_shape;
        build_model(&spec, s[0], s[1], info.num_classes, seed, device)
    }

    fn check_augment(&self, name: &str) -> Result<()> {
        Augment::parse(name).map(|_| ())
    }

    fn build_loss(
        &self,
        spec: &LossSpec,
        student: &Outputs,
        teacher: &Outputs,
        ctx: &BuildContext,
    ) -> Result<Option<Box<dyn DistillLoss>>> {
        losses::build_detection_loss(spec, student, teacher, ctx.seed)
    }

    fn export_files(&self, req: &ExportRequest) -> Result<ExportInfo> {
        let o = options(req.recipe)?;
        let info = self.info(req.recipe, &o)?;
        let d = req.data_dir;
        let mut cats = match req.recipe.dataset.as_str() {
            "digits-canvas" => digits::categories(),
            "coco128" => {
                coco::load_coco(&d.join("coco128/annotations/instances_train2017.json"))?.categories
            }
            _ => {
                coco::load_coco(&d.join(o.train_annotations.as_deref().unwrap_or(Path::new(""))))?
                    .categories
            }
        };
        // classes are numbered in category-id order, as the loader numbers them
        cats.sort_by_key(|c| c.id);
        let (channels, size) = channels_size(&info.input_shape)?;
        Ok(ExportInfo {
            labels: cats.into_iter().map(|c| c.name).collect(),
            preprocessing: predict::preprocessing(channels, size, &o.postprocess),
            task: Some(info),
            ..ExportInfo::default()
        })
    }

    fn predict_input(&self, req: &PredictRequest) -> Result<Tensor> {
        let (c, size) = channels_size(&req.task.input_shape)?;
        predict::image_batch(req.inputs, c, size, req.device)
    }

    fn predict_output(&self, req: &PredictRequest, outputs: &Outputs) -> Result<Vec<Prediction>> {
        let pp = options(req.recipe)?.postprocess;
        let cs = channels_size(&req.task.input_shape)?;
        predict::boxes(req.inputs, outputs, cs, &pp, |c| req.label(c))
    }
}
