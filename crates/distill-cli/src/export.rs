//! `distill export RUN --format safetensors|onnx|hf --to DIR`: a trained network with everything
//! `distill predict` (or another runtime) needs, written atomically.
//!
//! Everything is written into a temporary folder beside DIR (`.NAME.partial-PID`), which is renamed to DIR
//! only when every file is there; any error removes it, so DIR is either the whole export or untouched.
//! The plugin writes its own files and the weights (`Plugin::export`: safetensors, ONNX, or Hugging Face's
//! layout for text students); the CLI adds `card.json`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use distill_core::{
    checkpoint::{read_json, write_json_atomic},
    deploy::{ExportRequest, FORMATS},
    recipe::Recipe,
};
use distill_registry::Registry;

use crate::cards::Card;
use crate::dirs::{data_dir, device, dir_from, Dirs};
use crate::plugins::find_plugin;

/// What `distill export` is asked.
pub struct ExportArgs {
    /// The run's output dir.
    pub run: PathBuf,
    /// The export dir.
    pub to: PathBuf,
    /// safetensors, onnx or hf.
    pub format: String,
    /// teacher, scratch or distilled.
    pub phase: String,
    /// Which seed's network.
    pub seed: u64,
    /// Replace an existing export at `to`.
    pub force: bool,
}

/// A temporary folder beside the destination, removed on drop unless it was renamed into place.
struct Staging {
    tmp: PathBuf,
    /// Where an existing export is moved while the new one takes its place.
    old: PathBuf,
    done: bool,
}

impl Staging {
    fn beside(to: &Path) -> Result<Self> {
        let name = to
            .file_name()
            .ok_or_else(|| anyhow!("--to {}: not a folder name", to.display()))?
            .to_string_lossy()
            .into_owned();
        let parent = to
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
        let pid = std::process::id();
        let tmp = parent.join(format!(".{name}.partial-{pid}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| tmp.display().to_string())?;
        }
        std::fs::create_dir(&tmp).with_context(|| tmp.display().to_string())?;
        let old = parent.join(format!(".{name}.old-{pid}"));
        Ok(Self {
            tmp,
            old,
            done: false,
        })
    }

    /// Renames the folder to `to`; an existing `to` is moved aside first and removed after.
    fn commit(mut self, to: &Path) -> Result<()> {
        let old = to.exists().then(|| self.old.clone());
        if let Some(old) = &old {
            std::fs::rename(to, old).with_context(|| format!("moving {} aside", to.display()))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, to) {
            if let Some(old) = &old {
                let _ = std::fs::rename(old, to);
            }
            return Err(e)
                .with_context(|| format!("renaming {} to {}", self.tmp.display(), to.display()));
        }
        self.done = true;
        if let Some(old) = old {
            std::fs::remove_dir_all(&old).with_context(|| old.display().to_string())?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// `distill export`.
pub fn cmd_export(reg: &Registry, a: &ExportArgs, dirs: &Dirs) -> Result<()> {
    if !FORMATS.contains(&a.format.as_str()) {
        bail!(
            "--format {}: expected one of {}",
            a.format,
            FORMATS.join(", ")
        );
    }
    if !distill_core::train::files::PHASES.contains(&a.phase.as_str()) {
        bail!(
            "--phase {}: expected teacher, scratch or distilled",
            a.phase
        );
    }
    if a.to.exists() && !a.force {
        bail!(
            "--to {}: already exists (pass --force to replace it)",
            a.to.display()
        );
    }
    let src = a.run.join(format!("seed-{}", a.seed)).join(&a.phase);
    let weights = src.join("model.safetensors");
    if !weights.exists() {
        bail!(
            "{}: not found (is {} the output dir of a finished `distill run`, with seed {}?)",
            weights.display(),
            a.run.display(),
            a.seed
        );
    }
    let card_path = src.join("card.json");
    let card: Card = read_json(&card_path).map_err(|e| {
        anyhow!("{e} (`distill run` writes it beside every saved model when the run finishes)")
    })?;
    let recipe = Recipe::parse(&card.recipe_toml, &card_path.display().to_string(), false)?;
    let model: toml::Table =
        toml::from_str(&card.model).with_context(|| format!("{}: `model`", card_path.display()))?;
    let plugin = find_plugin(reg, &card.plugin)
        .with_context(|| format!("{}: `plugin`", card_path.display()))?;
    let data_dir = data_dir(&dirs.data_dir);
    let models_dir = dir_from(&dirs.models_dir, "DISTILL_MODELS", "models");
    let device = device(&dirs.device)?;
    let stage = Staging::beside(&a.to)?;
    let info = plugin.export(&ExportRequest {
        format: &a.format,
        recipe: &recipe,
        model: &model,
        weights: &weights,
        dir: &stage.tmp,
        data_dir: &data_dir,
        models_dir: &models_dir,
        device: &device,
    })?;
    let mut files = info.files;
    files.push("card.json".into());
    let exported = Card {
        format: a.format.clone(),
        task: info.task,
        labels: info.labels,
        preprocessing: info.preprocessing,
        export_model: match &info.model {
            Some(m) => toml::to_string(m)?,
            None => String::new(),
        },
        files: files.clone(),
        exported_from: src.display().to_string(),
        ..card
    };
    write_json_atomic(&exported, &stage.tmp.join("card.json"))?;
    stage.commit(&a.to)?;
    println!(
        "exported {} ({} {}) as {} to {}: {}",
        src.display(),
        exported.plugin,
        exported.recipe,
        a.format,
        a.to.display(),
        files.join(", ")
    );
    Ok(())
}
