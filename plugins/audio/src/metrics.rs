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

/// One report from per-speaker reports, every figure over all folds: each phase's metric, last-epoch metric
/// and extras become statistics over the held-out speakers (of each speaker's mean over seeds), latency the
/// mean over folds, peak memory the largest, wall time the sum, and the test count the sum (every clip is
/// tested once, in its speaker's fold); `notes.per_speaker` keeps every speaker's figures.
pub fn combine_loso(reports: &[RunReport], speakers: &[&str]) -> RunReport {
    let mut out = reports[0].clone();
    let over = |f: &dyn Fn(&RunReport) -> &PhaseSummary| -> PhaseSummary {
        let mut p = f(&reports[0]).clone();
        p.metric = Stat::of(&reports.iter().map(|r| f(r).metric.mean).collect::<Vec<_>>());
        p.best_val_epoch_metric = None;
        let last: Option<Vec<f64>> = reports
            .iter()
            .map(|r| f(r).last_epoch_metric.as_ref().map(|s| s.mean))
            .collect();
        p.last_epoch_metric = last.map(|v| Stat::of(&v));
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
                ..Latency::default()
            },
            peak_rss_mb: rss,
            rss_start_mb: None,
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
