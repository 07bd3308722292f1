//! The model card (card.json) written beside every saved model and into every export: what `distill eval`,
//! `distill export` and `distill predict` need to rebuild, describe and run the model.

use std::path::Path;

use anyhow::Result;
use distill_core::recipe::Recipe;

/// A model card written beside every saved model, and into every export. The export fields are absent
/// from a run's own cards (and from exports written before them): they default to empty.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Card {
    /// The plugin's registry name.
    pub plugin: String,
    /// The recipe's name.
    pub recipe: String,
    /// The data set.
    pub dataset: String,
    /// teacher, scratch or distilled.
    pub phase: String,
    /// The seed it was trained with.
    pub seed: u64,
    /// Its `model` table, as TOML.
    pub model: String,
    /// The headline metric over the run's seeds, and the parameter count.
    pub metric: serde_json::Value,
    /// The recipe it was trained with, as TOML.
    pub recipe_toml: String,
    /// Export format: safetensors, onnx or hf (empty in a run dir).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    /// The task's input shape, classes and metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<distill_core::TaskInfo>,
    /// Class names by index (empty: the data set names none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// How a raw input (file, text line) becomes the network input.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub preprocessing: serde_json::Value,
    /// A `model` table (TOML) that rebuilds the network from the export dir alone, its paths relative to it;
    /// empty: `model`, with the models dir.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub export_model: String,
    /// The files of the export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Where the export comes from: `RUN_DIR/seed-N/PHASE`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exported_from: String,
}

/// Writes a model card beside every saved model of a finished run in `out_dir`.
pub fn write_cards(
    run: &distill_core::report::RunReport,
    recipe: &Recipe,
    out_dir: &Path,
) -> Result<()> {
    for (phase, summary) in [
        ("teacher", &run.teacher),
        ("scratch", &run.scratch),
        ("distilled", &run.distilled),
    ] {
        for seed in &run.seeds {
            let dir = out_dir.join(format!("seed-{seed}")).join(phase);
            let card = Card {
                plugin: run.plugin.clone(),
                recipe: run.recipe.clone(),
                dataset: run.dataset.clone(),
                phase: phase.to_string(),
                seed: *seed,
                model: match phase {
                    "teacher" => toml::to_string(&recipe.teacher.model)?,
                    _ => toml::to_string(&recipe.student.model)?,
                },
                metric: serde_json::json!({ "name": run.metric.name, "summary": summary.metric, "params": summary.params }),
                recipe_toml: run.recipe_toml.clone(),
                format: String::new(),
                task: None,
                labels: Vec::new(),
                preprocessing: serde_json::Value::Null,
                export_model: String::new(),
                files: Vec::new(),
                exported_from: String::new(),
            };
            distill_core::checkpoint::write_json_atomic(&card, &dir.join("card.json"))?;
        }
    }
    Ok(())
}
