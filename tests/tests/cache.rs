//! The trained-teacher cache through the real binary: two processes that need one teacher train it once, a
//! changed data file misses, a damaged entry is trained again (never used), and `distill cache list|verify|clear`.
//! (A changed plugin library missing the cache is tested with the template plugin in tests/plugins.rs.)

use std::{path::Path, process::Stdio};

use distill_tests::*;

fn run_args(out: &str) -> Vec<String> {
    [
        "run",
        "r.toml",
        "--data-dir",
        "data",
        "--quiet",
        "--cache-dir",
        "cache",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(cwd: &Path, out: &str) -> std::process::Output {
    let a = run_args(out);
    distill(cwd, &a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `(event, key)` of every line of the cache's log about `phase`'s entries (`teacher` or `scratch`: the keys
/// that a line labelled `phase s<seed>` names).
fn log_of(cwd: &Path, phase: &str) -> Vec<(String, String)> {
    let lines: Vec<(String, String, String)> = std::fs::read_to_string(cwd.join("cache/log.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("event"), s("key"), s("detail"))
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = lines
        .iter()
        .filter(|(_, _, d)| d.starts_with(&format!("{phase} s")))
        .map(|(_, k, _)| k)
        .collect();
    lines
        .iter()
        .filter(|(_, k, _)| keys.contains(k))
        .map(|(e, k, _)| (e.clone(), k.clone()))
        .collect()
}

/// The teacher entries' log lines.
fn log(cwd: &Path) -> Vec<(String, String)> {
    log_of(cwd, "teacher")
}

fn count(log: &[(String, String)], event: &str) -> usize {
    log.iter().filter(|(e, _)| e == event).count()
}

fn reused(dir: &Path) -> bool {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("seed-0/teacher/result.json")).unwrap(),
    )
    .unwrap();
    r["reused"].as_bool().unwrap_or(false)
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 3000, 300);
    let recipe = tiny_recipe(3).replace("hidden = [64]", "hidden = [256, 256]");
    std::fs::write(tmp.path().join("r.toml"), recipe).unwrap();
    tmp
}

#[test]
fn two_processes_needing_one_teacher_train_it_once() {
    let tmp = setup();
    let spawn = |out: &str| {
        distill_command(tmp.path())
            .args(run_args(out))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success(), "{}", stderr(&oa));
    assert!(ob.status.success(), "{}", stderr(&ob));
    let log = log(tmp.path());
    assert_eq!(count(&log, "trained"), 1, "{log:?}");
    assert_eq!(count(&log, "reused"), 1, "{log:?}");
    assert!(log.iter().all(|(_, k)| *k == log[0].1), "one key: {log:?}");
    assert_ne!(reused(&tmp.path().join("a")), reused(&tmp.path().join("b")));
    // the scratch student too: trained by one process, reused by the other
    let scratch = log_of(tmp.path(), "scratch");
    assert_eq!(
        (count(&scratch, "trained"), count(&scratch, "reused")),
        (1, 1),
        "{scratch:?}"
    );
    assert_ne!(scratch[0].1, log[0].1, "its own key");
    assert_eq!(
        report_metrics(&tmp.path().join("a")),
        report_metrics(&tmp.path().join("b"))
    );
    println!("{log:?}");
}

#[test]
fn a_changed_data_file_misses_and_a_damaged_entry_is_trained_again() {
    let tmp = setup();
    let o = run(tmp.path(), "first");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tmp.path(), "again");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(reused(&tmp.path().join("again")));
    assert_eq!(count(&log(tmp.path()), "trained"), 1);
    assert_eq!(count(&log_of(tmp.path(), "scratch"), "reused"), 1);

    // `cache list` and `cache verify` see two good entries: the teacher and the scratch student
    let o = distill(tmp.path(), &["cache", "list", "--cache-dir", "cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for phase in ["teacher", "scratch student"] {
        assert!(
            stdout(&o).contains(&format!(
                "image-classification  mnist  tiny  {phase}  seed 0"
            )),
            "{}",
            stdout(&o)
        );
    }
    let o = distill(tmp.path(), &["cache", "verify", "--cache-dir", "cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 entries verified"), "{}", stdout(&o));

    // a damaged entry: verify names it; a run trains the teacher again, to the same weights
    let key = log(tmp.path())[0].1.clone();
    let model = tmp
        .path()
        .join(format!("cache/teachers/{key}/model.safetensors"));
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() - 1000]).unwrap();
    let o = distill(tmp.path(), &["cache", "verify", "--cache-dir", "cache"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&key), "{}", stderr(&o));
    let o = run(tmp.path(), "after-damage");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the cached teacher is not usable"),
        "{}",
        stderr(&o)
    );
    assert!(!reused(&tmp.path().join("after-damage")));
    let l = log(tmp.path());
    assert_eq!(
        (count(&l, "damaged"), count(&l, "trained")),
        (1, 2),
        "{l:?}"
    );
    assert_eq!(
        report_metrics(&tmp.path().join("after-damage")),
        report_metrics(&tmp.path().join("first"))
    );

    // a data file changed (same bytes, new modification time): a different key, the teacher trained again
    let f = tmp.path().join("data/mnist/t10k-labels-idx1-ubyte.gz");
    let file = std::fs::File::options().write(true).open(&f).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    drop(file);
    let o = run(tmp.path(), "new-data");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!reused(&tmp.path().join("new-data")));
    let l = log(tmp.path());
    assert_eq!(count(&l, "trained"), 3, "{l:?}");
    assert_ne!(l.last().unwrap().1, key, "a new key");

    let o = distill(tmp.path(), &["cache", "clear", "--cache-dir", "cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // two teachers and two scratch students (the changed data file made new keys for both)
    assert!(stdout(&o).contains("removed 4 entries"), "{}", stdout(&o));
}
