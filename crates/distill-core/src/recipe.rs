//! Recipes: experiment configs in TOML.
//!
//! A recipe names its plugin, data set, teacher, student, distillation losses (weights, temperature),
//! optimiser and schedule, epochs and seeds, plus a `[quick]` table of overrides applied by `--quick`.
//! Unknown keys are errors; every error names the file and, where the TOML parser knows it, the line and column.
//!
//! ```
//! let text = r#"
//! name = "demo"
//! plugin = "image-classification"
//! dataset = "mnist"
//! [teacher]
//! model = { arch = "mlp", hidden = [32] }
//! epochs = 2
//! optimizer = { kind = "sgd", lr = 0.1 }
//! [student]
//! model = { arch = "mlp", hidden = [8] }
//! epochs = 2
//! optimizer = { kind = "sgd", lr = 0.1 }
//! [distill]
//! losses = [{ name = "kd", temperature = 4.0, weight = 0.9 }, { name = "ce", weight = 0.1 }]
//! [quick.teacher]
//! epochs = 1
//! "#;
//! let recipe = distill_core::recipe::Recipe::parse(text, "demo.toml", false).unwrap();
//! assert_eq!(recipe.teacher.epochs, 2);
//! let quick = distill_core::recipe::Recipe::parse(text, "demo.toml", true).unwrap();
//! assert_eq!(quick.teacher.epochs, 1);
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod typed;

use crate::{losses::LossSpec, Error, Result};
use distill_nn::optim::{OptimizerConfig, ScheduleConfig};
pub use typed::RecipeSource;

fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_batch() -> usize {
    128
}
fn default_eval_batch() -> usize {
    1000
}

/// A whole recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Recipe name (used in reports and output paths).
    pub name: String,
    /// Plugin that runs it, e.g. `"image-classification"`.
    pub plugin: String,
    /// Data set name, e.g. `"mnist"`.
    pub dataset: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Seeds; each seed trains teacher, scratch student and distilled student.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Data options.
    #[serde(default)]
    pub data: DataConfig,
    /// The teacher's training.
    pub teacher: PhaseConfig,
    /// The student's training (used as is from scratch; the distilled run may override parts).
    pub student: PhaseConfig,
    /// Distillation losses and overrides for the distilled run.
    pub distill: DistillConfig,
    /// Overrides applied by `--quick` (same layout as the recipe; tables merge key by key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quick: Option<toml::Table>,
    /// The text it was parsed from, for errors in plugin tables parsed later ([`Recipe::typed`]).
    #[serde(skip)]
    pub source: Source,
}

/// Where a recipe came from; never part of its value (equal for any two recipes, not serialized).
#[derive(Debug, Clone, Default)]
pub struct Source(Option<std::sync::Arc<RecipeSource>>);

impl PartialEq for Source {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::ops::Deref for Source {
    type Target = Option<std::sync::Arc<RecipeSource>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Data options common to every plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training mini-batch size (default 128).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Evaluation batch size (default 1000).
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Number of training samples held out as the validation split (default 0: none).
    #[serde(default)]
    pub validation: usize,
    /// Use only the first N training samples (after the validation hold-out).
    pub train_limit: Option<usize>,
    /// Use only the first N test samples.
    pub test_limit: Option<usize>,
    /// Plugin-specific options (e.g. normalisation).
    pub options: Option<toml::Table>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            batch_size: default_batch(),
            eval_batch_size: default_eval_batch(),
            validation: 0,
            train_limit: None,
            test_limit: None,
            options: None,
        }
    }
}

/// Early stopping on the validation metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Stop after this many epochs without improvement.
    pub patience: usize,
    /// Minimum improvement that counts (default 0).
    #[serde(default)]
    pub min_delta: f64,
}

