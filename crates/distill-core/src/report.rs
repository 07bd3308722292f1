//! The result schema shared by every domain (`report.json`) and its Markdown rendering (`report.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{stats::GainInterval, task::MetricInfo};

/// Reads `null` as NaN: serde_json writes a NaN (an undefined figure, such as the retention against a
/// teacher that scored 0) as `null`, and a report must read back what it wrote.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`f64_or_nan`] for every element.
fn vec_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// Version of the report schema; bumped whenever a key is renamed or removed.
pub const SCHEMA_VERSION: u32 = 1;

/// Mean, standard deviation (sample, n-1) and the values over seeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Mean.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    #[serde(deserialize_with = "f64_or_nan")]
    pub std: f64,
    /// One value per seed.
    #[serde(deserialize_with = "vec_f64_or_nan")]
    pub values: Vec<f64>,
}

impl Stat {
    /// Statistics of `values`.
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self::default();
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Self {
            mean,
            std,
            values: values.to_vec(),
        }
    }
}

/// One epoch of a training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean of each named loss term.
    #[serde(default)]
    pub loss_terms: BTreeMap<String, f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Validation metric, when there is a validation split.
    pub val_metric: Option<f64>,
    /// Test metric after this epoch: only in runs made before 2026-12-07, which evaluated the test split
    /// after every epoch (nothing was chosen on it, but it was read); now `None`, as the test split is read
    /// once, after training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_metric: Option<f64>,
    /// Seconds spent in this epoch (training + evaluation).
    pub seconds: f64,
}

/// Inference latency in milliseconds, measured by [`crate::train::measure_latency`] (its protocol:
/// [`crate::train::LATENCY_PROTOCOL`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median at batch 1 on all cores (the one figure reports written before the protocol carried, then from
    /// at most 30 passes cut off after 2 s).
    pub batch1: f64,
    /// Median at batch 256 on all cores.
    pub batch256: f64,
    /// Every timed setting (batch 1 and 256, one thread and all cores, and a task's whole input where it has
    /// one); empty in reports written before the protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timings: Vec<Timing>,
    /// What one item of a batch is, e.g. `"sample"` or `"node with its neighbourhood"` ([`crate::Task::latency_unit`]);
    /// absent in reports written before the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The machine's 1-minute load average when the measurement started (Linux), so a figure taken while
    /// other processes were busy can be told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_avg: Option<f64>,
}

/// One timed setting of the latency protocol: warm-up passes, then `reps` timed passes, one after another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Items per pass (samples or nodes); for a whole-input timing, the number of items in it.
    pub batch: usize,
    /// `None` for a batch of [`Latency::unit`]s; the input's name for a whole input, e.g. `"whole graph"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Compute threads: 1, or all of the process's pool.
    pub threads: usize,
    /// Median of the timed passes (ms).
    #[serde(deserialize_with = "f64_or_nan")]
    pub median_ms: f64,
    /// 90th percentile of the timed passes (ms, linear interpolation between order statistics).
    #[serde(deserialize_with = "f64_or_nan")]
    pub p90_ms: f64,
    /// Timed passes (per seed; over seeds in a summary, each seed's count).
    pub reps: usize,
    /// Untimed passes before them.
    pub warmup: usize,
    /// Process CPU time over wall time during the timed passes: about 1 when one thread really did the work,
    /// up to `threads` when all of them did (Linux; `None` elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_busy: Option<f64>,
}

impl Latency {
    /// The timing of `batch` items of [`Latency::unit`] on `threads` threads (`None` for all cores).
    pub fn batch(&self, batch: usize, threads: Option<usize>) -> Option<&Timing> {
        let all = self.all_cores();
        self.timings
            .iter()
            .find(|t| t.input.is_none() && t.batch == batch && t.threads == threads.unwrap_or(all))
    }

    /// The thread count of the all-cores timings (the largest measured).
    pub fn all_cores(&self) -> usize {
        self.timings.iter().map(|t| t.threads).max().unwrap_or(0)
    }

