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
//! count them in the report's `notes`), and `[data.options.frontend]` ([`frontend::FrontEndConfig`]).
//!
//! ```
//! use distill_core::Domain;
//! let m = distill_audio::AudioPlugin.manifest();
//! assert_eq!(m.name, "audio-classification");
//! assert!(m.models.iter().any(|a| a == "ds-cnn"));
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod frontend;
pub mod models;
pub mod wav;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_core::{Device, Tensor};
use distill_core::{
    pipeline::run_recipe,
    recipe::Recipe,
    report::{PhaseSummary, RunReport, Stat},
    task::MetricInfo,
    Batch, BuildContext, Domain, Error, Manifest, Network, Plugin, Result, Rng, RunContext, Split,
    Task, TaskInfo,
};
use serde::Deserialize;

use crate::{
    data::{FeatureSet, FsddSplit, FSDD_SPEAKERS},
    frontend::{FrontEnd, FrontEndConfig, SpecAugment},
    models::{build_model, ModelSpec, ARCHS},
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
    Ok(if root.is_absolute() {
        root.clone()
    } else {
        data_dir.join(root)
    })
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
            metric: MetricInfo {
                name: "accuracy".into(),
                higher_is_better: true,
            },
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
        // the recipe as asked for (every speaker), not the first fold's: `distill bench` recognises a finished
        // run by it
        out.recipe_toml = recipe
            .report_toml()
            .map_err(|e| Error::msg(e.to_string()))?;
        Ok(out)
    }
}

/// One report from per-speaker reports, every figure over all folds: each phase's metric, last-epoch metric
/// and extras become statistics over the held-out speakers (of each speaker's mean over seeds), latency the
/// mean over folds, peak memory the largest, wall time the sum, and the test count the sum (every clip is
/// tested once, in its speaker's fold); `notes.per_speaker` keeps every speaker's figures.
pub fn combine_loso(reports: &[RunReport], speakers: &[&str]) -> RunReport {
    let mut out = reports[0].clone();
    let n = reports.len() as f64;
    let over = |f: &dyn Fn(&RunReport) -> &PhaseSummary| -> PhaseSummary {
        let mut p = f(&reports[0]).clone();
        p.metric = Stat::of(&reports.iter().map(|r| f(r).metric.mean).collect::<Vec<_>>());
        p.best_val_epoch_metric = None;
        let last: Option<Vec<f64>> = reports
            .iter()
            .map(|r| f(r).last_epoch_metric.as_ref().map(|s| s.mean))
            .collect();
        p.last_epoch_metric = last.map(|v| Stat::of(&v));
        p.latency_ms.batch1 = reports.iter().map(|r| f(r).latency_ms.batch1).sum::<f64>() / n;
        p.latency_ms.batch256 = reports
            .iter()
            .map(|r| f(r).latency_ms.batch256)
            .sum::<f64>()
            / n;
        p.peak_rss_mb = reports.iter().map(|r| f(r).peak_rss_mb).fold(0.0, f64::max);
        for (k, v) in p.extra.iter_mut() {
            *v = Stat::of(
                &reports
                    .iter()
                    .map(|r| f(r).extra.get(k).map_or(f64::NAN, |s| s.mean))
                    .collect::<Vec<_>>(),
            );
        }
        p.wall_s = reports.iter().map(|r| f(r).wall_s).sum();
        p.curves = reports.iter().flat_map(|r| f(r).curves.clone()).collect();
        p
    };
    out.teacher = over(&|r| &r.teacher);
    out.scratch = over(&|r| &r.scratch);
    out.distilled = over(&|r| &r.distilled);
    out.derived = RunReport::derive(&out.metric, &out.teacher, &out.scratch, &out.distilled);
    out.test_samples = reports
        .iter()
        .map(|r| r.test_samples)
        .sum::<Option<usize>>();
    let mut per = serde_json::Map::new();
    for (s, r) in speakers.iter().zip(reports) {
        per.insert(
            s.to_string(),
            serde_json::json!({
                "teacher": r.teacher.metric.mean,
                "scratch": r.scratch.metric.mean,
                "distilled": r.distilled.metric.mean,
                "notes": r.notes,
            }),
        );
    }
    out.notes = BTreeMap::new();
    out.notes.insert(
        "split".into(),
        serde_json::json!("leave-one-speaker-out: metric values are per held-out speaker, in the order of `speakers`"),
    );
    out.notes
        .insert("speakers".into(), serde_json::json!(speakers));
    out.notes
        .insert("per_speaker".into(), serde_json::Value::Object(per));
    let skipped: u64 = reports
        .iter()
        .filter_map(|r| r.notes.get("skipped_files").and_then(|v| v.as_u64()))
        .sum();
    out.notes
        .insert("skipped_files".into(), serde_json::json!(skipped));
    out
}

/// An audio classification task: features of every clip computed once and kept in memory.
pub struct AudioTask {
    info: TaskInfo,
    train: FeatureSet,
    val: FeatureSet,
    test: FeatureSet,
    notes: BTreeMap<String, serde_json::Value>,
    device: Device,
}

impl AudioTask {
    /// A task over featurised sets; the last `validation` training clips become the validation split.
    pub fn new(
        info: TaskInfo,
        train: FeatureSet,
        test: FeatureSet,
        validation: usize,
        train_limit: Option<usize>,
        notes: BTreeMap<String, serde_json::Value>,
        device: Device,
    ) -> Result<Self> {
        if validation >= train.len() {
            return Err(Error::config(
                "data.validation",
                format!(
                    "holds out {validation} clips but the training set has only {}",
                    train.len()
                ),
            ));
        }
        let n_train = train.len() - validation;
        let val = train.subset(&(n_train..train.len()).collect::<Vec<_>>());
        let keep = train_limit.unwrap_or(n_train).min(n_train);
        let train = train.subset(&(0..keep).collect::<Vec<_>>());
        Ok(Self {
            info,
            train,
            val,
            test,
            notes,
            device,
        })
    }

