//! The plugin registry and third-party plugin libraries, through the real `distill` binary: the template
//! plugin (examples/plugin-template) built as a cdylib and run from a user registry, and each way a registry
//! or a library can be wrong (tests/plugins/* are deliberately broken libraries).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use distill_tests::{distill, stderr, stdout, target_profile};

const LIBS: [&str; 4] = [
    "distill-plugin-template",
    "distill-test-plugin-panicky",
    "distill-test-plugin-abi-mismatch",
    "distill-test-plugin-no-declaration",
];

fn cargo_profile_args(profile: &str) -> Vec<String> {
    match profile {
        "debug" => vec![],
        "release" => vec!["--release".into()],
        p => vec!["--profile".into(), p.into()],
    }
}

/// Builds the plugin libraries (once per test process) in the profile of the `distill` binary under test,
/// and returns the directory holding them.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let (target, profile) = target_profile();
        // `--workspace --lib`, not `-p` for each library: features are unified over the packages a cargo
        // call selects, so this matches the README's `cargo build --workspace` and reuses every dependency it
        // built (a `-p` subset would rebuild candle with another feature set: minutes in CI).
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--workspace", "--lib"])
            .current_dir(distill_tests::root());
        cmd.args(cargo_profile_args(&profile));
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "building the plugin libraries failed:\n{}",
            stderr(&out)
        );
        let dir = target.join(profile);
        for l in LIBS {
            use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
            let f = dir.join(format!("{DLL_PREFIX}{}{DLL_SUFFIX}", l.replace('-', "_")));
            assert!(f.is_file(), "{} was not built", f.display());
        }
        dir
    })
}

fn lib(crate_name: &str) -> PathBuf {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    lib_dir().join(format!(
        "{DLL_PREFIX}{}{DLL_SUFFIX}",
        crate_name.replace('-', "_")
    ))
}

/// A scratch dir inside the library dir, so a registry there can name a library by a relative path.
fn scratch() -> tempfile::TempDir {
    let base = lib_dir().join("plugin-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn registry(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
    let mut text = String::from("schema_version = 1\n");
    for (name, path) in entries {
        text.push_str(&format!(
            "\n[[plugin]]\nname = \"{name}\"\nsource = \"dylib\"\npath = \"{path}\"\n"
        ));
    }
    let p = dir.join("user-plugins.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn rel(crate_name: &str) -> String {
    // the scratch dir is lib_dir/plugin-tests/<tmp>/: the library is two levels up
    format!(
        "../../{}",
        lib(crate_name).file_name().unwrap().to_string_lossy()
    )
}

/// `path` with `..` resolved, as the registry shows it.
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected exit 2\nstdout: {}\nstderr: {err}",
        stdout(o)
    );
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(
        !err.contains("panicked at") || needle.contains("panicked"),
        "{err}"
    );
}

