//! A run killed with SIGKILL mid-epoch and restarted with `--resume` ends exactly where an uninterrupted run
//! of the same seed ends.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use distill_tests::*;

#[test]
fn sigkill_mid_epoch_then_resume_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 6000, 500);
    // wider nets and more epochs so that the kill lands inside an epoch
    let recipe = tiny_recipe(4).replace("hidden = [64]", "hidden = [256, 256]");
    std::fs::write(tmp.path().join("r.toml"), recipe).unwrap();
    let base = [
        "run",
        "r.toml",
        "--data-dir",
        "data",
        "--quiet",
        "--no-cache",
        "--out",
    ];

    let full = distill(tmp.path(), &[&base[..], &["full"]].concat());
    assert!(full.status.success(), "{}", stderr(&full));

    let mut child = Command::new(distill_bin())
        .args([&base[..], &["killed"]].concat())
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // kill once the teacher has finished its first epoch and is inside the second
    let state = tmp.path().join("killed/seed-0/teacher/state.json");
    let t0 = Instant::now();
    while !state.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(600));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!tmp.path().join("killed/report.json").exists());

    let resumed = distill(tmp.path(), &[&base[..], &["killed", "--resume"]].concat());
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let a = report_metrics(&tmp.path().join("full"));
    let b = report_metrics(&tmp.path().join("killed"));
    for phase in ["teacher", "scratch", "distilled"] {
        let lines = std::fs::read_to_string(
            tmp.path()
                .join(format!("killed/seed-0/{phase}/metrics.jsonl")),
        )
        .unwrap();
        let epochs: Vec<u64> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            epochs,
            vec![1, 2, 3, 4],
            "{phase}: one metrics line per epoch after the resume"
        );
    }
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 0.001,
            "uninterrupted {a:?} vs resumed {b:?}"
        );
    }
}
