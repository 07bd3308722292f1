//! For tests that need the real data or models (`$DISTILL_DATA`, `$DISTILL_MODELS`): without them a test may
//! skip with a printed reason on a developer's machine, but under `CI=true` it fails, so CI never passes a
//! real-data test that did not run.

use std::path::PathBuf;

/// The directory `$VAR` names (with `sub` inside it, when given), or — when it is unset or missing — `None`
/// after printing why `what` is skipped; under `CI=true` a missing directory panics instead.
pub fn required_dir(var: &str, sub: Option<&str>, what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|d| d.is_dir() && sub.is_none_or(|s| d.join(s).exists()));
    if dir.is_none() {
        let why = match sub {
            Some(s) => format!("${var} is not set to a directory holding {s}/"),
            None => format!("${var} is not set to a directory"),
        };
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{what} needs the real data: {why} (under CI=true this test may not skip)");
        }
        eprintln!("skipped: {what}: {why}");
    }
    dir
}
