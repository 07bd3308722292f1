//! # distill-audio: the acoustic-model plugin
//!
//! WAV files (hound; 8/16/24/32-bit integer and 32-bit float, any channel count, any rate in 1-384 kHz,
//! down-mixed and resampled) → log-mel or MFCC features (rustfft; checked against librosa) → a keyword-spotting
//! network. Data: FSDD (official split, or leave-one-speaker-out) and folder-per-class WAVs (the Speech Commands
//! layout). Models: a `res-cnn` teacher and a `ds-cnn` student ("Hello Edge"). Augmentation: SpecAugment
//! masks. Distillation losses are distill-core's (KD, hint with a 1x1 adapter on a time-frequency map, ...).
//!
//! Recipe `[data.options]` keys: `split` (`"official"` or `"loso"`), `speaker` (the held-out FSDD speaker;
//! with `split = "loso"` and no speaker, `run` goes through all six and reports per speaker), `root`
//! (`audio-folder`: the folder, relative to the data dir), `skip_bad_files` (leave unreadable WAVs out and
//! count them in the report's `notes`), and `[data.options.frontend]` ([`data::frontend::FrontEndConfig`]).
//!
//! ```
//! use distill_core::Domain;
//! let m = distill_audio::AudioPlugin.manifest();
//! assert_eq!(m.name, "audio-classification");
//! assert!(m.models.iter().any(|a| a == "ds-cnn"));
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod predict;
pub mod task;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_core::Tensor;
use distill_core::{
    deploy::{ExportInfo, ExportRequest, PredictRequest},
    examples::SplitTask,
    pipeline::run_recipe,
    recipe::Recipe,
    report::RunReport,
    BuildContext, Domain, Error, Manifest, Network, Plugin, Result, RunContext, Task, TaskInfo,
};
use serde::Deserialize;

use crate::{
    data::{
        frontend::{FrontEnd, FrontEndConfig, SpecAugment},
        FsddSplit, FSDD_SPEAKERS,
    },
    losses::LOSSES,
    metrics::{accuracy_metric, combine_loso},
    models::{build_model, ModelSpec, ARCHS},
    task::AudioExamples,
};

/// Data sets this plugin reads.
pub const DATASETS: &[&str] = &["fsdd", "audio-folder"];

/// The acoustic-model (keyword-spotting) plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioPlugin;

/// `[data.options]` of an audio recipe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudioOptions {
    /// `official` (default) or `loso` (FSDD only).
    split: Option<String>,
    /// `loso`: the held-out speaker.
    speaker: Option<String>,
    /// `audio-folder`: the folder (relative to the data dir) with `CLASS/*.wav` and `testing_list.txt`.
    root: Option<PathBuf>,
    /// Leave unreadable files out (and count them) instead of stopping.
    #[serde(default)]
    skip_bad_files: bool,
    /// Front-end settings.
    #[serde(default)]
    frontend: FrontEndConfig,
}

fn options(recipe: &Recipe) -> Result<AudioOptions> {
    let o: AudioOptions = recipe.options()?;
    o.frontend.validate()?;
    match o.split.as_deref() {
        None | Some("official") => {
            if o.speaker.is_some() {
                return Err(Error::config(
                    "data.options.speaker",
                    "is only used with split = \"loso\"",
                ));
            }
        }
        Some("loso") if recipe.dataset == "fsdd" => {}
        Some("loso") => {
            return Err(Error::config(
                "data.options.split",
                "\"loso\" (leave one speaker out) is only available for fsdd",
            ))
        }
        Some(other) => {
            return Err(Error::config(
                "data.options.split",
                format!("unknown split `{other}` (known: official, loso)"),
            ))
        }
    }
    Ok(o)
}

fn folder_root(data_dir: &Path, o: &AudioOptions) -> Result<PathBuf> {
    let root = o.root.as_ref().ok_or_else(|| {
        Error::config(
            "data.options",
            "audio-folder needs `root` (a folder with CLASS/*.wav and testing_list.txt)",
        )
    })?;
    Ok(data_dir.join(root)) // an absolute root stays as it is
}