#[test]
fn the_template_plugin_runs_from_a_user_registry() {
    let dir = scratch();
    let d = dir.path();
    let reg = registry(d, &[("tabular", &rel("distill-plugin-template"))]);
    // the template's own data generator writes the CSV files. `--workspace --examples` selects what
    // `cargo test --workspace` built (features unified the same way), so nothing is rebuilt; a `cargo run -p`
    // of the example alone would rebuild candle and gemm with another feature set (minutes in CI).
    let (target, profile) = target_profile();
    let build = Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--examples"])
        .args(cargo_profile_args(&profile))
        .current_dir(distill_tests::root())
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", stderr(&build));
    let out = Command::new(
        target
            .join(&profile)
            .join("examples")
            .join(format!("make_spirals{}", std::env::consts::EXE_SUFFIX)),
    )
    .arg(d.join("data/spirals"))
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let reg_s = reg.to_str().unwrap();
    let o = distill(d, &["plugins", "--registry", reg_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let row = table
        .lines()
        .find(|l| l.starts_with("tabular "))
        .expect("a tabular row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..2], ["tabular", "dylib"], "{table}");
    assert!(row.contains("tabular classification"), "{row}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("image-classification ") && l.contains("builtin")),
        "{table}"
    );

    let recipe = distill_tests::root().join("examples/plugin-template/recipes/spirals.toml");
    let recipe_s = recipe.to_str().unwrap();
    let o = distill(d, &["check", recipe_s, "--registry", reg_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("student  mlp 2-16-16-3 (371 params)"),
        "{}",
        stdout(&o)
    );

    // the registry also comes from $DISTILL_REGISTRY
    let o = Command::new(distill_tests::distill_bin())
        .args([
            "run",
            recipe_s,
            "--quick",
            "--data-dir",
            "data",
            "--out",
            "out",
            "--quiet",
            "--no-cache",
        ])
        .env("DISTILL_REGISTRY", &reg)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/report.json")).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["plugin"], "tabular");
    assert_eq!(run["dataset"], "csv");
    let metric = |phase: &str| run[phase]["metric"]["mean"].as_f64().unwrap();
    let params = |phase: &str| run[phase]["params"].as_u64().unwrap();
    // 3 spiral arms: chance is 1/3; the 2-128-128-3 teacher separates them well even after 15 epochs
    assert!(metric("teacher") > 0.85, "{run}");
    for phase in ["scratch", "distilled"] {
        let m = metric(phase);
        assert!(m > 0.34 && m <= 1.0, "{phase}: {m}");
    }
    assert_eq!(
        params("teacher"),
        2 * 128 + 128 + 128 * 128 + 128 + 128 * 3 + 3
    );
    assert_eq!(params("scratch"), 371);
    assert_eq!(params("distilled"), 371);
    assert!(d.join("out/seed-0/distilled/model.safetensors").exists());

    // the teacher cache's key covers the library's contents: the same library reuses its teacher, a rebuilt
    // one (here: the same file with one byte appended, which the loader ignores) trains it again
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let copy = d.join(format!("{DLL_PREFIX}copy{DLL_SUFFIX}"));
    std::fs::copy(lib("distill-plugin-template"), &copy).unwrap();
    let reg2 = registry(
        d,
        &[("tabular", copy.file_name().unwrap().to_str().unwrap())],
    );
    let cached_run = |out: &str| {
        let o = distill(
            d,
            &[
                "run",
                recipe_s,
                "--quick",
                "--data-dir",
                "data",
                "--out",
                out,
                "--quiet",
                "--cache-dir",
                "cache",
                "--registry",
                reg2.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        cache_events(d, "teacher s")
    };
    // the events of the cache log's lines about one phase's entries (their detail is the phase's label)
    fn cache_events(d: &Path, label: &str) -> Vec<String> {
        let log = std::fs::read_to_string(d.join("cache/log.jsonl")).unwrap();
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["detail"].as_str().unwrap_or("").starts_with(label))
            .map(|v| v["event"].to_string())
            .collect()
    }
    assert_eq!(cached_run("c1"), ["\"trained\""]);
    assert_eq!(cached_run("c2"), ["\"trained\"", "\"reused\""]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .unwrap();
    std::io::Write::write_all(&mut f, b"\0").unwrap();
    drop(f);
    assert_eq!(
        cached_run("c3"),
        ["\"trained\"", "\"reused\"", "\"trained\""],
        "a changed library misses the cache"
    );
    // the scratch student's entry follows the same rule
    assert_eq!(
        cache_events(d, "scratch s"),
        ["\"trained\"", "\"reused\"", "\"trained\""]
    );
}

#[test]
fn a_panic_in_a_plugin_is_an_error_not_a_crash() {
    let dir = scratch();
    let d = dir.path();
    let reg = registry(d, &[("panicky", &rel("distill-test-plugin-panicky"))]);
    let recipe = distill_tests::tiny_recipe(1)
        .replace("plugin = \"image-classification\"", "plugin = \"panicky\"");
    std::fs::write(d.join("r.toml"), recipe).unwrap();
    // the data set folder is there (empty): the plugin is called and panics before it reads any of it
    std::fs::create_dir_all(d.join("data/mnist")).unwrap();
    let o = distill(
        d,
        &[
            "run",
            "r.toml",
            "--registry",
            reg.to_str().unwrap(),
            "--data-dir",
            "data",
            "--out",
            "out",
            "--quiet",
        ],
    );
    fails_with(&o, "plugin `panicky` panicked in `run`: index 3 of 0 went wrong at tests/plugins/panicky/src/lib.rs:");
    // the process stayed in control: nothing printed the default panic message
    assert!(!stderr(&o).contains("thread '"), "{}", stderr(&o));
}

#[test]
fn a_library_of_another_abi_version_is_refused_before_any_call() {
    let dir = scratch();
    let reg = registry(
        dir.path(),
        &[("old", &rel("distill-test-plugin-abi-mismatch"))],
    );
    let reg_s = reg.to_str().unwrap();
    let o = distill(dir.path(), &["plugins", "info", "old", "--registry", reg_s]);
    fails_with(
        &o,
        &format!(
            "user-plugins.toml:3: plugin `old`: {}: incompatible plugin: plugin ABI version {}, distill expects ABI version {}",
            normalized(&lib("distill-test-plugin-abi-mismatch")).display(),
            distill_core::abi::PLUGIN_ABI_VERSION + 1000,
            distill_core::abi::PLUGIN_ABI_VERSION
        ),
    );
    // the listing shows the others and names the broken one
    let o = distill(dir.path(), &["plugins", "--registry", reg_s]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("old") && l.contains("failed to load")),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("image-classification"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("plugin ABI version"), "{}", stderr(&o));
}

#[test]
fn a_library_without_the_declaration_is_refused() {
    let dir = scratch();
    let reg = registry(
        dir.path(),
        &[("nodecl", &rel("distill-test-plugin-no-declaration"))],
    );
    let o = distill(
        dir.path(),
        &[
            "plugins",
            "info",
            "nodecl",
            "--registry",
            reg.to_str().unwrap(),
        ],
    );
    fails_with(
        &o,
        "no `DISTILL_PLUGIN_DECLARATION` symbol: not a distill plugin",
    );
}

#[test]
fn a_missing_library_file_is_named() {
    let dir = scratch();
    let reg = registry(dir.path(), &[("ghost", "lib/libghost.so")]);
    let o = distill(
        dir.path(),
        &[
            "plugins",
            "info",
            "ghost",
            "--registry",
            reg.to_str().unwrap(),
        ],
    );
    fails_with(
        &o,
        &format!(
            "plugin `ghost`: {}: plugin library not found",
            normalized(&dir.path().join("lib/libghost.so")).display()
        ),
    );
}

#[test]
fn registry_mistakes_are_errors_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |text: &str| {
        std::fs::write(d.join("reg.toml"), text).unwrap();
        distill(d, &["plugins", "--registry", "reg.toml"])
    };
    // malformed TOML: file:line:column
    let o = write("schema_version = 1\n[[plugin]\nname = \"x\"\n");
    fails_with(&o, "reg.toml:2:");
    // an unknown source
    let o =
        write("schema_version = 1\n[[plugin]]\nname = \"x\"\nsource = \"wasm\"\npath = \"x.so\"\n");
    fails_with(
        &o,
        "reg.toml:4:10: unknown variant `wasm`, expected `builtin` or `dylib`",
    );
    // a name the project registry already has
    let o = write(
        "schema_version = 1\n[[plugin]]\nname = \"image-classification\"\nsource = \"dylib\"\npath = \"x.so\"\n",
    );
    fails_with(
        &o,
        "reg.toml:2: duplicate plugin name `image-classification` (already defined at plugins.toml (built in):6)",
    );
    // a duplicate within one file
    let o = write(
        "schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"dylib\"\npath = \"x.so\"\n\
         [[plugin]]\nname = \"a\"\nsource = \"dylib\"\npath = \"y.so\"\n",
    );
    fails_with(
        &o,
        "reg.toml:6: duplicate plugin name `a` (already defined at reg.toml:2)",
    );
    // a missing registry file
    let o = distill(d, &["plugins", "--registry", "nope.toml"]);
    fails_with(&o, "nope.toml: No such file or directory");
    // an unknown plugin in a recipe
    std::fs::write(
        d.join("r.toml"),
        distill_tests::tiny_recipe(1).replace("image-classification", "imaging"),
    )
    .unwrap();
    let o = distill(d, &["check", "r.toml"]);
    fails_with(
        &o,
        "r.toml: `plugin`: unknown plugin `imaging` (known: image-classification",
    );
}

/// docs/plugin-guide.md's Rust and TOML blocks are excerpts of the template, which CI builds and runs, so
/// the guide's code compiles.
#[test]
fn guide_code_is_the_template_code() {
    let root = distill_tests::root();
    let guide = std::fs::read_to_string(root.join("docs/plugin-guide.md")).unwrap();
    let t = root.join("examples/plugin-template");
    let sources: String = [
        "src/lib.rs",
        "src/data.rs",
        "src/model.rs",
        "Cargo.toml",
        "recipes/spirals.toml",
        "plugins.toml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(t.join(f)).unwrap())
    .collect::<Vec<_>>()
    .join("\n");
    let mut checked = 0;
    for fence in ["```rust\n", "```toml\n"] {
        for block in guide.split(fence).skip(1) {
            let code = block.split("\n```").next().unwrap();
            assert!(sources.contains(code), "not in the template:\n{code}");
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} code blocks found");
}

/// A third party's own `plugins.toml` in the working directory adds its plugin; the builtins stay.
#[test]
fn a_plugins_toml_without_builtins_in_the_working_dir_only_adds() {
    let dir = scratch();
    let d = dir.path();
    std::fs::write(
        d.join("plugins.toml"),
        format!(
            "schema_version = 1\n\n[[plugin]]\nname = \"tabular\"\nsource = \"dylib\"\npath = \"{}\"\n",
            rel("distill-plugin-template")
        ),
    )
    .unwrap();
    for args in [
        &["plugins"][..],
        &["plugins", "--registry", "plugins.toml"][..],
    ] {
        let o = distill(d, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let table = stdout(&o);
        for (name, source) in [("tabular", "dylib"), ("image-classification", "builtin")] {
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(&format!("{name} ")) && l.contains(source)),
                "{args:?}: {name} missing:\n{table}"
            );
        }
    }
}

/// A template recipe: `data` lines go into `[data]`, `phase` lines into `[teacher]`.
fn template_recipe(data: &str, phase: &str) -> String {
    format!(
        r#"name = "spirals-val"
plugin = "tabular"
dataset = "csv"
seeds = [0]

[data]
batch_size = 32
eval_batch_size = 1000
{data}
options = {{ features = 2, classes = 3, train = "s/train.csv", test = "s/test.csv" }}

[teacher]
model = {{ arch = "mlp", hidden = [32, 32] }}
epochs = 30
optimizer = {{ kind = "adamw", lr = 0.03, weight_decay = 0.0 }}
{phase}

[student]
model = {{ arch = "mlp", hidden = [8] }}
epochs = 2
optimizer = {{ kind = "adamw", lr = 0.01, weight_decay = 0.0 }}

[distill]
losses = [{{ name = "kd", temperature = 4.0, weight = 1.0 }}]
"#
    )
}

#[test]
fn the_template_gets_a_validation_split_and_early_stopping_from_core() {
    let dir = scratch();
    let d = dir.path();
    let reg = registry(d, &[("tabular", &rel("distill-plugin-template"))]);
    let reg_s = reg.to_str().unwrap();
    distill_tests::write_spirals(&d.join("data/s/train.csv"), 240, 1);
    distill_tests::write_spirals(&d.join("data/s/test.csv"), 300, 2);
    let run = |recipe: &str, out: &str| {
        distill(
            d,
            &[
                "run",
                recipe,
                "--registry",
                reg_s,
                "--data-dir",
                "data",
                "--out",
                out,
                "--quiet",
                "--no-cache",
            ],
        )
    };

    // early stopping without a validation split is refused before anything runs
    std::fs::write(
        d.join("no-val.toml"),
        template_recipe("", "early_stopping = { patience = 3 }"),
    )
    .unwrap();
    let o = distill(d, &["check", "no-val.toml", "--registry", reg_s]);
    fails_with(&o, "teacher.early_stopping");
    assert!(
        stderr(&o).contains("needs a validation split"),
        "{}",
        stderr(&o)
    );

    // a hold-out of every training row is refused, naming the key
    std::fs::write(
        d.join("all-val.toml"),
        template_recipe("validation = 240", "early_stopping = { patience = 3 }"),
    )
    .unwrap();
    fails_with(
        &run("all-val.toml", "o1"),
        "data.validation: holds out 240 samples but the training set has only 240",
    );

    // 60 of 240 training rows held out, 100 of 300 test rows kept: validation is evaluated after every
    // epoch and the best validation epoch's weights are kept
    std::fs::write(
        d.join("val.toml"),
        template_recipe(
            "validation = 60\ntest_limit = 100",
            "early_stopping = { patience = 4 }",
        ),
    )
    .unwrap();
    let o = distill(d, &["check", "val.toml", "--registry", reg_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run("val.toml", "out");
    assert!(o.status.success(), "{}", stderr(&o));
    let res: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/seed-0/teacher/result.json")).unwrap())
            .unwrap();
    let curve = res["curve"].as_array().unwrap();
    let epochs = res["epochs"].as_u64().unwrap() as usize;
    assert!((1..=30).contains(&epochs) && curve.len() == epochs, "{res}");
    let val: Vec<f64> = curve
        .iter()
        .map(|e| {
            e["val_metric"]
                .as_f64()
                .unwrap_or_else(|| panic!("no validation metric in epoch {e}"))
        })
        .collect();
    // accuracies over 60 rows: multiples of 1/60
    for v in &val {
        assert!((v * 60.0 - (v * 60.0).round()).abs() < 1e-6, "{val:?}");
    }
    // the best epoch is the first with the highest validation accuracy
    let best = res["best_val_epoch"].as_u64().expect("a best epoch") as usize;
    let max = val.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(
        best,
        val.iter().position(|&v| v == max).unwrap() + 1,
        "{val:?}"
    );
    // stopped early exactly `patience` epochs after the best one, or ran every epoch
    assert!(
        epochs == 30 || epochs == best + 4,
        "best {best}, {epochs} epochs"
    );
    // the kept weights are the best epoch's: the headline is its test metric
    let metric = res["metric"].as_f64().unwrap();
    assert_eq!(res["best_val_epoch_metric"].as_f64(), Some(metric), "{res}");
    assert!(
        curve.iter().all(|e| e.get("test_metric").is_none()),
        "{res}"
    );
    assert!(d.join("out/seed-0/teacher/best.safetensors").exists());
    // test_limit: 100 of the 300 test rows are evaluated, so errors = 100 * (1 - accuracy)
    let errors = res["extra"]["errors"].as_f64().unwrap();
    assert!((errors - 100.0 * (1.0 - metric)).abs() < 1e-6, "{res}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(report["runs"][0]["teacher"]["headline"], "best_val_epoch");
    assert_eq!(report["runs"][0]["scratch"]["headline"], "last_epoch");
}
