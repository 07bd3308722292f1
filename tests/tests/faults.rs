//! Fault injection against the real `distill` binary: every trial either refuses with a one-line error (exit 2)
//! or ends exactly where an uninterrupted run of the same recipe ends (training is bit-deterministic).
//!
//! - a recipe edited before `--resume` (learning rate, temperature, epochs, a loss weight) is refused with the
//!   key named; `--allow-changed student.epochs` extends the finished student phases instead;
//! - bytes flipped in the newest checkpoint: the resume falls back to the previous one, naming both files;
//! - bytes flipped in a finished teacher's `model.safetensors`: restored from its last checkpoint, and the
//!   distilled student trained after it equals the uninterrupted one;
//! - two concurrent runs on one dir, and a `--resume` beside a live run: exactly one proceeds, the other exits 2
//!   naming the holder; metrics.jsonl has one parsable line per epoch;
//! - a full disk (a small tmpfs, when the test runs as root): the error names the file once, no temp file is
//!   left, and a resume after freeing space equals the uninterrupted run;
//! - `name = "../x"` and duplicate seeds: one-line errors.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use distill_tests::*;

const EPOCHS: usize = 4;

/// How many times the randomised trials (kill points, concurrent pairs) repeat: `$DISTILL_FAULT_TRIALS`, else a
/// CI-sized default. docs/reliability.md gives the counts of a longer session.
fn trials(default: usize) -> usize {
    std::env::var("DISTILL_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The recipe of every trial: the tiny MNIST-format recipe, a wider teacher so an epoch lasts long enough to
/// be caught mid-run.
fn recipe() -> String {
    tiny_recipe(EPOCHS).replace("hidden = [64]", "hidden = [256, 256]")
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 6000, 500);
    std::fs::write(tmp.path().join("r.toml"), recipe()).unwrap();
    tmp
}

fn args(out: &str, extra: &[&str]) -> Vec<String> {
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
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

fn run(cwd: &Path, out: &str, extra: &[&str]) -> Output {
    let a = args(out, extra);
    distill(cwd, &a.iter().map(String::as_str).collect::<Vec<_>>())
}

fn spawn(cwd: &Path, out: &str, extra: &[&str]) -> Child {
    distill_command(cwd)
        .args(args(out, extra))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Per phase: the test metric and every epoch's training loss, as written.
type Outcome = Vec<(String, f64, Vec<f64>)>;

/// The uninterrupted run every trial is compared with (made once per test binary).
fn baseline() -> &'static Outcome {
    static B: OnceLock<Outcome> = OnceLock::new();
    B.get_or_init(|| {
        let tmp = setup();
        let o = run(tmp.path(), "full", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        run_outcome(&tmp.path().join("full"))
    })
}

/// Exit code 2 and a single line on stderr that contains every one of `parts`.
fn assert_refused(o: &Output, parts: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    for p in parts {
        assert!(err.contains(p), "`{p}` missing from: {err}");
    }
}

/// Every metrics.jsonl line under `out` parses, and each phase lists epochs 1..=EPOCHS once.
fn assert_metrics_clean(out: &Path) {
    for phase in ["teacher", "scratch", "distilled"] {
        let text =
            std::fs::read_to_string(out.join(format!("seed-0/{phase}/metrics.jsonl"))).unwrap();
        let epochs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("{phase}: unparsable line {l:?}: {e}"))["epoch"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(epochs, (1..=EPOCHS as u64).collect::<Vec<_>>(), "{phase}");
    }
}

fn wait_for(path: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before {} appeared",
            path.display()
        );
        assert!(t0.elapsed() < Duration::from_secs(600));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_edited_recipe_is_refused_on_resume_and_allowed_epochs_extend() {
    let tmp = setup();
    let first = run(tmp.path(), "out", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    for (from, to, key) in [
        ("lr = 0.05", "lr = 0.07", "teacher.optimizer.lr"),
        (
            "temperature = 4.0",
            "temperature = 2.0",
            "distill.losses[0].temperature",
        ),
        (
            "epochs = 4\noptimizer = { kind = \"adamw\"",
            "epochs = 6\noptimizer = { kind = \"adamw\"",
            "student.epochs",
        ),
        ("weight = 0.1", "weight = 0.3", "distill.losses[1].weight"),
    ] {
        let edited = recipe().replace(from, to);
        assert_ne!(edited, recipe(), "{from}");
        std::fs::write(tmp.path().join("r.toml"), &edited).unwrap();
        let o = run(tmp.path(), "out", &["--resume"]);
        assert_refused(&o, &[key, "--allow-changed"]);
        println!("{}", stderr(&o).trim());
        // a fresh run into the used dir is refused too
        let o = run(tmp.path(), "out", &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    // the untouched run still equals the uninterrupted one
    assert_eq!(&run_outcome(&tmp.path().join("out")), baseline());

    // explicit: six student epochs; the finished scratch and distilled phases train on from their checkpoints
    let longer = recipe().replace(
        "epochs = 4\noptimizer = { kind = \"adamw\"",
        "epochs = 6\noptimizer = { kind = \"adamw\"",
    );
    std::fs::write(tmp.path().join("r.toml"), longer).unwrap();
    let o = run(
        tmp.path(),
        "out",
        &["--resume", "--allow-changed", "student.epochs"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let after = run_outcome(&tmp.path().join("out"));
    assert_eq!(after[0], baseline()[0], "the teacher is untouched");
    for (p, b) in after[1..].iter().zip(&baseline()[1..]) {
        assert_eq!(p.2.len(), 6, "{}: six epochs", p.0);
        assert_eq!(p.2[..4], b.2[..], "{}: the first four epochs are kept", p.0);
    }
    let report = std::fs::read_to_string(tmp.path().join("out/report.json")).unwrap();
    assert!(report.contains("student.epochs (4 -> 6)"), "{report}");
    // changing the teacher now would change what the finished distilled student learnt from: refused
    let teacher_longer = std::fs::read_to_string(tmp.path().join("r.toml"))
        .unwrap()
        .replace("epochs = 4\naugment", "epochs = 5\naugment");
    std::fs::write(tmp.path().join("r.toml"), teacher_longer).unwrap();
    let o = run(
        tmp.path(),
        "out",
        &["--resume", "--allow-changed", "teacher.epochs"],
    );
    assert_refused(&o, &["distilled", "teacher.epochs (4 -> 5)"]);
}

#[test]
fn names_that_leave_runs_and_duplicate_seeds_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    for (from, to, parts) in [
        ("name = \"tiny\"", "name = \"../x\"", ["`name`", "../x"]),
        ("name = \"tiny\"", "name = \"/abs\"", ["`name`", "/abs"]),
        ("seeds = [0]", "seeds = [0, 0]", ["`seeds`", "seed 0 twice"]),
    ] {
        std::fs::write(tmp.path().join("r.toml"), recipe().replace(from, to)).unwrap();
        let o = distill(
            tmp.path(),
            &["run", "r.toml", "--data-dir", "data", "--quiet"],
        );
        assert_refused(&o, &parts);
    }
    std::fs::write(tmp.path().join("r.toml"), recipe()).unwrap();
    let o = distill(
        tmp.path(),
        &[
            "run",
            "r.toml",
            "--data-dir",
            "data",
            "--quiet",
            "--seed",
            "3",
            "--seed",
            "3",
        ],
    );
    assert_refused(&o, &["--seed", "seed 3 twice"]);
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("runs").exists());
}

/// Kills a run once the phase `phase` has committed a checkpoint of epoch 2 or later (so a previous one is
/// kept) and has not finished; returns the newest checkpoint's path, or None if the moment was missed.
fn kill_mid_phase(cwd: &Path, out: &str, phase: &str) -> Option<PathBuf> {
    let dir = cwd.join(out).join("seed-0").join(phase);
    let mut child = spawn(cwd, out, &[]);
    let t0 = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("state.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["epochs_done"].as_u64().unwrap_or(0) >= 2 {
                    break;
                }
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        assert!(t0.elapsed() < Duration::from_secs(600));
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let finished = dir.join("result.json").exists();
    (!finished && state["previous"].is_string())
        .then(|| dir.join(state["checkpoint"].as_str().unwrap()))
}

/// Flips every byte of the last `n` bytes of a file (tensor data sits at the end of a safetensors file).
fn flip_tail(path: &Path, n: usize) {
    let mut b = std::fs::read(path).unwrap();
    let len = b.len();
    for x in &mut b[len - n..] {
        *x ^= 0xff;
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_flipped_newest_checkpoint_falls_back_to_the_previous_one() {
    let tmp = setup();
    let (mut done, mut tries) = (0, 0);
    // each trial flips a different phase's newest checkpoint, in turn
    let phases = ["teacher", "scratch", "distilled"];
    while done < trials(1) {
        tries += 1;
        assert!(
            tries <= 5 * trials(1),
            "could not stop a phase mid-way in {tries} tries"
        );
        let out = format!("out{tries}");
        let phase = phases[done % 3];
        let Some(newest) = kill_mid_phase(tmp.path(), &out, phase) else {
            continue;
        };
        flip_tail(&newest, 64);
        let o = run(tmp.path(), &out, &["--resume"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        let name = newest.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            err.contains(&name)
                && err.contains("checksum mismatch")
                && err.contains("resuming from"),
            "{err}"
        );
        assert!(newest.with_file_name(format!("{name}.corrupt")).exists());
        assert_eq!(&run_outcome(&tmp.path().join(&out)), baseline());
        assert_metrics_clean(&tmp.path().join(&out));
        println!("trial {}: {phase}: {}", done + 1, err.trim());
        done += 1;
    }
    println!(
        "{done} flipped checkpoints in {tries} kills; every resume equal to the uninterrupted run"
    );
}

#[test]
fn a_flipped_finished_teacher_is_restored_before_the_student_learns_from_it() {
    let tmp = setup();
    let mut trials = 0;
    let out = loop {
        trials += 1;
        assert!(trials <= 5, "could not stop the distilled phase in 5 tries");
        let out = format!("out{trials}");
        if kill_mid_phase(tmp.path(), &out, "distilled").is_some() {
            break out;
        }
    };
    let teacher = tmp
        .path()
        .join(&out)
        .join("seed-0/teacher/model.safetensors");
    flip_tail(&teacher, 64);
    let o = run(tmp.path(), &out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("teacher/model.safetensors") && err.contains("restored the final weights"),
        "{err}"
    );
    assert_eq!(&run_outcome(&tmp.path().join(&out)), baseline());
    println!("{}", err.trim());
}

#[test]
fn an_edited_result_file_is_refused_not_reported() {
    let tmp = setup();
    let o = run(tmp.path(), "out", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let result = tmp.path().join("out/seed-0/teacher/result.json");
    let text = std::fs::read_to_string(&result).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let metric = v["metric"].to_string();
    // the teacher's test metric raised by 0.1 in the file
    let raised = format!("{}", v["metric"].as_f64().unwrap() + 0.1);
    std::fs::write(
        &result,
        text.replacen(
            &format!("\"metric\": {metric}"),
            &format!("\"metric\": {raised}"),
            1,
        ),
    )
    .unwrap();
    let o = run(tmp.path(), "out", &["--resume"]);
    assert_refused(&o, &["teacher/result.json", "checksum mismatch"]);
    println!("{}", stderr(&o).trim());
}

#[test]
fn concurrent_runs_on_one_dir_exactly_one_proceeds() {
    let tmp = setup();
    let pairs = trials(3);
    let (mut by_lock, mut by_used_dir) = (0, 0);
    for i in 0..pairs {
        let out = format!("pair{i}");
        let mut a = spawn(tmp.path(), &out, &[]);
        let mut b = spawn(tmp.path(), &out, &[]);
        let (ra, rb) = (a.wait().unwrap(), b.wait().unwrap());
        let errs: Vec<String> = [&mut a, &mut b]
            .iter_mut()
            .map(|c| {
                let mut s = String::new();
                std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut s).unwrap();
                s
            })
            .collect();
        let codes = [ra.code(), rb.code()];
        assert!(
            codes == [Some(0), Some(2)] || codes == [Some(2), Some(0)],
            "pair {i}: {codes:?} {errs:?}"
        );
        let loser = &errs[if codes[0] == Some(2) { 0 } else { 1 }];
        if loser.contains("in use by another distill process") {
            by_lock += 1;
        } else {
            assert!(loser.contains("already holds a run"), "{loser}");
            by_used_dir += 1;
        }
        assert_metrics_clean(&tmp.path().join(&out));
        assert_eq!(&run_outcome(&tmp.path().join(&out)), baseline());
    }
    println!(
        "{pairs} concurrent pairs: one proceeded each time; the other exited 2 on the lock {by_lock} times, \
         on the used dir {by_used_dir} times"
    );
    // a --resume beside a live run
    for i in 0..trials(1) {
        let out = format!("live{i}");
        let mut live = spawn(tmp.path(), &out, &[]);
        wait_for(
            &tmp.path().join(&out).join("seed-0/teacher/state.json"),
            &mut live,
        );
        let o = run(tmp.path(), &out, &["--resume"]);
        assert_refused(&o, &["in use", &format!("pid {}", live.id())]);
        assert!(live.wait().unwrap().success());
        assert_metrics_clean(&tmp.path().join(&out));
        assert_eq!(&run_outcome(&tmp.path().join(&out)), baseline());
        if i == 0 {
            println!("{}", stderr(&o).trim());
        }
    }
}

fn temp_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            temp_files(&p, found);
        } else if name.contains(".tmp") {
            found.push(p);
        }
    }
}

#[test]
fn a_full_disk_names_the_file_and_a_resume_after_freeing_space_matches() {
    let tmp = setup();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mnt)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "skipped: cannot mount a tmpfs here (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("skipped: no `mount` command ({e})");
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    // leave about 5 MB: room for two teacher checkpoints (2.2 MB each with momentum), not for the third
    std::fs::write(mnt.join("filler"), vec![0u8; 11_000_000]).unwrap();
    let o = run(tmp.path(), "mnt/out", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("mnt/out/seed-0/"), "the path is named: {err}");
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "the OS error once: {err}"
    );
    println!("{}", err.trim());
    let mut temps = Vec::new();
    temp_files(&mnt.join("out"), &mut temps);
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let o = run(tmp.path(), "mnt/out", &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&run_outcome(&mnt.join("out")), baseline());
    assert_metrics_clean(&mnt.join("out"));
}
