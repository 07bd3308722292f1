//! Replays every committed fuzz input (fuzz/regressions/<target>/*: the minimised corpus and every input
//! that once crashed a parser) through the same entry points as the cargo-fuzz targets, on stable, so a
//! parser that starts panicking again fails CI. See docs/reliability.md for the fuzzing runs.

#[path = "../../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

fn regressions() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

#[test]
fn every_committed_fuzz_input_is_handled_without_a_panic() {
    let mut total = 0;
    for (name, target) in targets::TARGETS {
        let dir = regressions().join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no inputs", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(
                r.is_ok(),
                "fuzz target `{name}` panicked on {}",
                f.display()
            );
        }
        total += files.len();
    }
    eprintln!("replayed {total} fuzz inputs");
}
