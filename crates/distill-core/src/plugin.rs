//! The building blocks of a plugin: [`Domain`], what it offers ([`Manifest`]) and where it runs
//! ([`RunContext`], [`BuildContext`]).
//!
//! A plugin is a domain (image classification, detection, audio, graphs, text): it knows its data sets,
//! models and domain losses ([`Domain`]). The generic pipeline ([`crate::pipeline`]) does the rest; the
//! whole-job entry points the `distill` binary calls are [`crate::Plugin`]'s, with defaults.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{
    deploy::{ExportInfo, ExportRequest, PredictRequest, Prediction},
    losses::{DistillLoss, LossSpec},
    recipe::Recipe,
    task::{Task, TaskInfo},
    Network, Outputs, Result,
};

/// What a plugin offers, listed by `distill plugins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Registry name, e.g. `"image-classification"`.
    pub name: String,
    /// Domain in words.
    pub domain: String,
    /// Plugin version.
    pub version: String,
    /// One line.
    pub description: String,
    /// Model architectures.
    pub models: Vec<String>,
    /// Data sets it reads.
    pub datasets: Vec<String>,
    /// Losses it adds to the core ones.
    pub losses: Vec<String>,
    /// Recipes it ships (paths relative to the project root).
    pub recipes: Vec<String>,
}

/// Where and how a run happens.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Data dir (`--data-dir`, `$DISTILL_DATA`, `datasets/`).
    pub data_dir: PathBuf,
    /// Models dir (`--models-dir`, `$DISTILL_MODELS`, `models/`).
    pub models_dir: PathBuf,
    /// Output dir of this run.
    pub out_dir: PathBuf,
    /// Cache of trained teachers (keyed by a hash of their recipe section).
    pub cache_dir: Option<PathBuf>,
    /// Compute device.
    pub device: Device,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// Continue a run found in `out_dir`.
    pub resume: bool,
    /// No progress bars.
    pub quiet: bool,
    /// The recipe's file (for the report).
    pub recipe_path: Option<PathBuf>,
    /// The project's git revision (for the report).
    pub git_revision: Option<String>,
    /// Recipe keys that may differ from the recipe recorded in `out_dir` (`--allow-changed`): a key, or a
    /// table above keys (`teacher`). See [`crate::run_record`].
    pub allow_changed: Vec<String>,
    /// What identifies the plugin's code in the teacher cache's key: a builtin's crate and version, a plugin
    /// library's content hash (set by the CLI from the registry).
    pub plugin_identity: String,
    /// Train nothing: every phase must have finished already (its results are read back), else the run fails
    /// naming the phase (`distill bench --collect`).
    pub no_training: bool,
    /// `distill check --latency`: also time the teacher and the student ([`crate::train::measure_latency`]) on
    /// the real task (this reads the data set).
    pub measure_latency: bool,
}

impl RunContext {
    /// A context with defaults: CPU, no cache, not quick, not resuming, quiet.
    pub fn new(data_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            models_dir: PathBuf::from("models"),
            out_dir: out_dir.into(),
            cache_dir: None,
            device: Device::Cpu,
            quick: false,
            resume: false,
            quiet: true,
            recipe_path: None,
            git_revision: None,
            allow_changed: Vec::new(),
            plugin_identity: String::new(),
            no_training: false,
            measure_latency: false,
        }
    }
}

/// What a network is built for and where: handed to [`Domain::build_network`]. Nothing reaches a plugin
/// through globals.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// The task's shape.
    pub info: &'a TaskInfo,
    /// The seed its parameters are initialised from.
    pub seed: u64,
    /// Where the parameters live.
    pub device: &'a Device,
    /// The models dir (pretrained weights, tokenizers).
    pub models_dir: &'a Path,
    /// The data dir.
    pub data_dir: &'a Path,
    /// The loaded task; under `distill check`, which reads no data, the [`Domain::placeholder_task`] if any.
    pub task: Option<&'a dyn Task>,
    /// The recipe the model table comes from, and the table's key (`teacher.model`, `student.model`), so
    /// [`BuildContext::model`] can locate a mistake in the file.
    pub recipe: Option<&'a Recipe>,
    /// See `recipe`.
    pub model_key: &'a str,
}