    /// Timings of whole inputs (e.g. the whole graph).
    pub fn whole_inputs(&self) -> impl Iterator<Item = &Timing> {
        self.timings.iter().filter(|t| t.input.is_some())
    }

    /// The mean over seeds of each setting's median and 90th percentile (settings matched by batch, input and
    /// threads; a setting missing from a seed is left out).
    pub fn mean_of(all: &[&Latency]) -> Latency {
        let n = all.len().max(1) as f64;
        let first = match all.first() {
            Some(l) => *l,
            None => return Latency::default(),
        };
        let timings = first
            .timings
            .iter()
            .filter_map(|t| {
                let same: Vec<&Timing> = all
                    .iter()
                    .filter_map(|l| {
                        l.timings.iter().find(|u| {
                            u.batch == t.batch && u.input == t.input && u.threads == t.threads
                        })
                    })
                    .collect();
                (same.len() == all.len()).then(|| {
                    let mean =
                        |f: &dyn Fn(&Timing) -> f64| same.iter().map(|u| f(u)).sum::<f64>() / n;
                    Timing {
                        median_ms: mean(&|u| u.median_ms),
                        p90_ms: mean(&|u| u.p90_ms),
                        cores_busy: same
                            .iter()
                            .map(|u| u.cores_busy)
                            .sum::<Option<f64>>()
                            .map(|s| s / n),
                        ..t.clone()
                    }
                })
            })
            .collect();
        Latency {
            batch1: all.iter().map(|l| l.batch1).sum::<f64>() / n,
            batch256: all.iter().map(|l| l.batch256).sum::<f64>() / n,
            timings,
            unit: first.unit.clone(),
            load_avg: all
                .iter()
                .filter_map(|l| l.load_avg)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        }
    }
}

/// One phase (teacher, scratch or distilled) for one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    /// Test metric of the kept weights (the last epoch, or the best validation epoch with early stopping).
    pub metric: f64,
    /// Test metric of the weights of the epoch with the best validation metric, when there is a validation
    /// split (evaluated after training, from `best.safetensors`).
    pub best_val_epoch_metric: Option<f64>,
    /// Which epoch that was.
    pub best_val_epoch: Option<usize>,
    /// Test metric of the last epoch's weights, when the phase trained (evaluated after training). Runs made
    /// before 2026-12-07 evaluated test after every epoch instead and have it as the curve's last
    /// `test_metric`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_epoch_metric: Option<f64>,
    /// Extra figures (e.g. `top5`, `errors`).
    pub extra: BTreeMap<String, f64>,
    /// Parameters (including buffers).
    pub params: usize,
    /// Bytes of the safetensors file.
    pub bytes: u64,
    /// Forward FLOPs per sample.
    pub flops: u64,
    /// Inference latency.
    pub latency_ms: Latency,
    /// Peak resident memory during the phase (MiB): the process's high-water mark, reset at the phase's start
    /// after freed heap memory went back to the OS ([`crate::train::MEMORY_METHOD`]).
    pub peak_rss_mb: f64,
    /// Resident memory when the phase started (MiB; data, and for a student the teacher, already loaded), so
    /// `peak_rss_mb - rss_start_mb` is what the phase itself added; absent in reports written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_start_mb: Option<f64>,
    /// Wall time of the phase (s).
    pub wall_s: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Per-epoch curve.
    pub curve: Vec<EpochRecord>,
    /// Whether the result came from the teacher cache or a pretrained file.
    #[serde(default)]
    pub reused: bool,
    /// Divergence back-offs taken during training (`divergence.retries`), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub divergence_backoffs: Vec<String>,
}

