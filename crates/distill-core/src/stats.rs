//! Statistics of results, from [`distill_stats`] (re-exported whole), plus what reads a run's files: the
//! paired bootstrap interval of a run's KD gain from its phases' `test_examples.json`.

pub use distill_stats::*;

/// The file in a phase's directory that holds its kept weights' [`ExampleScores`] (`train::files::EXAMPLES`).
pub const EXAMPLES_FILE: &str = "test_examples.json";

/// The paired bootstrap interval of the KD gain of the runs in `run_dirs` (one run dir, or a
/// leave-one-speaker-out run's folds, whose test sets are joined), from each seed's scratch and distilled
/// `test_examples.json`; `None` when any is missing (a metric with no per-example scores).
pub fn gain_interval(
    run_dirs: &[std::path::PathBuf],
    seeds: &[u64],
    higher_is_better: bool,
) -> crate::Result<Option<GainInterval>> {
    let mut phases: [Vec<ExampleScores>; 2] = [Vec::new(), Vec::new()];
    for seed in seeds {
        for (i, phase) in [crate::Phase::Distilled, crate::Phase::Scratch]
            .iter()
            .enumerate()
        {
            let mut parts = Vec::new();
            for d in run_dirs {
                let p = d
                    .join(format!("seed-{seed}"))
                    .join(phase.name())
                    .join(EXAMPLES_FILE);
                if !p.exists() {
                    return Ok(None);
                }
                parts.push(crate::checkpoint::read_json::<ExampleScores>(&p)?);
            }
            phases[i].push(ExampleScores::concat(&parts)?);
        }
    }
    let [d, s] = phases;
    paired_bootstrap(&d, &s, higher_is_better, BOOTSTRAP_RESAMPLES, 0).map(Some)
}