impl AudioPlugin {
    fn info_with(&self, recipe: &Recipe, classes: Option<usize>) -> Result<TaskInfo> {
        let o = options(recipe)?;
        let classes = match recipe.dataset.as_str() {
            "fsdd" => 10,
            "audio-folder" => classes.unwrap_or(2),
            other => {
                return Err(Error::Unknown {
                    what: "data set",
                    name: other.to_string(),
                    known: DATASETS.join(", "),
                })
            }
        };
        Ok(TaskInfo {
            dataset: recipe.dataset.clone(),
            input_shape: vec![1, o.frontend.rows(), o.frontend.frames],
            num_classes: classes,
            metric: accuracy_metric(),
        })
    }

    /// Leave-one-speaker-out over every FSDD speaker: one run per held-out speaker under
    /// `out/loso-SPEAKER/`, combined into one report whose metric values are per speaker.
    fn run_loso_all(&self, recipe: &Recipe, ctx: &RunContext) -> Result<RunReport> {
        let mut reports = Vec::new();
        for s in FSDD_SPEAKERS {
            let mut r = recipe.clone();
            let mut opts = r.data.options.clone().unwrap_or_default();
            opts.insert("speaker".into(), toml::Value::String(s.to_string()));
            r.data.options = Some(opts);
            let mut c = ctx.clone();
            c.out_dir = ctx.out_dir.join(format!("loso-{s}"));
            if !ctx.quiet {
                eprintln!("[loso] held-out speaker {s}");
            }
            reports.push(run_recipe(self, &r, &c)?);
        }
        let mut out = combine_loso(&reports, FSDD_SPEAKERS);
        // the KD gain's interval over every clip: each is tested once, in its speaker's fold
        let folds: Vec<_> = FSDD_SPEAKERS
            .iter()
            .map(|s| ctx.out_dir.join(format!("loso-{s}")))
            .collect();
        out.kd_gain_interval =
            distill_core::stats::gain_interval(&folds, &recipe.seeds, out.metric.higher_is_better)?;
        // the recipe as asked for (every speaker), not the first fold's: `distill bench` recognises a finished
        // run by it
        out.recipe_toml = recipe
            .report_toml()
            .map_err(|e| Error::msg(e.to_string()))?;
        // the run is the folds' parent dir, not the first fold's: `distill bench` marks a run read back from
        // another dir as copied
        out.run_dir = std::fs::canonicalize(&ctx.out_dir)
            .ok()
            .map(|p| p.display().to_string());
        Ok(out)
    }
}

impl Plugin for AudioPlugin {
    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> Result<RunReport> {
        let o = options(recipe)?;
        if o.split.as_deref() == Some("loso") && o.speaker.is_none() {
            return self.run_loso_all(recipe, ctx);
        }
        run_recipe(self, recipe, ctx)
    }
}

