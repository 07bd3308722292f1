//! Evaluation figures of the audio plugin: the task's headline metric ([`accuracy_metric`], top-1 accuracy
//! computed by distill-core), and leave-one-speaker-out reports combined over the folds ([`combine_loso`]).

use std::collections::BTreeMap;

use distill_core::{
    report::{Latency, PhaseSummary, RunReport, Stat},
    task::MetricInfo,
};

/// The headline metric of an audio classification task: top-1 accuracy, higher is better.
pub fn accuracy_metric() -> MetricInfo {
    MetricInfo {
        name: "accuracy".into(),
        higher_is_better: true,
    }
}

/// One report from per-speaker reports, every figure over all folds: each phase's metric, last-epoch and
/// best-validation-epoch metrics and extras become statistics over the held-out speakers (of each speaker's
/// mean over seeds; absent when some fold lacks the figure), latency the mean over folds, peak memory the
/// largest, wall time the sum, and the test count the sum (every clip is tested once, in its speaker's fold);
/// the git revision lists every fold's, and `notes.per_speaker` keeps every speaker's figures. The caller
/// sets `run_dir` (the folds' parent).
pub fn combine_loso(reports: &[RunReport], speakers: &[&str]) -> RunReport {
    let mut out = reports[0].clone();
    let over = |f: &dyn Fn(&RunReport) -> &PhaseSummary| -> PhaseSummary {
        let mut p = f(&reports[0]).clone();
        p.metric = Stat::of(&reports.iter().map(|r| f(r).metric.mean).collect::<Vec<_>>());
        // a figure some fold lacks is absent, never one fold's value
        let over_folds = |g: &dyn Fn(&PhaseSummary) -> Option<&Stat>| -> Option<Stat> {
            let v: Option<Vec<f64>> = reports.iter().map(|r| g(f(r)).map(|s| s.mean)).collect();
            v.map(|v| Stat::of(&v))
        };
        p.best_val_epoch_metric = over_folds(&|p| p.best_val_epoch_metric.as_ref());
        p.last_epoch_metric = over_folds(&|p| p.last_epoch_metric.as_ref());
        p.latency_ms =
            Latency::mean_of(&reports.iter().map(|r| &f(r).latency_ms).collect::<Vec<_>>());
        p.peak_rss_mb = reports.iter().map(|r| f(r).peak_rss_mb).fold(0.0, f64::max);
        let own: Option<Vec<f64>> = reports.iter().map(|r| f(r).peak_rss_own_mb).collect();
        p.peak_rss_own_mb = own.map(|v| v.into_iter().fold(f64::MIN, f64::max));
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
    // every revision the folds were made at (one, unless the run was resumed at another commit), and the
    // last fold's finishing time
    let mut revisions: Vec<&str> = Vec::new();
    for r in reports.iter().filter_map(|r| r.git_revision.as_deref()) {
        if !revisions.contains(&r) {
            revisions.push(r);
        }
    }
    out.git_revision = (!revisions.is_empty()).then(|| revisions.join(", "));
    out.finished_unix = reports.iter().filter_map(|r| r.finished_unix).max();
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use distill_core::report::{EpochRecord, PhaseResult};

    use super::*;

    /// A one-seed fold's figures.
    struct Fold {
        /// Final (headline) metric.
        metric: f64,
        /// The last epoch's test metric.
        last: f64,
        /// The best validation epoch's test metric.
        best_val: Option<f64>,
        /// Batch-1 latency (ms); batch 256 is ten times it.
        latency: f64,
        /// Peak RSS (MiB).
        rss: f64,
        /// Test clips.
        tests: usize,
        /// Git revision it was made at.
        rev: &'static str,
        /// When it finished.
        finished: u64,
    }

    fn fold(f: Fold) -> RunReport {
        let phase = PhaseSummary::of(&[PhaseResult {
            metric: f.metric,
            best_val_epoch_metric: f.best_val,
            best_val_epoch: f.best_val.map(|_| 1),
            last_epoch_metric: None,
            extra: BTreeMap::from([("errors".to_string(), (1.0 - f.metric) * f.tests as f64)]),
            params: 10,
            bytes: 40,
            flops: 20,
            latency_ms: Latency {
                batch1: f.latency,
                batch256: 10.0 * f.latency,
                ..Latency::default()
            },
            peak_rss_mb: f.rss,
            rss_start_mb: None,
            wall_s: 2.0,
            epochs: 1,
            curve: vec![EpochRecord {
                epoch: 1,
                train_loss: 0.5,
                loss_terms: BTreeMap::new(),
                lr: 0.1,
                val_metric: None,
                test_metric: Some(f.last),
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
            test_samples: Some(f.tests),
            git_revision: Some(f.rev.into()),
            command: Some("distill bench".into()),
            finished_unix: Some(f.finished),
            run_dir: Some(format!("/runs/fsdd-loso/loso-{}", f.finished)),
            copied_from: None,
            kd_gain_interval: None,
        }
    }

    #[test]
    fn loso_combines_every_figure_over_all_folds() {
        let folds = [
            fold(Fold {
                metric: 0.9,
                last: 0.8,
                best_val: Some(0.85),
                latency: 1.0,
                rss: 100.0,
                tests: 500,
                rev: "aaa",
                finished: 10,
            }),
            fold(Fold {
                metric: 0.7,
                last: 0.6,
                best_val: Some(0.65),
                latency: 3.0,
                rss: 300.0,
                tests: 500,
                rev: "bbb",
                finished: 30,
            }),
            fold(Fold {
                metric: 0.5,
                last: 0.4,
                best_val: Some(0.3),
                latency: 2.0,
                rss: 200.0,
                tests: 400,
                rev: "aaa",
                finished: 20,
            }),
        ];
        let c = combine_loso(&folds, &["a", "b", "c"]);
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        // the values below are worked by hand from the three folds, not by the code under test
        for p in [&c.teacher, &c.scratch, &c.distilled] {
            close(p.metric.mean, (0.9 + 0.7 + 0.5) / 3.0);
            assert_eq!(p.metric.values, [0.9, 0.7, 0.5]);
            close(p.metric.std, 0.2); // sqrt(((0.2)^2 + 0 + (0.2)^2) / 2)
                                      // the last-epoch figure is over the folds too, not the first fold's 0.8
            let last = p.last_epoch_metric.as_ref().expect("last epoch");
            close(last.mean, 0.6);
            assert_eq!(last.values, [0.8, 0.6, 0.4]);
            // and the best-validation-epoch figure, not dropped nor the first fold's 0.85
            let best = p.best_val_epoch_metric.as_ref().expect("best-val epoch");
            close(best.mean, 0.6);
            assert_eq!(best.values, [0.85, 0.65, 0.3]);
            close(p.latency_ms.batch1, 2.0); // (1 + 3 + 2) / 3
            close(p.latency_ms.batch256, 20.0);
            close(p.peak_rss_mb, 300.0); // the largest, not the first fold's 100
            close(p.wall_s, 6.0);
            close(p.extra["errors"].mean, (50.0 + 150.0 + 200.0) / 3.0);
            assert_eq!(p.curves.len(), 3);
        }
        assert_eq!(c.test_samples, Some(1400), "every clip is tested once");
        close(c.derived.speedup_batch1, 1.0);
        close(c.derived.retention, 1.0);
        assert_eq!(c.git_revision.as_deref(), Some("aaa, bbb"));
        assert_eq!(c.finished_unix, Some(30));
        assert_eq!(c.notes["speakers"], serde_json::json!(["a", "b", "c"]));
        assert_eq!(c.notes["per_speaker"]["b"]["teacher"], 0.7);

        // one fold without a best-validation figure: the combined figure is absent, not two folds' mean
        let mut partial = folds.clone();
        partial[1] = fold(Fold {
            metric: 0.7,
            last: 0.6,
            best_val: None,
            latency: 3.0,
            rss: 300.0,
            tests: 500,
            rev: "aaa",
            finished: 30,
        });
        let c = combine_loso(&partial, &["a", "b", "c"]);
        assert_eq!(c.teacher.best_val_epoch_metric, None);
        assert_eq!(c.git_revision.as_deref(), Some("aaa"));
    }
}
