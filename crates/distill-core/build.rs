//! Records the compiler's version for the plugin ABI declaration (`distill_core::abi::RUSTC_VERSION`): a plugin
//! library and the `distill` binary must be built by the same rustc, since Rust has no stable ABI.

use std::process::Command;

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
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
