//! The model card (card.json) written beside every saved model: what `distill eval` and `distill export`
//! need to rebuild and describe the model.

use std::path::Path;

use anyhow::Result;
use distill_core::recipe::Recipe;

/// A model card written beside every saved model.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Card {
    pub plugin: String,
    pub recipe: String,
    pub dataset: String,
    pub phase: String,
    pub seed: u64,
    pub model: String,
    pub metric: serde_json::Value,
    pub recipe_toml: String,
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
            };
            distill_core::checkpoint::write_json_atomic(&card, &dir.join("card.json"))?;
        }
    }
    Ok(())
}