/// A phase aggregated over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// Headline metric over seeds.
    pub metric: Stat,
    /// Best-validation-epoch metric over seeds (when there is a validation split).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_val_epoch_metric: Option<Stat>,
    /// Test metric of the last epoch trained, over seeds (from the curves; absent when a curve has none,
    /// e.g. a pretrained teacher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_epoch_metric: Option<Stat>,
    /// Which figure `metric` is: `"last_epoch"`, `"best_val_epoch"` when the phase used early stopping
    /// (its best validation epoch's weights were kept), or `"pretrained"` for a teacher loaded from a file.
    /// Absent in reports written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    /// Extras over seeds.
    pub extra: BTreeMap<String, Stat>,
    /// Parameters.
    pub params: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// FLOPs per sample.
    pub flops: u64,
    /// Latency (mean over seeds).
    pub latency_ms: Latency,
    /// Peak memory (max over seeds, MiB).
    pub peak_rss_mb: f64,
    /// What the phase added to the memory it started with (max over seeds of the peak less the resident
    /// memory at the phase's start, MiB); absent in reports written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_own_mb: Option<f64>,
    /// Wall time (sum over seeds, s).
    pub wall_s: f64,
    /// Per seed curves.
    pub curves: Vec<Vec<EpochRecord>>,
}

impl PhaseSummary {
    /// Aggregates per-seed results.
    pub fn of(results: &[PhaseResult]) -> Self {
        let first = &results[0];
        let stat =
            |f: &dyn Fn(&PhaseResult) -> f64| Stat::of(&results.iter().map(f).collect::<Vec<_>>());
        let mut extra = BTreeMap::new();
        for k in first.extra.keys() {
            extra.insert(
                k.clone(),
                stat(&|r| r.extra.get(k).copied().unwrap_or(f64::NAN)),
            );
        }
        let best = if results.iter().all(|r| r.best_val_epoch_metric.is_some()) {
            Some(stat(&|r| r.best_val_epoch_metric.unwrap_or(f64::NAN)))
        } else {
            None
        };
        let last: Option<Vec<f64>> = results
            .iter()
            .map(|r| {
                r.last_epoch_metric
                    .or_else(|| r.curve.last().and_then(|e| e.test_metric))
            })
            .collect();
        let own: Option<Vec<f64>> = results
            .iter()
            .map(|r| r.rss_start_mb.map(|s| r.peak_rss_mb - s))
            .collect();
        Self {
            metric: stat(&|r| r.metric),
            best_val_epoch_metric: best,
            last_epoch_metric: last.map(|v| Stat::of(&v)),
            headline: None,
            extra,
            params: first.params,
            bytes: first.bytes,
            flops: first.flops,
            latency_ms: Latency::mean_of(
                &results.iter().map(|r| &r.latency_ms).collect::<Vec<_>>(),
            ),
            peak_rss_mb: results.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max),
            peak_rss_own_mb: own.map(|v| v.into_iter().fold(f64::MIN, f64::max)),
            wall_s: results.iter().map(|r| r.wall_s).sum(),
            curves: results.iter().map(|r| r.curve.clone()).collect(),
        }
    }
}

/// Figures derived from the three phases. A ratio whose denominator is 0 is NaN (`null` in report.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// 1 - student params / teacher params.
    #[serde(deserialize_with = "f64_or_nan")]
    pub compression: f64,
    /// Teacher latency / student latency at batch 256.
    #[serde(deserialize_with = "f64_or_nan")]
    pub speedup: f64,
    /// Teacher latency / student latency at batch 1.
    #[serde(deserialize_with = "f64_or_nan")]
    pub speedup_batch1: f64,
    /// Teacher latency / student latency at batch 256 on one thread (ratio of medians); absent in reports
    /// written before the latency protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup_1thread: Option<f64>,
    /// Teacher latency / student latency at batch 1 on one thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup_batch1_1thread: Option<f64>,
    /// Distilled metric / teacher metric.
    #[serde(deserialize_with = "f64_or_nan")]
    pub retention: f64,
    /// Distilled metric - scratch metric (sign flipped when lower is better).
    #[serde(deserialize_with = "f64_or_nan")]
    pub kd_gain: f64,
}

