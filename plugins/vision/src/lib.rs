//! # distill-vision: the image-classification plugin
//!
//! Data: MNIST (IDX, raw or gzip), CIFAR-10/100 (binary), and an image-folder loader for your own images
//! (`root/train/CLASS/*.png|jpg` and `root/test/CLASS/...`). Augmentation: `jitterN` (±N px translation),
//! `crop-flip` (CIFAR). Models: MLP, a LeNet-style CNN and the CIFAR ResNet family of the KD literature
//! (resnet8x4, resnet32x4, resnet20/56/110, wrn-40-2, wrn-16-2), and torchvision's ImageNet ResNets
//! (resnet18/34/50, with a `width` option) so a torchvision checkpoint is a teacher as is. Metrics: top-1 (headline), top-5, errors.
//! Distillation losses are distill-core's (KD, DKD, FitNets, AT, SP, RKD).
//!
//! ```
//! use distill_core::Domain;
//! let m = distill_vision::VisionPlugin.manifest();
//! assert_eq!(m.name, "image-classification");
//! assert!(m.models.iter().any(|a| a == "resnet8x4"));
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod predict;
pub mod task;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use distill_core::{
    deploy::{ExportInfo, ExportRequest, PredictRequest},
    examples::SplitTask,
    recipe::Recipe,
    BuildContext, Domain, Error, Manifest, Network, Plugin, Result, RunContext, Task, TaskInfo,
};
use serde::Deserialize;

use crate::{
    data::{default_norm, parse_augment, Normalize},
    losses::LOSSES,
    metrics::accuracy_metric,
    models::{build_model, ModelSpec, ARCHS},
    task::VisionExamples,
};

/// Data sets this plugin reads.
pub const DATASETS: &[&str] = &["mnist", "cifar10", "cifar100", "image-folder"];

/// The image-classification plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct VisionPlugin;

/// `[data.options]` of a vision recipe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisionOptions {
    /// Per-channel mean (default: the data set's).
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation (default: the data set's).
    std: Option<Vec<f32>>,
    /// image-folder: the folder (relative to the data dir) holding `train/` and `test/`.
    root: Option<PathBuf>,
    /// image-folder: resize every image to `[height, width]`.
    size: Option<[usize; 2]>,
    /// image-folder: read as grayscale (1 channel) instead of RGB.
    #[serde(default)]
    grayscale: bool,
}

fn options(recipe: &Recipe) -> Result<VisionOptions> {
    recipe.options()
}

fn folder_root(data_dir: &Path, opts: &VisionOptions) -> Result<PathBuf> {
    let root = opts.root.as_ref().ok_or_else(|| {
        Error::config(
            "data.options",
            "image-folder needs `root` (a folder with train/ and test/)",
        )
    })?;
    Ok(data_dir.join(root)) // an absolute root stays as it is
}

impl VisionPlugin {
    fn info_with(&self, recipe: &Recipe, data_dir: Option<&Path>) -> Result<TaskInfo> {
        let opts = options(recipe)?;
        let (shape, classes) = match recipe.dataset.as_str() {
            "mnist" => (vec![1, 28, 28], 10),
            "cifar10" => (vec![3, 32, 32], 10),
            "cifar100" => (vec![3, 32, 32], 100),
            "image-folder" => {
                let [h, w] = opts.size.ok_or_else(|| {
                    Error::config(
                        "data.options",
                        "image-folder needs `size = [height, width]`",
                    )
                })?;
                let c = if opts.grayscale { 1 } else { 3 };
                let classes = match data_dir {
                    Some(d) => {
                        let train = folder_root(d, &opts)?.join("train");
                        let rd = std::fs::read_dir(&train).map_err(|e| Error::io(&train, e))?;
                        rd.filter_map(|e| e.ok())
                            .filter(|e| e.path().is_dir())
                            .count()
                    }
                    None => 2,
                };
                (vec![c, h, w], classes)
            }
            other => {
                return Err(Error::Unknown {
                    what: "data set",
                    name: other.to_string(),
                    known: DATASETS.join(", "),
                })
            }
        };
        Ok(TaskInfo {
            dataset: recipe.dataset.clone(),
            input_shape: shape,
            num_classes: classes,
            metric: accuracy_metric(),
        })
    }
}

