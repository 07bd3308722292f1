//! The plugin contract the `distill` binary calls: whole jobs, each with a default built on the
//! [`Domain`] building blocks and the generic [`crate::pipeline`].
//!
//! The binary calls only these entry points and [`Domain::manifest`]; that keeps every tensor of a plugin
//! loaded from a dynamic library inside the library's own copy of candle (see [`crate::abi`]), because the
//! defaults are compiled into the plugin.

use std::path::Path;

use crate::{
    pipeline::{check_recipe, evaluate_saved, run_recipe, CheckSummary},
    plugin::{Domain, RunContext},
    recipe::Recipe,
    report::RunReport,
    task::Evaluation,
    Result,
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
}
