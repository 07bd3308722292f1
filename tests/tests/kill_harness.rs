//! Crash safety: a run is killed with SIGKILL at least 20 times, at random moments and right while a
//! checkpoint is being written, and restarted with `--resume` each time. After every kill each file a
//! resume reads (state.json, checkpoint.safetensors, result.json, model.safetensors) must parse; every
//! resumed run must complete, and end exactly where the uninterrupted run of the same seed ends.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use distill_core::{checkpoint::read_safetensors, Rng};
use distill_tests::*;

const KILLS: usize = 20;

fn base(out: &str) -> Vec<String> {
    [
        "run",
        "r.toml",
        "--data-dir",
        "data",
        "--quiet",
        "--no-cache",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn files_named(dir: &Path, pred: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_named(&p, pred, out);
        } else if pred(&e.file_name().to_string_lossy()) {
            out.push(p);
        }
    }
}

/// Every file a resume would read parses.
fn assert_nothing_corrupt(out: &Path, kill: usize) {
    let mut files = Vec::new();
    files_named(
        out,
        &|n| n.ends_with(".safetensors") || n.ends_with(".json"),
        &mut files,
    );
    for f in files {
        let ok = if f.extension().unwrap() == "json" {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&f).unwrap()).is_ok()
        } else {
            read_safetensors(&f, &candle_core::Device::Cpu).is_ok()
        };
        assert!(ok, "after kill {kill}: {} is corrupt", f.display());
    }
}

/// Whether a temp file of an atomic write (`NAME.tmpPID`) exists under `dir`: a write is in progress.
fn writing(dir: &Path) -> bool {
    let mut tmp = Vec::new();
    files_named(dir, &|n| n.contains(".tmp"), &mut tmp);
    !tmp.is_empty()
}

#[test]
fn twenty_sigkills_never_corrupt_a_checkpoint_or_change_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_synthetic_mnist(&d.join("data"), 3000, 300);
    let recipe = tiny_recipe(3).replace("hidden = [64]", "hidden = [256, 256]");
    std::fs::write(d.join("r.toml"), recipe).unwrap();

    let full = distill(
        d,
        &base("full").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(full.status.success(), "{}", stderr(&full));
    let expected = run_outcome(&d.join("full"));

    let mut rng = Rng::new(20261127);
    let (mut kills, mut during_write, mut trials, mut restarts) = (0, 0, 0, 0);
    while kills < KILLS {
        trials += 1;
        let out = format!("killed{trials}");
        loop {
            let mut args = base(&out);
            args.push("--resume".into());
            let mut child = Command::new(distill_bin())
                .args(&args)
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            restarts += 1;
            // every other kill waits for a checkpoint write in progress; the others land at a random moment
            let target_write = kills % 2 == 1;
            let deadline = Instant::now() + Duration::from_millis(50 + rng.below(1500) as u64);
            let mut killed_in_write = false;
            let finished = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err)
                        .unwrap();
                    assert!(status.success(), "resume {restarts} failed: {err}");
                    break true;
                }
                if target_write && writing(&d.join(&out)) {
                    killed_in_write = true;
                    break false;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(if target_write { 1 } else { 5 }));
            };
            if finished {
                break;
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            during_write += killed_in_write as usize;
            assert_nothing_corrupt(&d.join(&out), kills);
            if kills >= KILLS {
                // finish this trial without further kills
                let o = distill(
                    d,
                    &[base(&out), vec!["--resume".into()]]
                        .concat()
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                );
                assert!(o.status.success(), "{}", stderr(&o));
                break;
            }
        }
        let got = run_outcome(&d.join(&out));
        for ((phase, m, losses), (_, em, elosses)) in got.iter().zip(&expected) {
            assert_eq!(m, em, "{out} {phase}: metric after kills vs uninterrupted");
            assert_eq!(losses, elosses, "{out} {phase}: per-epoch losses");
        }
        // the last resume swept the temp files that kills left behind
        let mut stale = Vec::new();
        files_named(&d.join(&out), &|n| n.contains(".tmp"), &mut stale);
        assert!(stale.is_empty(), "{out}: stale temp files {stale:?}");
    }
    println!(
        "kill harness: {kills} SIGKILLs ({during_write} during a checkpoint write) over {trials} trial(s), \
         {restarts} starts; every resume completed and every trial matched the uninterrupted run"
    );
    assert!(
        during_write >= 3,
        "only {during_write} kills landed during a write"
    );
}