impl Domain for AudioPlugin {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "audio-classification".into(),
            domain: "acoustic models (keyword spotting)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "WAV -> log-mel/MFCC; FSDD and folder-per-class data; res-cnn teacher, DS-CNN student"
                .into(),
            models: ARCHS.iter().map(|s| s.to_string()).collect(),
            datasets: DATASETS.iter().map(|s| s.to_string()).collect(),
            losses: LOSSES.iter().map(|s| s.to_string()).collect(),
            recipes: vec![
                "plugins/audio/recipes/fsdd-kws.toml".into(),
                "plugins/audio/recipes/fsdd-loso.toml".into(),
            ],
        }
    }

    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        self.info_with(recipe, None)
    }

    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>> {
        let o = options(recipe)?;
        // how many of the training clips (the last ones) are FSDD's validation split
        let mut fsdd_val = None;
        let (train, test, classes) = match recipe.dataset.as_str() {
            "fsdd" => {
                let split = match (o.split.as_deref(), &o.speaker) {
                    (Some("loso"), Some(s)) => FsddSplit::LeaveOneSpeakerOut(s.clone()),
                    (Some("loso"), None) => {
                        return Err(Error::config(
                            "data.options.speaker",
                            "split = \"loso\" needs the held-out `speaker` here (`distill run` goes through every speaker itself)",
                        ))
                    }
                    _ => FsddSplit::Official,
                };
                let (tr, te, n_val) = data::fsdd_clips(&ctx.data_dir.join("fsdd"), &split)?;
                fsdd_val = Some(n_val);
                (tr, te, None)
            }
            _ => {
                let (tr, te, classes) = data::folder_clips(&folder_root(&ctx.data_dir, &o)?)?;
                (tr, te, Some(classes))
            }
        };
        let info = self.info_with(recipe, classes.as_ref().map(|c| c.len()))?;
        let fe = FrontEnd::new(o.frontend.clone())?;
        let (train_set, mut skipped) = data::featurize(&train, &fe, o.skip_bad_files)?;
        // test_limit again here only to spare featurising clips the test split will not hold
        let test = match recipe.data.test_limit {
            Some(n) if n < test.len() => test[..n].to_vec(),
            _ => test,
        };
        if let Some(n_val) = fsdd_val {
            // FSDD's validation split is fixed (repetitions 5-9): data.validation must hold out exactly it
            let lost = train[train.len() - n_val..]
                .iter()
                .filter(|c| skipped.iter().any(|(p, _)| p == &c.path))
                .count();
            let n = n_val - lost;
            let v = recipe.data.validation;
            if v != 0 && v != n {
                return Err(Error::config(
                    "data.validation",
                    format!(
                        "is {v}, but FSDD's validation split is repetitions {}-{} of the training recordings: \
                         {n} clips here; set data.validation to {n} (or 0)",
                        data::FSDD_VALIDATION_REPS.start(),
                        data::FSDD_VALIDATION_REPS.end()
                    ),
                ));
            }
        }
        let (test_set, s2) = data::featurize(&test, &fe, o.skip_bad_files)?;
        skipped.extend(s2);
        if !ctx.quiet {
            for (p, e) in &skipped {
                eprintln!("skipped {}: {e}", p.display());
            }
        }
        if train_set.is_empty() || test_set.is_empty() {
            return Err(Error::msg(format!(
                "no readable clips left ({} train, {} test; {} skipped)",
                train_set.len(),
                test_set.len(),
                skipped.len()
            )));
        }
        let mut notes = BTreeMap::new();
        notes.insert("skipped_files".into(), serde_json::json!(skipped.len()));
        if !skipped.is_empty() {
            let list: Vec<String> = skipped
                .iter()
                .take(20)
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect();
            notes.insert("skipped".into(), serde_json::json!(list));
        }
        let n_val = recipe.data.validation.min(train_set.len());
        notes.insert(
            "train_clips".into(),
            serde_json::json!(train_set.len() - n_val),
        );
        notes.insert("validation_clips".into(), serde_json::json!(n_val));
        notes.insert("test_clips".into(), serde_json::json!(test_set.len()));
        if let Some(s) = &o.speaker {
            notes.insert("held_out_speaker".into(), serde_json::json!(s));
        }
        if let Some(c) = classes {
            notes.insert("classes".into(), serde_json::json!(c));
        }
        // the validation split, train_limit and test_limit are cut by core's SplitTask
        let examples = AudioExamples::new(info, train_set, test_set, notes, ctx.device.clone());
        Ok(Box::new(SplitTask::new(examples, &recipe.data)?))
    }

    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>> {
        let (info, seed, device) = (ctx.info, ctx.seed, ctx.device);
        let spec: ModelSpec = ctx.model(model)?;
        let s = &info.input_shape;
        build_model(&spec, [s[0], s[1], s[2]], info.num_classes, seed, device)
    }

    fn check_augment(&self, name: &str) -> Result<()> {
        SpecAugment::parse(name).map(|_| ())
    }

    fn export_files(&self, req: &ExportRequest) -> Result<ExportInfo> {
        let o = options(req.recipe)?;
        let labels: Vec<String> = match req.recipe.dataset.as_str() {
            "fsdd" => (0..10).map(|d| d.to_string()).collect(),
            // a folder's classes are its sorted class folders, as the loader labels them
            _ => data::folder_clips(&folder_root(req.data_dir, &o)?)?.2,
        };
        Ok(ExportInfo {
            task: Some(self.info_with(req.recipe, Some(labels.len()))?),
            labels,
            preprocessing: predict::preprocessing(&FrontEnd::new(o.frontend)?),
            ..ExportInfo::default()
        })
    }

    fn predict_input(&self, req: &PredictRequest) -> Result<Tensor> {
        let fe = FrontEnd::new(options(req.recipe)?.frontend)?;
        predict::wav_batch(req.inputs, &fe, req.device)
    }
}