/// The recipe's normalisation (`data.options.mean` / `std`, else the data set's usual statistics).
fn normalisation(recipe: &Recipe, channels: usize) -> Result<Normalize> {
    let opts = options(recipe)?;
    let mut norm = default_norm(&recipe.dataset, channels);
    if let Some(m) = opts.mean {
        norm.mean = m;
    }
    if let Some(s) = opts.std {
        norm.std = s;
    }
    if norm.mean.len() != channels || norm.std.len() != channels {
        return Err(Error::config(
            "data.options",
            format!("mean and std need {channels} values (one per channel)"),
        ));
    }
    Ok(norm)
}

impl Plugin for VisionPlugin {}

impl Domain for VisionPlugin {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "image-classification".into(),
            domain: "image classification".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "MNIST, CIFAR-10/100 and image folders; MLP, LeNet and CIFAR ResNets/WRNs"
                .into(),
            models: ARCHS.iter().map(|s| s.to_string()).collect(),
            datasets: DATASETS.iter().map(|s| s.to_string()).collect(),
            losses: LOSSES.iter().map(|s| s.to_string()).collect(),
            recipes: vec!["plugins/vision/recipes/hinton-mnist.toml".into()],
        }
    }

    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        self.info_with(recipe, None)
    }

    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>> {
        let info = self.info_with(recipe, Some(&ctx.data_dir))?;
        let opts = options(recipe)?;
        let (train, test) = match recipe.dataset.as_str() {
            "mnist" => {
                let d = ctx.data_dir.join("mnist");
                (
                    data::load_mnist(&d, data::Split::Train)?,
                    data::load_mnist(&d, data::Split::Test)?,
                )
            }
            "cifar10" => {
                let d = ctx.data_dir.join("cifar10");
                (
                    data::load_cifar10(&d, data::Split::Train)?,
                    data::load_cifar10(&d, data::Split::Test)?,
                )
            }
            "cifar100" => {
                let d = ctx.data_dir.join("cifar100");
                (
                    data::load_cifar100(&d, data::Split::Train)?,
                    data::load_cifar100(&d, data::Split::Test)?,
                )
            }
            _ => {
                let root = folder_root(&ctx.data_dir, &opts)?;
                let size = opts.size.map(|[h, w]| (h, w));
                (
                    data::load_image_folder(&root.join("train"), size, opts.grayscale)?,
                    data::load_image_folder(&root.join("test"), size, opts.grayscale)?,
                )
            }
        };
        let norm = normalisation(recipe, info.input_shape[0])?;
        // the validation split, train_limit and test_limit are cut by core's SplitTask
        let examples = VisionExamples::new(info, train, test, norm, ctx.device.clone());
        Ok(Box::new(SplitTask::new(examples, &recipe.data)?))
    }

    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>> {
        let (info, seed, device) = (ctx.info, ctx.seed, ctx.device);
        let spec: ModelSpec = ctx.model(model)?;
        let s = &info.input_shape;
        build_model(&spec, [s[0], s[1], s[2]], info.num_classes, seed, device)
    }

    fn check_augment(&self, name: &str) -> Result<()> {
        parse_augment(name).map(|_| ())
    }

    fn export_files(&self, req: &ExportRequest) -> Result<ExportInfo> {
        let (recipe, data_dir) = (req.recipe, req.data_dir);
        let opts = options(recipe)?;
        let folder = opts
            .root
            .as_ref()
            .map(|_| folder_root(data_dir, &opts))
            .transpose()?;
        let train = folder.map(|f| f.join("train"));
        // an image folder's classes are counted on disk (the task's shape without data has a placeholder)
        let info = self.info_with(recipe, train.is_some().then_some(data_dir))?;
        let norm = normalisation(recipe, info.input_shape[0])?;
        Ok(ExportInfo {
            labels: predict::class_names(&recipe.dataset, train.as_deref()),
            preprocessing: predict::preprocessing(&info.input_shape, &norm),
            task: Some(info),
            ..ExportInfo::default()
        })
    }

    fn predict_input(&self, req: &PredictRequest) -> Result<Tensor> {
        let shape = &req.task.input_shape;
        let norm = normalisation(req.recipe, shape.first().copied().unwrap_or(1))?;
        predict::image_batch(req.inputs, shape, &norm, req.device)
    }
}