/// What to do when training diverges (a NaN/Inf loss, or a gradient norm above `max_grad_norm`).
///
/// Without retries the phase stops with an error naming the epoch and step, and the last good checkpoint
/// (the end of the previous epoch) stays on disk. With `retries = N`, the epoch is replayed from its start
/// (weights and optimiser state as they were) with the learning rate multiplied by `backoff`, up to N times
/// per phase; each back-off is recorded in the phase's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Divergence {
    /// A global gradient norm (before clipping) above this counts as divergence.
    pub max_grad_norm: Option<f64>,
    /// How many times to back off and replay (default 0: stop at once).
    #[serde(default)]
    pub retries: usize,
    /// Learning-rate factor per back-off (default 0.5).
    #[serde(default = "default_backoff")]
    pub backoff: f64,
}

fn default_backoff() -> f64 {
    0.5
}

/// How one network is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    /// The architecture, interpreted by the plugin (e.g. `{ arch = "mlp", hidden = [800, 800] }`).
    pub model: toml::Table,
    /// Number of epochs.
    pub epochs: usize,
    /// Training augmentation, interpreted by the plugin (e.g. `"jitter2"`); none by default.
    pub augment: Option<String>,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule (constant by default).
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
    /// Train on this fraction of the training split only, in (0, 1]: a subset drawn once from the run seed
    /// (the same for every phase that sets the same fraction, so scratch and distilled twins share it), e.g.
    /// `student.train_fraction = 0.1` for a low-data student beside a teacher trained on everything.
    pub train_fraction: Option<f64>,
    /// Early stopping on the validation split (needs `data.validation > 0`); the best epoch's weights are kept.
    pub early_stopping: Option<EarlyStopping>,
    /// Divergence guard: gradient-norm limit and automatic learning-rate back-off.
    pub divergence: Option<Divergence>,
    /// Start from these weights (relative to the models dir unless absolute): safetensors, a PyTorch
    /// `.pt`/`.pth`/`.bin` state dict, or a Hugging Face model folder, loaded by
    /// [`crate::network::import_network`]. A teacher with `epochs = 0` is used as loaded; with epochs it is
    /// fine-tuned from them, as a student always is.
    pub pretrained: Option<PathBuf>,
    /// Whether `pretrained` must fit exactly (PyTorch's `strict`): every parameter present with its shape, no
    /// tensor left over (default true). `false` loads what fits and warns about the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// The distilled run: losses, and optional overrides of the student's training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Loss terms, summed with their weights.
    pub losses: Vec<LossSpec>,
    /// Overrides `student.epochs`.
    pub epochs: Option<usize>,
    /// Overrides `student.augment`.
    pub augment: Option<String>,
    /// Overrides `student.optimizer`.
    pub optimizer: Option<OptimizerConfig>,
    /// Overrides `student.schedule`.
    pub schedule: Option<ScheduleConfig>,
}

impl DistillConfig {
    /// The student's phase config with this section's overrides applied.
    pub fn phase(&self, student: &PhaseConfig) -> PhaseConfig {
        let mut p = student.clone();
        if let Some(e) = self.epochs {
            p.epochs = e;
        }
        if let Some(a) = &self.augment {
            p.augment = if a == "none" { None } else { Some(a.clone()) };
        }
        if let Some(o) = &self.optimizer {
            p.optimizer = o.clone();
        }
        if let Some(s) = &self.schedule {
            p.schedule = s.clone();
        }
        p
    }
}

/// Checks a recipe (or run) name: it names a directory under `runs/`, so it is 1-100 characters of
/// `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 100 || !ok_chars || name == "." || name == ".." {
        return Err(format!(
            "= {name:?} is not a valid name: use 1-100 characters of letters, digits, `.`, `_` and `-` (it names \
             the run's directory), not `.` or `..`"
        ));
    }
    Ok(())
}

/// `file:line:column: message` for a TOML error.
pub fn toml_error(text: &str, path: &str, err: &toml::de::Error) -> Error {
    let msg = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            Error::config(format!("{path}:{line}:{col}"), msg)
        }
        None => Error::config(path, msg),
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Merges `over` into `base` key by key: tables merge recursively, any other value replaces the base's.
/// Used for `[quick]` overrides and for the overrides of a `distill bench` suite.
pub fn merge_tables(base: &mut toml::Table, over: &toml::Table) {
    merge(base, over)
}

fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Recipe {
    /// Reads and parses a recipe file; `quick` applies its `[quick]` overrides.
    pub fn load(path: &Path, quick: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string(), quick)
    }

    /// Parses recipe text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &str, quick: bool) -> Result<Self> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        let recipe = if quick {
            match &recipe.quick {
                Some(over) => {
                    let mut table: toml::Table =
                        toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
                    table.remove("quick");
                    merge(&mut table, over);
                    let merged =
                        toml::to_string(&table).map_err(|e| Error::config(path, e.to_string()))?;
                    let mut r: Recipe = toml::from_str(&merged).map_err(|e| {
                        Error::config(
                            format!("{path} [quick]"),
                            e.message().trim().replace('\n', " "),
                        )
                    })?;
                    r.quick = recipe.quick.clone();
                    r
                }
                None => recipe,
            }
        } else {
            // the [quick] tables are checked too, so a typo there fails `distill check`, not only `--quick`
            if recipe.quick.is_some() {
                Self::parse(text, path, true)?;
            }
            recipe
        };
        recipe.validate(path)?;
        let mut recipe = recipe;
        recipe.source = Source(Some(std::sync::Arc::new(RecipeSource {
            path: path.to_string(),
            text: text.to_string(),
        })));
        Ok(recipe)
    }

    /// Parses recipe text, applies its `[quick]` overrides when `quick`, then merges `overrides` over the
    /// result (the same deep merge). Errors in the recipe text name `path` with line and column; errors that
    /// only the merged recipe has name `overrides_label` (e.g. `suite.toml:12:1 [run.overrides]`).
    pub fn parse_with_overrides(
        text: &str,
        path: &str,
        quick: bool,
        overrides: &toml::Table,
        overrides_label: &str,
    ) -> Result<Self> {
        let base = Self::parse(text, path, quick)?;
        if overrides.is_empty() {
            return Ok(base);
        }
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        table.remove("quick");
        if quick {
            if let Some(q) = &base.quick {
                merge(&mut table, q);
            }
        }
        merge(&mut table, overrides);
        let merged = toml::to_string(&table).map_err(|e| Error::config(path, e.to_string()))?;
        let mut r: Recipe = toml::from_str(&merged)
            .map_err(|e| Error::config(overrides_label, e.message().trim().replace('\n', " ")))?;
        r.quick = base.quick.clone();
        r.validate(overrides_label)?;
        r.source = base.source.clone();
        Ok(r)
    }

    /// Checks values that serde cannot (ranges, non-empty lists); errors name the key.
    pub fn validate(&self, path: &str) -> Result<()> {
        let err = |key: &str, msg: String| Error::config(path, format!("`{key}` {msg}"));
        check_name(&self.name).map_err(|m| err("name", m))?;
        if self.seeds.is_empty() {
            return Err(err("seeds", "must list at least one seed".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(err(
                "seeds",
                format!(
                    "lists seed {dup} twice (each seed is one independent run; list each once)"
                ),
            ));
        }
        if self.data.batch_size == 0 || self.data.eval_batch_size == 0 {
            return Err(err("data.batch_size", "must be > 0".into()));
        }
        for (name, phase) in [("teacher", &self.teacher), ("student", &self.student)] {
            if phase.epochs == 0 && !(name == "teacher" && phase.pretrained.is_some()) {
                return Err(err(&format!("{name}.epochs"), "must be > 0".into()));
            }
            if phase.strict.is_some() && phase.pretrained.is_none() {
                let msg = format!("only applies to `{name}.pretrained`, which is not set");
                return Err(err(&format!("{name}.strict"), msg));
            }
            phase
                .optimizer
                .validate()
                .map_err(|e| err(&format!("{name}.optimizer"), e.to_string()))?;
            phase
                .schedule
                .validate()
                .map_err(|e| err(&format!("{name}.schedule"), e.to_string()))?;
            if let Some(f) = phase.train_fraction {
                if !(f > 0.0 && f <= 1.0) {
                    return Err(err(
                        &format!("{name}.train_fraction"),
                        format!("must be in (0, 1], got {f}"),
                    ));
                }
            }
            if let Some(c) = phase.clip_grad_norm {
                if !(c > 0.0 && c.is_finite()) {
                    return Err(err(
                        &format!("{name}.clip_grad_norm"),
                        format!("must be > 0, got {c}"),
                    ));
                }
            }
            if let Some(d) = &phase.divergence {
                if !(d.backoff > 0.0 && d.backoff < 1.0) {
                    return Err(err(
                        &format!("{name}.divergence.backoff"),
                        format!("must be in (0, 1), got {}", d.backoff),
                    ));
                }
                if let Some(m) = d.max_grad_norm {
                    if !(m > 0.0 && m.is_finite()) {
                        return Err(err(
                            &format!("{name}.divergence.max_grad_norm"),
                            format!("must be a positive number, got {m}"),
                        ));
                    }
                }
            }
            if phase.early_stopping.is_some() && self.data.validation == 0 {
                return Err(err(
                    &format!("{name}.early_stopping"),
                    "needs a validation split: set data.validation to a number of held-out samples"
                        .into(),
                ));
            }
        }
        if self.distill.losses.is_empty() {
            return Err(err("distill.losses", "must list at least one loss".into()));
        }
        for (i, l) in self.distill.losses.iter().enumerate() {
            if !(l.weight.is_finite() && l.weight >= 0.0) {
                return Err(err(
                    &format!("distill.losses[{i}].weight"),
                    format!("must be >= 0, got {}", l.weight),
                ));
            }
            if let Some(t) = l.temperature {
                if !(t > 0.0 && t.is_finite()) {
                    return Err(err(
                        &format!("distill.losses[{i}].temperature"),
                        format!("must be > 0, got {t}"),
                    ));
                }
            }
        }
        if let Some(o) = &self.distill.optimizer {
            o.validate()
                .map_err(|e| err("distill.optimizer", e.to_string()))?;
        }
        if let Some(e) = self.distill.epochs {
            if e == 0 {
                return Err(err("distill.epochs", "must be > 0".into()));
            }
        }
        Ok(())
    }

    /// The recipe as a run report records it (`RunReport::recipe_toml`): this TOML without its `[quick]`
    /// table, whose overrides are already applied. `distill bench` recognises a finished run by it.
    pub fn report_toml(&self) -> std::result::Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        shown.quick = None;
        toml::to_string(&shown)
    }

    /// The phase config of the distilled student.
    pub fn distilled_phase(&self) -> PhaseConfig {
        self.distill.phase(&self.student)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"name = "t"
plugin = "p"
dataset = "d"
[teacher]
model = { arch = "mlp" }
epochs = 3
optimizer = { kind = "sgd", lr = 0.1 }
[student]
model = { arch = "mlp" }
epochs = 2
optimizer = { kind = "adamw", lr = 0.001 }
[distill]
losses = [{ name = "kd", temperature = 4.0 }]
"#;

    #[test]
    fn parses_and_applies_defaults() {
        let r = Recipe::parse(BASE, "t.toml", false).unwrap();
        assert_eq!(r.seeds, vec![0]);
        assert_eq!(r.data.batch_size, 128);
        assert_eq!(r.distill.losses[0].weight, 1.0);
        assert_eq!(r.distilled_phase().epochs, 2);
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let text = BASE.replace("epochs = 3", "epochs = 3\nepochz = 4");
        let e = Recipe::parse(&text, "r.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("r.toml:7:1:"), "{e}");
        assert!(e.contains("unknown field `epochz`"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn wrong_type_names_file_line_and_column() {
        let text = BASE.replace("epochs = 3", "epochs = \"three\"");
        let e = Recipe::parse(&text, "r.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("r.toml:6:10:"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn quick_overrides_merge_deeply() {
        let text = format!("{BASE}[quick.teacher]\nepochs = 1\n[quick.data]\ntrain_limit = 100\n");
        let r = Recipe::parse(&text, "t.toml", true).unwrap();
        assert_eq!(r.teacher.epochs, 1);
        assert_eq!(r.teacher.optimizer.lr, 0.1);
        assert_eq!(r.data.train_limit, Some(100));
        let full = Recipe::parse(&text, "t.toml", false).unwrap();
        assert_eq!(full.teacher.epochs, 3);
        let bad = format!("{BASE}[quick.teacher]\nepoch = 1\n");
        let e = Recipe::parse(&bad, "t.toml", true).unwrap_err().to_string();
        assert!(e.contains("[quick]") && e.contains("epoch"), "{e}");
        // also when the recipe is read without --quick (`distill check`)
        let e = Recipe::parse(&bad, "t.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[quick]") && e.contains("epoch"), "{e}");
        let bad = format!("{BASE}[quick.student.model]\nhiden = [8]\n");
        assert!(
            Recipe::parse(&bad, "t.toml", false).is_ok(),
            "model tables are the plugin's to check"
        );
    }

    #[test]
    fn overrides_merge_after_quick() {
        let text = format!("{BASE}[quick.teacher]\nepochs = 1\n");
        let over: toml::Table =
            toml::from_str("name = \"t2\"\n[teacher.optimizer]\nlr = 0.5\n").unwrap();
        let r = Recipe::parse_with_overrides(&text, "t.toml", true, &over, "s.toml:3:1").unwrap();
        assert_eq!(
            (r.name.as_str(), r.teacher.epochs, r.teacher.optimizer.lr),
            ("t2", 1, 0.5)
        );
        let r = Recipe::parse_with_overrides(&text, "t.toml", false, &over, "s.toml:3:1").unwrap();
        assert_eq!((r.teacher.epochs, r.student.epochs), (3, 2));
        let bad: toml::Table = toml::from_str("[teacher]\nepochz = 1\n").unwrap();
        let e = Recipe::parse_with_overrides(&text, "t.toml", false, &bad, "s.toml:3:1")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.toml:3:1") && e.contains("epochz"), "{e}");
        let zero: toml::Table = toml::from_str("[student]\nepochs = 0\n").unwrap();
        let e = Recipe::parse_with_overrides(&text, "t.toml", false, &zero, "s.toml:3:1")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.toml:3:1") && e.contains("student.epochs"),
            "{e}"
        );
    }

    #[test]
    fn names_that_leave_the_runs_dir_and_duplicate_seeds_are_refused() {
        for bad in ["../x", "/abs", "a/b", ".", "..", "", "a b", "x\\y"] {
            let text = BASE.replace("name = \"t\"", &format!("name = {bad:?}"));
            let e = Recipe::parse(&text, "t.toml", false)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t.toml: `name`") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        for good in ["hinton-mnist", "sst2_tinybert.v2", "..x"] {
            let text = BASE.replace("name = \"t\"", &format!("name = {good:?}"));
            assert!(Recipe::parse(&text, "t.toml", false).is_ok(), "{good}");
        }
        let text = BASE.replace("dataset = \"d\"", "dataset = \"d\"\nseeds = [0, 1, 0]");
        let e = Recipe::parse(&text, "t.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`seeds`") && e.contains("seed 0 twice"), "{e}");
    }

    #[test]
    fn value_checks_name_the_key() {
        let text = BASE.replace("temperature = 4.0", "temperature = -1.0");
        let e = Recipe::parse(&text, "t.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("distill.losses[0].temperature"), "{e}");
        let text = BASE.replace("lr = 0.1", "lr = 0.0");
        let e = Recipe::parse(&text, "t.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("teacher.optimizer"), "{e}");
        for bad in ["0.0", "1.5", "nan"] {
            let text = BASE.replace(
                "[student]\n",
                &format!("[student]\ntrain_fraction = {bad}\n"),
            );
            let e = Recipe::parse(&text, "t.toml", false)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("student.train_fraction") && e.contains("(0, 1]"),
                "{e}"
            );
        }
        let text = BASE.replace("[student]\n", "[student]\ntrain_fraction = 0.1\n");
        let r = Recipe::parse(&text, "t.toml", false).unwrap();
        assert_eq!(r.student.train_fraction, Some(0.1));
        assert_eq!(
            r.distilled_phase().train_fraction,
            Some(0.1),
            "the distilled twin's too"
        );
        assert_eq!(r.teacher.train_fraction, None);
    }
}
