//! Records the compiler's version and the candle release for the plugin ABI declaration
//! (`distill_core::abi::RUSTC_VERSION`, `CANDLE_VERSION`): a plugin library and the `distill` binary must be
//! built by the same rustc against the same candle, since Rust has no stable ABI.
//!
//! The candle release is read from this crate's manifest, where it must be an exact pin (`=X.Y.Z`, directly or
//! through the workspace's `[workspace.dependencies]`): the pin forces every build of distill-core — the
//! binary's and every plugin's — onto that release, so the version recorded is the one compiled against.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The exact version in a `candle-core = ...` line (`"=0.11.1"` or `{ version = "=0.11.1", .. }`).
fn pinned(line: &str) -> Option<Result<String, String>> {
    let rest = line.trim_start().strip_prefix("candle-core")?;
    let rest = rest.trim_start();
    if !(rest.starts_with('=') || rest.starts_with(".workspace")) {
        return None;
    }
    if rest.starts_with(".workspace") || rest.contains("workspace = true") {
        return Some(Err("workspace".into()));
    }
    let quoted = rest.split('"').nth(1)?;
    Some(match quoted.strip_prefix('=') {
        Some(v) => Ok(v.trim().to_string()),
        None => Err(format!(
            "candle-core = \"{quoted}\" is not an exact pin (=X.Y.Z)"
        )),
    })
}

/// The candle-core requirement in the `[section]` of the manifest at `path`.
fn requirement(path: &Path, section: &str) -> Option<Result<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == section;
            continue;
        }
        if inside {
            if let Some(r) = pinned(t) {
                return Some(r);
            }
        }
    }
    None
}

fn candle_version() -> Result<String, String> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let own = dir.join("Cargo.toml");
    println!("cargo:rerun-if-changed={}", own.display());
    match requirement(&own, "[dependencies]") {
        Some(Err(w)) if w == "workspace" => {
            // the workspace root above this crate names the version
            for root in dir.ancestors().skip(1) {
                let m = root.join("Cargo.toml");
                if let Some(r) = requirement(&m, "[workspace.dependencies]") {
                    println!("cargo:rerun-if-changed={}", m.display());
                    return r;
                }
            }
            Err(
                "candle-core.workspace = true, but no workspace manifest above names candle-core"
                    .into(),
            )
        }
        Some(r) => r,
        None => Err(format!(
            "{}: no candle-core dependency found",
            own.display()
        )),
    }
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    // "rustc 1.95.0 (59807616e 2026-04-14)": the version and its commit identify the compiler.
    let version = version
        .strip_prefix("rustc ")
        .unwrap_or(&version)
        .to_string();
    println!("cargo:rustc-env=DISTILL_RUSTC_VERSION={version}");
    match candle_version() {
        Ok(v) => println!("cargo:rustc-env=DISTILL_CANDLE_VERSION={v}"),
        Err(e) => {
            // the plugin ABI needs the exact candle release: refuse to build rather than guess
            eprintln!("distill-core: cannot tell which candle release it is built against: {e}");
            std::process::exit(1);
        }
    }
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