/// One recipe's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Plugin name.
    pub plugin: String,
    /// Recipe name.
    pub recipe: String,
    /// Data set.
    pub dataset: String,
    /// Whether `--quick` overrides were applied.
    pub quick: bool,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Headline metric.
    pub metric: MetricInfo,
    /// The teacher.
    pub teacher: PhaseSummary,
    /// The student trained alone.
    pub scratch: PhaseSummary,
    /// The student trained with the teacher.
    pub distilled: PhaseSummary,
    /// Derived figures.
    pub derived: Derived,
    /// The exact recipe that ran (after `--quick` overrides).
    pub recipe_toml: String,
    /// Plugin-specific facts about the run (e.g. `skipped_files`), from [`crate::Task::notes`] or the
    /// plugin's `run`; absent from `report.json` when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, serde_json::Value>,
    /// The plugin's domain in words (its manifest's `domain`), e.g. `"image classification"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Number of samples in the test split (the noise floor of an accuracy: `distill report compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_samples: Option<usize>,
    /// The git revision of the code that made this run, recorded when it ran and kept when a later
    /// invocation reads the run back (a bench made over several invocations holds runs of several revisions;
    /// the report's top-level `git_revision` is the assembling invocation's). Folds made at different
    /// revisions (a leave-one-speaker-out run resumed) list each, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_revision: Option<String>,
    /// The `distill` command line that made this run (absent in reports written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// When this run finished (seconds since the Unix epoch), recorded by the invocation that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<u64>,
    /// The run directory the run was written in (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    /// Set by `distill bench` when it reads back a finished run whose `run_dir` is another directory: the run
    /// was copied in from there (another suite or machine), not run by this bench.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<String>,
    /// The KD gain's 95 % paired bootstrap interval over seeds × test examples ([`crate::stats`]); absent
    /// when the metric keeps no per-example scores (COCO mAP) or for runs made before 2026-12-07.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kd_gain_interval: Option<GainInterval>,
}

impl RunReport {
    /// Fills `derived` from the three phases.
    pub fn derive(
        metric: &MetricInfo,
        t: &PhaseSummary,
        s: &PhaseSummary,
        d: &PhaseSummary,
    ) -> Derived {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let sign = if metric.higher_is_better { 1.0 } else { -1.0 };
        let one_thread = |b: usize| {
            let median = |p: &PhaseSummary| p.latency_ms.batch(b, Some(1)).map(|t| t.median_ms);
            Some(ratio(median(t)?, median(d)?))
        };
        Derived {
            compression: 1.0 - ratio(d.params as f64, t.params as f64),
            speedup: ratio(t.latency_ms.batch256, d.latency_ms.batch256),
            speedup_batch1: ratio(t.latency_ms.batch1, d.latency_ms.batch1),
            speedup_1thread: one_thread(256),
            speedup_batch1_1thread: one_thread(1),
            retention: ratio(d.metric.mean, t.metric.mean),
            kd_gain: sign * (d.metric.mean - s.metric.mean),
        }
    }
}

/// The file written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// distill's version.
    pub distill_version: String,
    /// The project's git revision, when known.
    pub git_revision: Option<String>,
    /// When the report was written (seconds since the Unix epoch).
    pub created_unix: u64,
    /// One entry per recipe run.
    pub runs: Vec<RunReport>,
    /// How a `distill bench` report was made (absent in a `distill run` report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bench: Option<BenchInfo>,
}

/// How a `distill bench` run was made: the suite, the command and the machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchInfo {
    /// `quick`, `full` or the suite file's path.
    pub suite: String,
    /// The command line.
    pub command: String,
    /// Logical CPU cores of the machine.
    pub cores: usize,
    /// CPU model, when known.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Compute device (`cpu`, `cuda:0`).
    pub device: String,
    /// Wall time of this invocation (s); runs skipped as finished count nothing.
    pub wall_s: f64,
    /// Per run (by recipe name): `"ran"`, `"skipped"` (finished earlier) or `"failed: ..."`.
    #[serde(default)]
    pub status: BTreeMap<String, String>,
}

