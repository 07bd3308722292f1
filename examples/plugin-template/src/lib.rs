//! A third-party **distill** plugin, built as a dynamic library: tabular classification from CSV files.
//!
//! It uses nothing but the public APIs of distill-core and distill-nn: the examples of a CSV data set
//! ([`data`], cut into training, validation and test splits by [`SplitTask`]), an MLP [`Network`] composed
//! from distill-nn's layers ([`model`]), and the core's pipeline, losses and training loop through the
//! default [`Plugin`] entry points. The last line,
//! `export_plugin!`, is what makes the library loadable by `distill` (see docs/plugin-guide.md).

pub mod data;
pub mod model;

use distill_core::{
    recipe::Recipe, task::MetricInfo, BuildContext, Domain, Error, Manifest, Network, Plugin,
    Result, RunContext, SplitTask, Task, TaskInfo,
};

/// The plugin: one data set kind (`csv`), one model kind (`mlp`).
pub struct TabularPlugin;

impl Plugin for TabularPlugin {}

impl Domain for TabularPlugin {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "tabular".into(),
            domain: "tabular classification".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Rows of numbers from CSV files, one class label per row; MLP teacher and student"
                    .into(),
            models: vec!["mlp".into()],
            datasets: vec!["csv".into()],
            losses: vec![],
            recipes: vec!["examples/plugin-template/recipes/spirals.toml".into()],
        }
    }

    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        if recipe.dataset != "csv" {
            return Err(Error::Unknown {
                what: "data set",
                name: recipe.dataset.clone(),
                known: "csv".into(),
            });
        }
        let options = data::CsvOptions::from_recipe(&recipe.data)?;
        Ok(TaskInfo {
            dataset: recipe.dataset.clone(),
            input_shape: vec![options.features],
            num_classes: options.classes,
            metric: MetricInfo {
                name: "accuracy".into(),
                higher_is_better: true,
            },
        })
    }

    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>> {
        let info = self.task_info(recipe)?;
        let options = data::CsvOptions::from_recipe(&recipe.data)?;
        let examples =
            data::CsvExamples::load(info, &options, &recipe.data, &ctx.data_dir, &ctx.device)?;
        // distill-core cuts the splits: `data.validation`, `train_limit`, `test_limit`
        Ok(Box::new(SplitTask::new(examples, &recipe.data)?))
    }

    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>> {
        Ok(Box::new(model::MlpNet::from_table(model, ctx)?))
    }
}

distill_core::export_plugin!(TabularPlugin);
