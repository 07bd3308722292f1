//! The type-erased, object-safe plugin boundary.
//!
//! A plugin is a domain (image classification, detection, audio, graphs, text): it knows its data sets,
//! models and domain losses. The generic pipeline ([`crate::pipeline::run_recipe`]) does the rest, so a
//! plugin's `run` is usually one line.
//!
//! The `distill` binary calls only the whole-job methods ([`Plugin::manifest`], [`Plugin::check`],
//! [`Plugin::run`], [`Plugin::evaluate`]); the others are the plugin's building blocks for the pipeline. That
//! keeps every tensor of a plugin loaded from a dynamic library inside the library's own copy of candle (see
//! [`crate::abi`]).

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{
    losses::{DistillLoss, LossSpec},
    pipeline::CheckSummary,
    recipe::Recipe,
    report::RunReport,
    task::{Evaluation, Task, TaskInfo},
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
        }
    }
}

/// A domain plugin.
pub trait Plugin: Send + Sync {
    /// What it offers.
    fn manifest(&self) -> Manifest;
    /// The task's shape, from the recipe alone (no data read): for `distill check`.
    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo>;
    /// Loads the data.
    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>>;
    /// Builds a network from a recipe's `model` table, its parameters initialised from `seed`.
    fn build_network(
        &self,
        model: &toml::Table,
        info: &TaskInfo,
        seed: u64,
        device: &Device,
    ) -> Result<Box<dyn Network>>;
    /// Checks an augmentation name; none are known by default.
    fn check_augment(&self, name: &str) -> Result<()> {
        Err(crate::Error::Unknown {
            what: "augmentation",
            name: name.to_string(),
            known: String::new(),
        })
    }
    /// Builds a domain loss, or `Ok(None)` if the name is not one of this plugin's.
    fn build_loss(
        &self,
        _spec: &LossSpec,
        _student: &Outputs,
        _teacher: &Outputs,
        _seed: u64,
    ) -> Result<Option<Box<dyn DistillLoss>>> {
        Ok(None)
    }
    /// Validates a recipe without data or training (`distill check`): by default
    /// [`crate::pipeline::check_recipe`], a dry run on zeros.
    fn check(&self, recipe: &Recipe) -> Result<CheckSummary> {
        crate::pipeline::check_recipe(self, recipe)
    }
    /// Runs a recipe: usually `distill_core::pipeline::run_recipe(self, recipe, ctx)`.
    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> Result<RunReport>;
    /// Evaluates saved `weights` of the network `model` on the test split (`distill eval`): by default
    /// [`crate::pipeline::evaluate_saved`]. Returns the network's description and its evaluation.
    fn evaluate(
        &self,
        recipe: &Recipe,
        model: &toml::Table,
        weights: &Path,
        ctx: &RunContext,
    ) -> Result<(String, Evaluation)> {
        crate::pipeline::evaluate_saved(self, recipe, model, weights, ctx)
    }
}