impl Report {
    /// A report of `runs`.
    pub fn new(runs: Vec<RunReport>, git_revision: Option<String>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            distill_version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision,
            created_unix: unix_now(),
            runs,
            bench: None,
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (civil-from-days, Howard Hinnant's algorithm).
pub fn utc_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// Seconds since the Unix epoch, now (0 on a clock before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time as [`utc_date`] writes it.
pub fn utc_now() -> String {
    utc_date(unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back_from_report_json_are_bit_identical() {
        // values of every magnitude, including ones the default (fast) parser reads one ulp off
        let mut rng = crate::Rng::new(7);
        let mut values: Vec<f64> = (0..20_000)
            .map(|i| {
                let mant = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                mant * 10f64.powi((i % 40) - 20)
            })
            .collect();
        values.extend([
            0.1 + 0.2,
            1.0 / 3.0,
            2.2250738585072014e-308,
            5e-324,
            0.9908,
            1e23,
        ]);
        let stat = Stat {
            mean: values[0],
            std: values[1],
            values: values.clone(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        crate::checkpoint::write_json_atomic(&stat, &p).unwrap();
        let back: Stat = crate::checkpoint::read_json(&p).unwrap();
        let diff = values
            .iter()
            .zip(&back.values)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(diff, 0, "{diff} of {} values changed", values.len());
        assert_eq!(back.mean.to_bits(), stat.mean.to_bits());
    }

    fn phase(metric: f64, curve: &[f64]) -> PhaseResult {
        PhaseResult {
            metric,
            best_val_epoch_metric: None,
            best_val_epoch: None,
            last_epoch_metric: None,
            extra: BTreeMap::new(),
            params: 10,
            bytes: 40,
            flops: 20,
            latency_ms: Latency::default(),
            peak_rss_mb: 1.0,
            rss_start_mb: None,
            wall_s: 1.0,
            epochs: curve.len(),
            curve: curve
                .iter()
                .enumerate()
                .map(|(i, &m)| EpochRecord {
                    epoch: i + 1,
                    train_loss: 0.0,
                    loss_terms: BTreeMap::new(),
                    lr: 0.1,
                    val_metric: None,
                    test_metric: Some(m),
                    seconds: 1.0,
                })
                .collect(),
            reused: false,
            divergence_backoffs: Vec::new(),
        }
    }

    #[test]
    fn summary_keeps_the_last_epoch_figure() {
        let s = PhaseSummary::of(&[phase(0.9, &[0.5, 0.8]), phase(0.7, &[0.6, 0.7])]);
        assert_eq!(s.last_epoch_metric.unwrap().values, vec![0.8, 0.7]);
        assert_eq!(s.metric.values, vec![0.9, 0.7]);
        let s = PhaseSummary::of(&[phase(0.9, &[])]);
        assert!(s.last_epoch_metric.is_none());
    }

    #[test]
    fn undefined_figures_survive_a_round_trip_through_json() {
        // a teacher at 0: retention is 0 / 0; serde_json writes NaN as null, which must read back as NaN
        let d = Derived {
            compression: 0.5,
            speedup: 2.0,
            speedup_batch1: 1.5,
            speedup_1thread: None,
            speedup_batch1_1thread: None,
            retention: f64::NAN,
            kd_gain: 0.0,
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains("\"retention\":null"), "{text}");
        let back: Derived = serde_json::from_str(&text).unwrap();
        assert!(back.retention.is_nan() && back.speedup == 2.0);
        let st = Stat::of(&[f64::NAN, 1.0]);
        let back: Stat = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert!(back.mean.is_nan() && back.values[0].is_nan() && back.values[1] == 1.0);
    }

    fn timed(batch: usize, threads: usize, median_ms: f64) -> Timing {
        Timing {
            batch,
            threads,
            median_ms,
            p90_ms: 1.5 * median_ms,
            reps: 30,
            warmup: 3,
            ..Timing::default()
        }
    }

    fn latency(b1: f64, b256: f64) -> Latency {
        Latency {
            batch1: b1,
            batch256: b256,
            timings: vec![
                timed(1, 1, 2.0 * b1),
                timed(1, 2, b1),
                timed(256, 1, 2.0 * b256),
                timed(256, 2, b256),
            ],
            unit: Some("sample".into()),
            load_avg: Some(0.5),
        }
    }

    #[test]
    fn summaries_average_each_setting_and_keep_each_phases_own_memory() {
        let mut a = phase(0.9, &[0.9]);
        a.latency_ms = latency(1.0, 10.0);
        (a.peak_rss_mb, a.rss_start_mb) = (500.0, Some(300.0));
        let mut b = phase(0.8, &[0.8]);
        b.latency_ms = latency(3.0, 30.0);
        (b.peak_rss_mb, b.rss_start_mb) = (450.0, Some(200.0));
        let s = PhaseSummary::of(&[a, b.clone()]);
        assert_eq!((s.latency_ms.batch1, s.latency_ms.batch256), (2.0, 20.0));
        let one = s.latency_ms.batch(256, Some(1)).unwrap();
        assert_eq!((one.median_ms, one.p90_ms, one.reps), (40.0, 60.0, 30));
        assert_eq!(s.latency_ms.batch(1, None).unwrap().median_ms, 2.0);
        assert_eq!(s.peak_rss_mb, 500.0);
        // max over seeds of peak - start: 200 (seed a), 250 (seed b)
        assert_eq!(s.peak_rss_own_mb, Some(250.0));
        // a teacher twice as slow on one thread at batch 256: the 1-thread speed-up is the ratio of medians
        let mut t = b.clone();
        t.latency_ms = latency(6.0, 90.0);
        let (t, d) = (PhaseSummary::of(&[t]), PhaseSummary::of(&[b]));
        let metric = MetricInfo {
            name: "accuracy".into(),
            higher_is_better: true,
        };
        let derived = RunReport::derive(&metric, &t, &d, &d);
        assert_eq!(derived.speedup, 3.0);
        assert_eq!(derived.speedup_1thread, Some(180.0 / 60.0));
        assert_eq!(derived.speedup_batch1_1thread, Some(12.0 / 6.0));
    }

    #[test]
    fn results_written_before_the_latency_protocol_still_load() {
        let old = r#"{"metric": 0.9, "best_val_epoch_metric": null, "best_val_epoch": null, "extra": {},
            "params": 10, "bytes": 40, "flops": 20, "latency_ms": {"batch1": 0.5, "batch256": 27.0},
            "peak_rss_mb": 300.0, "wall_s": 1.0, "epochs": 0, "curve": []}"#;
        let r: PhaseResult = serde_json::from_str(old).unwrap();
        assert!(r.latency_ms.timings.is_empty() && r.rss_start_mb.is_none());
        assert_eq!(r.latency_ms.batch256, 27.0);
        let s = PhaseSummary::of(&[r]);
        assert_eq!(s.latency_ms.batch256, 27.0);
        assert!(s.peak_rss_own_mb.is_none() && s.latency_ms.batch(1, Some(1)).is_none());
        // and the new fields are left out of the JSON when absent, as before
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            !text.contains("timings") && !text.contains("peak_rss_own_mb"),
            "{text}"
        );
    }

    #[test]
    fn stat_matches_numpy() {
        // numpy: np.mean([1, 2, 4]) = 2.3333333, np.std([1, 2, 4], ddof=1) = 1.5275252
        let s = Stat::of(&[1.0, 2.0, 4.0]);
        assert!((s.mean - 2.333_333_333).abs() < 1e-8);
        assert!((s.std - 1.527_525_231_6).abs() < 1e-8);
        assert_eq!(Stat::of(&[3.0]).std, 0.0);
    }
}
