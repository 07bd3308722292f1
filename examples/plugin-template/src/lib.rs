//! A third-party **distill** plugin, built as a dynamic library: tabular classification from CSV files.
//!
//! It uses nothing but distill-core's public API: a [`Task`] over CSV rows ([`data`]), an MLP [`Network`]
//! ([`model`]), and the core's pipeline, losses and training loop through [`run_recipe`]. The last line,
//! `export_plugin!`, is what makes the library loadable by `distill` (see docs/plugin-guide.md).

pub mod data;
pub mod model;

use distill_core::{
    recipe::Recipe, task::MetricInfo, BuildContext, Domain, Error, Manifest, Network, Plugin,
    Result, RunContext, Task, TaskInfo,
};

/// The plugin: one data set kind (`csv`), one model kind (`mlp`).
pub struct TabularPlugin;

/// Reads `data.options.<key>` as a positive integer.
fn option_usize(recipe: &Recipe, key: &str) -> Result<usize> {
    let v = recipe
        .data
        .options
        .as_ref()
        .and_then(|o| o.get(key))
        .ok_or_else(|| Error::config("data.options", format!("`{key}` is required")))?;
    v.as_integer()
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| {
            Error::config(
                "data.options",
                format!("`{key}` must be a positive integer, got {v}"),
            )
        })
}

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
        Ok(TaskInfo {
            dataset: recipe.dataset.clone(),
            input_shape: vec![option_usize(recipe, "features")?],
            num_classes: option_usize(recipe, "classes")?,
            metric: MetricInfo {
                name: "accuracy".into(),
                higher_is_better: true,
            },
        })
    }

    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>> {
        let info = self.task_info(recipe)?;
        let options = recipe.data.options.clone().unwrap_or_default();
        Ok(Box::new(data::CsvTask::load(
            info,
            &options,
            &ctx.data_dir,
            &ctx.device,
        )?))
    }

    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>> {
        let (info, seed, device) = (ctx.info, ctx.seed, ctx.device);
        Ok(Box::new(model::Mlp::from_table(model, info, seed, device)?))
    }
}

distill_core::export_plugin!(TabularPlugin);
