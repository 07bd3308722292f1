//! A plugin that panics in `run` (and whose task checks pass), for the registry tests: the panic must come
//! back to `distill` as an error, never unwind across the library boundary or abort the process.

use distill_core::{
    recipe::Recipe, report::RunReport, task::MetricInfo, BuildContext, Domain, Error, Manifest,
    Network, Plugin, Result, RunContext, Task, TaskInfo,
};

/// Panics when run.
pub struct Panicky;

impl Domain for Panicky {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "panicky".into(),
            domain: "testing".into(),
            version: "0.0.0".into(),
            description: "panics in run".into(),
            models: vec![],
            datasets: vec![],
            losses: vec![],
            recipes: vec![],
        }
    }
    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        Ok(TaskInfo {
            dataset: recipe.dataset.clone(),
            input_shape: vec![1],
            num_classes: 2,
            metric: MetricInfo {
                name: "accuracy".into(),
                higher_is_better: true,
            },
        })
    }
    fn load_task(&self, _recipe: &Recipe, _ctx: &RunContext) -> Result<Box<dyn Task>> {
        Err(Error::msg("panicky has no data"))
    }
    fn build_network(&self, _model: &toml::Table, _ctx: &BuildContext) -> Result<Box<dyn Network>> {
        Err(Error::msg("panicky has no models"))
    }
}

impl Plugin for Panicky {
    fn run(&self, _recipe: &Recipe, _ctx: &RunContext) -> Result<RunReport> {
        let v: Vec<u32> = Vec::new();
        // an out-of-bounds index: a plugin bug of the most ordinary kind
        let i = std::hint::black_box(3);
        panic!("index {i} of {} went wrong", v.len())
    }
}

distill_core::export_plugin!(Panicky);