    fn set(&self, split: Split) -> &FeatureSet {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

impl Task for AudioTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn len(&self, split: Split) -> usize {
        self.set(split).len()
    }

    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        augment: Option<&str>,
        rng: &mut Rng,
    ) -> Result<Batch> {
        let aug = augment.map(SpecAugment::parse).transpose()?;
        let set = self.set(split);
        let (rows, frames) = (set.rows, set.frames);
        let n = rows * frames;
        let mut x = Vec::with_capacity(indices.len() * n);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= set.len() {
                return Err(Error::msg(format!(
                    "sample index {i} is out of range for the {split:?} split ({} clips)",
                    set.len()
                )));
            }
            let start = x.len();
            x.extend_from_slice(&set.features[i * n..(i + 1) * n]);
            if let Some(a) = &aug {
                a.apply(&mut x[start..], rows, frames, rng);
            }
            y.push(set.labels[i]);
        }
        let b = indices.len();
        Ok(Batch {
            inputs: Tensor::from_vec(x, (b, 1, rows, frames), &self.device)?,
            targets: Tensor::from_vec(y, b, &self.device)?,
            indices: indices.to_vec(),
        })
    }

    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
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
            losses: Vec::new(),
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
                let (tr, te) = data::fsdd_clips(&ctx.data_dir.join("fsdd"), &split)?;
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
        let test = match recipe.data.test_limit {
            Some(n) if n < test.len() => test[..n].to_vec(),
            _ => test,
        };
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
        notes.insert("train_clips".into(), serde_json::json!(train_set.len()));
        notes.insert("test_clips".into(), serde_json::json!(test_set.len()));
        if let Some(s) = &o.speaker {
            notes.insert("held_out_speaker".into(), serde_json::json!(s));
        }
        if let Some(c) = classes {
            notes.insert("classes".into(), serde_json::json!(c));
        }
        Ok(Box::new(AudioTask::new(
            info,
            train_set,
            test_set,
            recipe.data.validation,
            recipe.data.train_limit,
            notes,
            ctx.device.clone(),
        )?))
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use distill_core::report::{EpochRecord, Latency, PhaseResult, PhaseSummary, RunReport};

    use super::*;

    /// A one-seed fold: final metric `m`, last-epoch metric `last`, batch-1 latency `lat`, `tests` test clips.
    fn fold(m: f64, last: f64, lat: f64, rss: f64, tests: usize) -> RunReport {
        let phase = PhaseSummary::of(&[PhaseResult {
            metric: m,
            best_val_epoch_metric: None,
            best_val_epoch: None,
            extra: BTreeMap::from([("errors".to_string(), (1.0 - m) * tests as f64)]),
            params: 10,
            bytes: 40,
            flops: 20,
            latency_ms: Latency {
                batch1: lat,
                batch256: 10.0 * lat,
            },
            peak_rss_mb: rss,
            wall_s: 2.0,
            epochs: 1,
            curve: vec![EpochRecord {
                epoch: 1,
                train_loss: 0.5,
                loss_terms: BTreeMap::new(),
                lr: 0.1,
                val_metric: None,
                test_metric: Some(last),
                seconds: 2.0,
            }],
            reused: false,
            divergence_backoffs: Vec::new(),
        }]);
        let metric = MetricInfo {
            name: "accuracy".into(),
            higher_is_better: true,
        };
        RunReport {
            plugin: "audio-classification".into(),
            recipe: "fsdd-loso".into(),
            dataset: "fsdd".into(),
            quick: false,
            seeds: vec![0],
            derived: RunReport::derive(&metric, &phase, &phase, &phase),
            metric,
            teacher: phase.clone(),
            scratch: phase.clone(),
            distilled: phase,
            recipe_toml: String::new(),
            notes: BTreeMap::new(),
            domain: None,
            test_samples: Some(tests),
            git_revision: None,
            run_dir: None,
            copied_from: None,
        }
    }

    #[test]
    fn loso_combines_every_figure_over_all_folds() {
        let folds = [
            fold(0.9, 0.8, 1.0, 100.0, 500),
            fold(0.7, 0.6, 3.0, 300.0, 500),
            fold(0.5, 0.4, 2.0, 200.0, 400),
        ];
        let c = combine_loso(&folds, &["a", "b", "c"]);
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(c.teacher.metric.mean, 0.7);
        assert_eq!(c.teacher.metric.values, [0.9, 0.7, 0.5]);
        // the last-epoch figure is over the folds too, not the first fold's 0.8
        let last = c.teacher.last_epoch_metric.as_ref().expect("last epoch");
        close(last.mean, 0.6);
        close(c.teacher.latency_ms.batch1, 2.0);
        close(c.teacher.latency_ms.batch256, 20.0);
        close(c.teacher.peak_rss_mb, 300.0);
        close(c.teacher.wall_s, 6.0);
        assert_eq!(c.test_samples, Some(1400), "every clip is tested once");
        close(c.teacher.extra["errors"].mean, (50.0 + 150.0 + 200.0) / 3.0);
        assert_eq!(c.notes["speakers"], serde_json::json!(["a", "b", "c"]));
    }
}
