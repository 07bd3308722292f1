//! For tests that need the real data or models (`$DISTILL_DATA`, `$DISTILL_MODELS`): without them a test may
//! skip with a printed reason on a developer's machine, but under CI (`CI` set to anything but empty or
//! `false`, as CI services set `CI=true`) it fails, so CI never passes a real-data test that did not run.
//!
//! ```no_run
//! // in a test: the MNIST folder, or a skip (a panic under CI) naming what is missing
//! let Some(dir) = distill_data::testing::required_dir("DISTILL_DATA", Some("mnist"), "real MNIST") else {
//!     return;
//! };
//! # let _ = dir;
//! ```

use std::path::PathBuf;

/// Whether the tests run under CI: `$CI` is set, not empty and not `false` (`CI=true` in .ci/run).
pub fn in_ci() -> bool {
    ci_value(std::env::var("CI").ok().as_deref())
}

/// [`in_ci`] of a value of `$CI`.
fn ci_value(v: Option<&str>) -> bool {
    v.is_some_and(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("false"))
}

/// The directory `$VAR` names (with `sub` inside it, when given), or — when it is unset or missing — `None`
/// after printing on stderr why `what` is skipped; under CI ([`in_ci`]) a missing directory panics instead,
/// naming it.
pub fn required_dir(var: &str, sub: Option<&str>, what: &str) -> Option<PathBuf> {
    let set = std::env::var_os(var).map(PathBuf::from);
    let found = set
        .clone()
        .filter(|d| d.is_dir() && sub.is_none_or(|s| d.join(s).exists()));
    if found.is_none() {
        let why = missing(var, set.as_deref(), sub);
        if in_ci() {
            panic!("{what} needs {why} (under CI this test may not skip)");
        }
        eprintln!("skipped: {what}: {why}");
    }
    found
}

/// Which directory is missing, in words.
fn missing(var: &str, set: Option<&std::path::Path>, sub: Option<&str>) -> String {
    let want = match sub {
        Some(s) => format!("${var}/{s}"),
        None => format!("${var}"),
    };
    match set {
        None => format!("{want}, and ${var} is not set"),
        Some(d) if !d.is_dir() => {
            format!("{want}, and ${var} = {} is not a directory", d.display())
        }
        Some(d) => format!(
            "{want}: {} does not exist",
            d.join(sub.unwrap_or_default()).display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_any_value_but_empty_or_false() {
        for v in ["true", "1", "yes", "TRUE"] {
            assert!(ci_value(Some(v)), "{v}");
        }
        for v in [None, Some(""), Some("false"), Some("False"), Some(" ")] {
            assert!(!ci_value(v), "{v:?}");
        }
    }

    #[test]
    fn the_reason_names_the_missing_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            missing("DISTILL_DATA", None, Some("cora")),
            "$DISTILL_DATA/cora, and $DISTILL_DATA is not set"
        );
        let nowhere = tmp.path().join("nowhere");
        assert_eq!(
            missing("DISTILL_DATA", Some(&nowhere), None),
            format!(
                "$DISTILL_DATA, and $DISTILL_DATA = {} is not a directory",
                nowhere.display()
            )
        );
        assert_eq!(
            missing("DISTILL_MODELS", Some(tmp.path()), Some("minilm")),
            format!(
                "$DISTILL_MODELS/minilm: {} does not exist",
                tmp.path().join("minilm").display()
            )
        );
    }
}
