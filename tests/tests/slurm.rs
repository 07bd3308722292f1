//! `distill bench --executor slurm` against a real single-node Slurm (started by `.ci/slurm-up.sh`, which
//! .ci/run calls): the quick suite of two plugins submitted as a job array plus a merge job, whose report must
//! equal a local `distill bench --suite quick` of the same recipes exactly (training is deterministic); then a
//! resubmission that finds every task done. Without Slurm (or without the real data) the test says why and
//! returns, except under CI=true, where it fails. `--dry-run` is tested without Slurm.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use distill_tests::*;

const PLUGINS: &str = "graph,audio-classification";

fn required(what: &str) -> bool {
    if distill_data::testing::in_ci() {
        panic!("{what} (under CI this test must run; .ci/run starts Slurm with .ci/slurm-up.sh)");
    }
    eprintln!("skipped: {what}");
    false
}

fn slurm_up() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

fn bench(args: &[&str], data: &str) -> std::process::Output {
    let mut all = vec![
        "bench",
        "--suite",
        "quick",
        "--plugins",
        PLUGINS,
        "--no-cache",
    ];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", data]);
    Command::new(distill_bin())
        .args(&all)
        .current_dir(root())
        .env_remove("DISTILL_CACHE")
        .env_remove("DISTILL_REGISTRY")
        .output()
        .unwrap()
}

fn job_finished(id: &str) -> bool {
    let o = Command::new("squeue")
        .args(["-h", "-j", id])
        .output()
        .unwrap();
    // an unknown (long finished) job id is an error for squeue; a finished one lists nothing
    !o.status.success() || String::from_utf8_lossy(&o.stdout).trim().is_empty()
}

/// Submits the sweep and waits (at most 20 minutes) for its merge job; returns the submission's stdout.
fn sweep_and_wait(out: &Path, data: &str) -> String {
    let o = bench(
        &["--executor", "slurm", "--out", out.to_str().unwrap()],
        data,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let merge = text
        .split("the merge job ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no merge job id in: {text}"))
        .to_string();
    let t0 = Instant::now();
    while !job_finished(&merge) {
        assert!(
            t0.elapsed() < Duration::from_secs(1200),
            "the sweep did not end in 20 minutes"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    text
}

/// A phase's extra figures without timings (latencies differ between any two runs).
fn accuracy_extras(extra: &serde_json::Value) -> serde_json::Value {
    extra
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("latency"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .unwrap_or_default()
}

/// Per run: recipe, and each phase's metric values, extra figures (timings aside) and parameter count, exactly
/// as written.
fn figures(report: &Path) -> Vec<(String, serde_json::Value)> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            let phases: serde_json::Value = ["teacher", "scratch", "distilled"]
                .iter()
                .map(|p| {
                    (
                        p.to_string(),
                        serde_json::json!([
                            run[p]["metric"],
                            accuracy_extras(&run[p]["extra"]),
                            run[p]["params"]
                        ]),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            (run["recipe"].as_str().unwrap().to_string(), phases)
        })
        .collect()
}

#[test]
fn a_slurm_sweep_equals_the_local_bench() {
    if !slurm_up() && !required("no Slurm answers `sinfo` (run .ci/slurm-up.sh as root)") {
        return;
    }
    let Some(data) = distill_data::testing::required_dir("DISTILL_DATA", None, "the Slurm sweep")
    else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let tmp = tempfile::tempdir().unwrap();
    let sweep = tmp.path().join("sweep");
    let text = sweep_and_wait(&sweep, &data);
    println!("{text}");
    let tasks: usize = text
        .split("submitted ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no task count in: {text}"));
    assert!(tasks >= 5, "one task per recipe x seed: {text}");
    let status = Command::new(distill_bin())
        .args(["bench", "--status", sweep.to_str().unwrap()])
        .output()
        .unwrap();
    let st = stdout(&status);
    println!("{st}");
    assert!(
        st.contains(&format!("{tasks} done, 0 running, 0 failed, 0 pending")),
        "{st}"
    );
    assert!(
        sweep.join("report.json").is_file(),
        "the merge job wrote no report: {}",
        std::fs::read_dir(sweep.join(".sweep/logs"))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(sweep.join("report.md").is_file());

    let local = tmp.path().join("local");
    let o = bench(&["--out", local.to_str().unwrap(), "--quiet"], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (
        figures(&sweep.join("report.json")),
        figures(&local.join("report.json")),
    );
    assert_eq!(a.len(), 5, "{a:?}");
    assert_eq!(a, b, "sweep vs local");

    // resubmitted: every task is done, only the merge job runs, and the report is the same
    let text = sweep_and_wait(&sweep, &data);
    assert!(text.contains("submitted 0 task(s)"), "{text}");
    assert_eq!(figures(&sweep.join("report.json")), b);
}

#[test]
fn a_dry_run_prints_the_array_and_submits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 10, 10);
    std::fs::write(tmp.path().join("r.toml"), tiny_recipe(1)).unwrap();
    let suite = tmp.path().join("s.toml");
    std::fs::write(
        &suite,
        format!(
            "seeds = [0, 1, 2]\n[[run]]\nrecipe = {:?}\n",
            tmp.path().join("r.toml").display().to_string()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = distill(
        tmp.path(),
        &[
            "bench",
            "--suite",
            suite.to_str().unwrap(),
            "--executor",
            "slurm",
            "--slurm-args",
            "--partition=gpu --time=1:00:00",
            "--dry-run",
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            "data",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "#SBATCH --array=0-2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1:00:00",
        "'tiny|0|false'",
        "'tiny|2|false'",
        "bench --collect",
        "dry run: 3 task(s) to submit, nothing submitted",
    ] {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
    assert!(out.join(".sweep/array.sbatch").is_file());
    assert!(!out.join(".sweep/tasks.json").exists(), "nothing submitted");
    // the recipe each task runs is the planned one, seeds aside
    let r = std::fs::read_to_string(out.join(".sweep/recipes/tiny.toml")).unwrap();
    assert!(
        r.contains("name = \"tiny\"") && r.contains("seeds = [0, 1, 2]"),
        "{r}"
    );
}
