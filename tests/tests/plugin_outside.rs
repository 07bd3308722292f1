//! A plugin crate outside distill's workspace: examples/plugin-template copied into a fresh directory,
//! its distill dependencies pointed at this checkout by absolute path (the guide's "path" form), built there
//! as its own workspace with `cargo build --offline --lib`, and run by the `distill` binary through a user
//! registry. This is the proof that the template's Cargo.toml is what a third party can write: plain version
//! requirements, no `.workspace = true`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use distill_tests::{distill, root, stderr, target_profile};

/// Copies `from` into `to`, skipping build output.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The template's manifest, made standalone: distill path dependencies absolute, an empty `[workspace]`,
/// and the workspace's `[profile.*]` settings (so the build matches the `distill` binary's, debug assertions
/// included, which the ABI check compares).
fn standalone_manifest(template: &str, workspace: &str, checkout: &Path) -> String {
    let mut manifest: toml::Table = template.parse().expect("the template's Cargo.toml parses");
    let deps = manifest["dependencies"].as_table_mut().unwrap();
    for name in ["distill-core", "distill-nn"] {
        let dep = deps[name]
            .as_table_mut()
            .unwrap_or_else(|| panic!("{name} is a table dependency"));
        let rel = dep["path"].as_str().expect("a path dependency").to_string();
        assert!(
            !dep.contains_key("workspace"),
            "{name} must not be a workspace dependency"
        );
        let abs = checkout
            .join("examples/plugin-template")
            .join(rel)
            .canonicalize()
            .unwrap();
        dep.insert("path".into(), abs.to_string_lossy().into_owned().into());
    }
    let workspace: toml::Table = workspace.parse().unwrap();
    manifest.insert("workspace".into(), toml::Table::new().into());
    manifest.insert("profile".into(), workspace["profile"].clone());
    toml::to_string(&manifest).unwrap()
}

#[test]
fn the_template_builds_outside_the_workspace_and_loads() {
    let checkout = root().canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        !d.starts_with(&checkout),
        "the copy must be outside the workspace"
    );
    let krate = d.join("tabular-plugin");
    copy_tree(&checkout.join("examples/plugin-template"), &krate);
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let manifest = standalone_manifest(
        &read(krate.join("Cargo.toml")),
        &read(checkout.join("Cargo.toml")),
        &checkout,
    );
    std::fs::write(krate.join("Cargo.toml"), manifest).unwrap();

    // the same cargo and rustc as this test (the ABI check compares rustc versions); dependency builds
    // kept across runs in their own target dir
    let (target, profile) = target_profile();
    let out_target = target.join("outside-plugin");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--offline", "--lib"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &out_target)
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("RUSTFLAGS");
    let rustc =
        Path::new(env!("CARGO")).with_file_name(format!("rustc{}", std::env::consts::EXE_SUFFIX));
    if rustc.is_file() {
        cargo.env("RUSTC", rustc);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        p => {
            cargo.args(["--profile", p]);
        }
    }
    let out = cargo.output().unwrap();
    assert!(
        out.status.success(),
        "building the template outside the workspace failed:\n{}",
        stderr(&out)
    );
    assert!(krate.join("Cargo.lock").is_file(), "its own Cargo.lock");
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let lib = out_target
        .join(&profile)
        .join(format!("{DLL_PREFIX}distill_plugin_template{DLL_SUFFIX}"));
    assert!(lib.is_file(), "{} was not built", lib.display());

    let reg = d.join("user-plugins.toml");
    std::fs::write(
        &reg,
        format!(
            "schema_version = 1\n\n[[plugin]]\nname = \"tabular\"\nsource = \"dylib\"\npath = {:?}\n",
            lib.to_str().unwrap()
        ),
    )
    .unwrap();
    // the recipe holds out the last 300 of 900 training rows
    distill_tests::write_spirals(&d.join("data/spirals/train.csv"), 900, 1);
    distill_tests::write_spirals(&d.join("data/spirals/test.csv"), 600, 2);
    let recipe = krate.join("recipes/spirals.toml");
    let o = distill(
        d,
        &[
            "run",
            recipe.to_str().unwrap(),
            "--quick",
            "--registry",
            reg.to_str().unwrap(),
            "--data-dir",
            "data",
            "--out",
            "out",
            "--quiet",
            "--no-cache",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/report.json")).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["plugin"], "tabular");
    assert_eq!(run["metric"]["name"], "accuracy", "{run}");
    // 3 spiral arms: chance is 1/3; the 2-128-128-3 teacher separates them well even after 15 epochs
    let teacher = run["teacher"]["metric"]["mean"].as_f64().unwrap();
    assert!(teacher > 0.85 && teacher <= 1.0, "{run}");
    // the recipe's validation split was evaluated
    let res: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/seed-0/teacher/result.json")).unwrap())
            .unwrap();
    assert!(res["curve"][0]["val_metric"].is_f64(), "{res}");
}