impl<'a> BuildContext<'a> {
    /// A context for `info` from a run's context, with `seed` and the loaded `task` if there is one.
    pub fn new(
        info: &'a TaskInfo,
        seed: u64,
        ctx: &'a RunContext,
        task: Option<&'a dyn Task>,
    ) -> Self {
        Self {
            info,
            seed,
            device: &ctx.device,
            models_dir: &ctx.models_dir,
            data_dir: &ctx.data_dir,
            task,
            recipe: None,
            model_key: "model",
        }
    }

    /// The same for the model table at `key` of `recipe`.
    pub fn for_model(self, recipe: &'a Recipe, key: &'a str) -> Self {
        Self {
            recipe: Some(recipe),
            model_key: key,
            ..self
        }
    }

    /// Parses a model table as the plugin's own type `T` (`#[serde(deny_unknown_fields)]`): a mistake is an
    /// error naming the recipe file, line and column ([`Recipe::typed`]).
    pub fn model<T: serde::de::DeserializeOwned>(&self, table: &toml::Table) -> Result<T> {
        match self.recipe {
            Some(r) => r.typed(self.model_key, table),
            None => table.clone().try_into().map_err(|e: toml::de::Error| {
                crate::Error::config(
                    format!("`{}`", self.model_key),
                    e.message().trim().to_string(),
                )
            }),
        }
    }
}

/// A domain: its data sets, networks and losses. The pipeline builds everything else on these; a plugin
/// also implements [`crate::Plugin`] (usually with an empty `impl`) for the entry points.
pub trait Domain: Send + Sync {
    /// What it offers.
    fn manifest(&self) -> Manifest;
    /// The task's shape, from the recipe alone (no data read): for `distill check`.
    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo>;
    /// Loads the data.
    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>>;
    /// A task of the recipe's shape that reads no data, for `distill check`'s dry run, when networks need a
    /// task to be built (a GNN holds its graph); none by default.
    fn placeholder_task(&self, _recipe: &Recipe) -> Result<Option<Box<dyn Task>>> {
        Ok(None)
    }
    /// Builds a network from a recipe's `model` table, its parameters initialised from `ctx.seed`.
    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>>;
    /// Checks an augmentation name; none are known by default.
    fn check_augment(&self, name: &str) -> Result<()> {
        Err(crate::Error::Unknown {
            what: "augmentation",
            name: name.to_string(),
            known: String::new(),
        })
    }
    /// Builds a domain loss from the student's and teacher's outputs on a dry-run batch, or `Ok(None)` if the
    /// name is not one of this plugin's; its parameters (if any) start from `ctx.seed`.
    fn build_loss(
        &self,
        _spec: &LossSpec,
        _student: &Outputs,
        _teacher: &Outputs,
        _ctx: &BuildContext,
    ) -> Result<Option<Box<dyn DistillLoss>>> {
        Ok(None)
    }
    /// Writes the plugin's own files of an export (`distill export`) into `req.dir` and says what its card
    /// records ([`crate::deploy`]); for format `hf`, all of them (else `hf` is refused). Nothing by default.
    fn export_files(&self, _req: &ExportRequest) -> Result<ExportInfo> {
        Ok(ExportInfo::default())
    }
    /// Turns `req.inputs` (files, text lines) into one batch of network input (`distill predict`), as the
    /// data pipeline does; unsupported by default.
    fn predict_input(&self, _req: &PredictRequest) -> Result<Tensor> {
        Err(crate::Error::config(
            "predict",
            format!(
                "plugin `{}` does not turn files into network inputs",
                self.manifest().name
            ),
        ))
    }
    /// One prediction per input from the outputs on [`Domain::predict_input`]'s batch: by default the
    /// top-k classes of the softmaxed logits ([`crate::deploy::top_classes`]).
    fn predict_output(&self, req: &PredictRequest, outputs: &Outputs) -> Result<Vec<Prediction>> {
        crate::deploy::top_classes(req, &outputs.logits)
    }
}
