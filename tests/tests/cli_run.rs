//! `distill run` end to end on a synthetic MNIST-format data set: the report, eval and export.

use distill_tests::*;

fn read_report(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn run_writes_a_report_that_eval_and_export_agree_with() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_mnist(&data, 2000, 400);
    std::fs::write(tmp.path().join("r.toml"), tiny_recipe(3)).unwrap();
    let out = run_in(tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let report = read_report(&tmp.path().join("out"));
    assert_eq!(report["schema_version"], 1);
    let run = &report["runs"][0];
    assert_eq!(run["plugin"], "image-classification");
    assert_eq!(run["metric"]["name"], "accuracy");
    // parameter counts from the architectures: 784-64-10 and 784-16-10
    let t_params = 784 * 64 + 64 + 64 * 10 + 10;
    let s_params = 784 * 16 + 16 + 16 * 10 + 10;
    assert_eq!(run["teacher"]["params"], t_params);
    assert_eq!(run["distilled"]["params"], s_params);
    let compression = run["derived"]["compression"].as_f64().unwrap();
    assert!((compression - (1.0 - s_params as f64 / t_params as f64)).abs() < 1e-12);
    for phase in ["teacher", "scratch", "distilled"] {
        let acc = run[phase]["metric"]["mean"].as_f64().unwrap();
        assert!(
            acc > 0.8,
            "{phase} accuracy {acc}: the synthetic set is easy"
        );
        let errors = run[phase]["extra"]["errors"]["mean"].as_f64().unwrap();
        assert!(
            (errors - (1.0 - acc) * 400.0).abs() < 1e-6,
            "errors {errors} vs accuracy {acc}"
        );
        assert_eq!(run[phase]["curves"][0].as_array().unwrap().len(), 3);
        assert!(run[phase]["latency_ms"]["batch1"].as_f64().unwrap() > 0.0);
        assert!(run[phase]["bytes"].as_u64().unwrap() > 4 * s_params as u64);
    }
    let kd_gain = run["derived"]["kd_gain"].as_f64().unwrap();
    let d = run["distilled"]["metric"]["mean"].as_f64().unwrap();
    let s = run["scratch"]["metric"]["mean"].as_f64().unwrap();
    assert!((kd_gain - (d - s)).abs() < 1e-12);
    // each phase keeps its 400 test examples' hits (1) and misses (0), whose mean is its accuracy
    for phase in ["teacher", "scratch", "distilled"] {
        let p = tmp
            .path()
            .join(format!("out/seed-0/{phase}/test_examples.json"));
        let e: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(e["kind"], "mean");
        let scores: Vec<f64> = e["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 400);
        assert!(scores.iter().all(|&v| v == 0.0 || v == 1.0));
        let acc = run[phase]["metric"]["mean"].as_f64().unwrap();
        assert!(
            (scores.iter().sum::<f64>() / 400.0 - acc).abs() < 1e-12,
            "{phase}"
        );
    }
    // the KD gain's paired bootstrap interval (1 seed x 400 examples) holds the gain
    let iv = &run["kd_gain_interval"];
    assert_eq!(
        (iv["seeds"].as_u64(), iv["examples"].as_u64()),
        (Some(1), Some(400)),
        "{iv}"
    );
    let (lo, hi) = (iv["lo"].as_f64().unwrap(), iv["hi"].as_f64().unwrap());
    assert!(lo <= kd_gain && kd_gain <= hi, "{iv} vs {kd_gain}");
    let md = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    assert!(md.contains("95 % interval") && md.contains("noise"), "{md}");
    let jsonl =
        std::fs::read_to_string(tmp.path().join("out/seed-0/distilled/metrics.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 3);

    // eval of the saved distilled student reproduces the reported accuracy
    let eval = distill(
        tmp.path(),
        &[
            "eval",
            "out/seed-0/distilled/model.safetensors",
            "--data-dir",
            "data",
        ],
    );
    assert!(eval.status.success(), "{}", stderr(&eval));
    assert!(
        stdout(&eval).contains(&format!("accuracy = {d:.4}")),
        "{} vs {d}",
        stdout(&eval)
    );

    // export copies the student and its card
    let ex = distill(tmp.path(), &["export", "out", "--to", "exported"]);
    assert!(ex.status.success(), "{}", stderr(&ex));
    let a = std::fs::read(tmp.path().join("out/seed-0/distilled/model.safetensors")).unwrap();
    let b = std::fs::read(tmp.path().join("exported/model.safetensors")).unwrap();
    assert_eq!(a, b);
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("exported/card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card["phase"], "distilled");

    // a second run into the same dir without --resume is refused, and nothing is overwritten
    let again = run_in(tmp.path());
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--resume"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(tmp.path().join("out/seed-0/distilled/model.safetensors")).unwrap(),
        a
    );
}

#[test]
fn trained_teacher_is_cached_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_mnist(&data, 1000, 200);
    std::fs::write(tmp.path().join("r.toml"), tiny_recipe(1)).unwrap();
    let args = |out: &'static str| -> Vec<&'static str> {
        vec![
            "run",
            "r.toml",
            "--data-dir",
            "data",
            "--out",
            out,
            "--quiet",
            "--cache-dir",
            "cache",
        ]
    };
    let a = distill(tmp.path(), &args("a"));
    assert!(a.status.success(), "{}", stderr(&a));
    let b = distill(tmp.path(), &args("b"));
    assert!(b.status.success(), "{}", stderr(&b));
    let ra = read_report(&tmp.path().join("a"));
    let rb = read_report(&tmp.path().join("b"));
    assert_eq!(
        ra["runs"][0]["teacher"]["metric"],
        rb["runs"][0]["teacher"]["metric"]
    );
    let ta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("b/seed-0/teacher/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ta["reused"], true);
    // the same seed gives the same scratch and distilled students
    assert_eq!(
        ra["runs"][0]["distilled"]["metric"],
        rb["runs"][0]["distilled"]["metric"]
    );
    assert_eq!(
        ra["runs"][0]["scratch"]["metric"],
        rb["runs"][0]["scratch"]["metric"]
    );
    // the scratch student never sees the teacher: a run with another distillation loss reuses it, with its
    // per-example scores (the paired interval needs them), and trains only its distilled student
    let other = tiny_recipe(1).replace(
        "{ name = \"kd\", temperature = 4.0, weight = 0.9 }",
        "{ name = \"dist\", weight = 0.9 }",
    );
    assert!(other.contains("dist"));
    std::fs::write(tmp.path().join("r2.toml"), other).unwrap();
    let mut c = args("c");
    c[1] = "r2.toml";
    let c = distill(tmp.path(), &c);
    assert!(c.status.success(), "{}", stderr(&c));
    let rc = read_report(&tmp.path().join("c"));
    let sc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("c/seed-0/scratch/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sc["reused"], true);
    assert_eq!(
        rc["runs"][0]["scratch"]["metric"],
        ra["runs"][0]["scratch"]["metric"]
    );
    assert!(tmp
        .path()
        .join("c/seed-0/scratch/test_examples.json")
        .is_file());
    assert!(
        rc["runs"][0]["kd_gain_interval"].is_object(),
        "{}",
        rc["runs"][0]
    );
    let log = std::fs::read_to_string(tmp.path().join("cache/log.jsonl")).unwrap();
    assert!(
        log.contains("\"reused\"") && log.contains("scratch s0"),
        "{log}"
    );
}

#[test]
fn check_validates_without_data() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("r.toml"), tiny_recipe(1)).unwrap();
    let o = distill(tmp.path(), &["check", "r.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("mlp 784-64-10") && s.contains("mlp 784-16-10"),
        "{s}"
    );
    // every shipped recipe checks
    let mut recipes = Vec::new();
    for plugin in std::fs::read_dir(root().join("plugins")).unwrap() {
        let dir = plugin.unwrap().path().join("recipes");
        for f in std::fs::read_dir(&dir).into_iter().flatten() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                recipes.push(
                    p.strip_prefix(root())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    assert!(
        recipes.iter().any(|r| r.ends_with("hinton-mnist.toml")),
        "{recipes:?}"
    );
    for r in &recipes {
        let r = r.as_str();
        let o = distill(&root(), &["check", r]);
        assert!(o.status.success(), "{r}: {}", stderr(&o));
        let o = distill(&root(), &["check", r, "--quick"]);
        assert!(o.status.success(), "{r} --quick: {}", stderr(&o));
    }
}

/// `distill check --losses` lists every core loss with the options its builder accepts, and the plugins'
/// domain losses; a recipe naming an option a loss does not take fails on one line naming both.
#[test]
fn check_lists_every_loss_with_its_options() {
    let o = distill(&root(), &["check", "--losses"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for (loss, options) in [
        ("kd", "temperature"),
        ("dist", "temperature, beta, gamma"),
        ("ls_kd", "temperature"),
        ("vid", "student_feature, teacher_feature, init_var"),
        ("pkt", "student_feature, teacher_feature"),
        ("nst", "student_feature, teacher_feature"),
        (
            "crd",
            "student_feature, teacher_feature, temperature, embed_dim, negatives, momentum",
        ),
    ] {
        assert!(
            s.lines()
                .any(|l| l.split_whitespace().next() == Some(loss) && l.ends_with(options)),
            "{loss}: {options} not listed:\n{s}"
        );
    }
    assert!(s.contains("graph (plugin losses): glnn, lsp"), "{s}");
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(1).replace(
        "{ name = \"kd\"",
        "{ name = \"dist\", gamma = 2.0, p = 3.0 }, { name = \"kd\"",
    );
    assert!(recipe.contains("\"dist\""), "the tiny recipe has a kd term");
    std::fs::write(tmp.path().join("r.toml"), recipe).unwrap();
    let o = distill(tmp.path(), &["check", "r.toml"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("`dist`") && e.contains("`p` does not apply") && e.lines().count() == 1,
        "{e}"
    );
}

#[test]
fn plugins_lists_the_builtin_plugin() {
    let o = distill(&root(), &["plugins"]);
    assert!(o.status.success());
    let table = stdout(&o);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["name", "source", "domain", "version", "models", "losses", "recipes"]
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("image-classification "))
        .unwrap();
    assert!(row.contains(" builtin "), "{row}");
    // listed because plugins.toml lists it
    assert!(table.contains("registry: plugins.toml"), "{table}");
    let o = distill(
        &root(),
        &["plugins", "info", "image-classification", "--json"],
    );
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(m["source"], "builtin");
    assert_eq!(m["origin"], "plugins.toml:6");
    assert!(m["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "wrn-40-2"));
    let o = distill(&root(), &["plugins", "info", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown plugin `nope`"));
}

#[test]
fn early_stopping_keeps_the_best_validation_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 1500, 300);
    let recipe = tiny_recipe(6)
        .replace("eval_batch_size = 500", "eval_batch_size = 500\nvalidation = 300")
        .replace("[student]\nmodel = { arch = \"mlp\", hidden = [16] }\nepochs = 6", "[student]\nmodel = { arch = \"mlp\", hidden = [16] }\nepochs = 6\nearly_stopping = { patience = 2 }");
    assert!(recipe.contains("early_stopping"), "{recipe}");
    std::fs::write(tmp.path().join("r.toml"), recipe).unwrap();
    let o = run_in(tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    for phase in ["scratch", "distilled"] {
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(format!("out/seed-0/{phase}/result.json")))
                .unwrap(),
        )
        .unwrap();
        let curve = r["curve"].as_array().unwrap();
        let vals: Vec<f64> = curve
            .iter()
            .map(|e| e["val_metric"].as_f64().unwrap())
            .collect();
        let best = r["best_val_epoch"].as_u64().unwrap() as usize;
        // the best epoch is the first with the highest validation accuracy
        let max = vals.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(
            best,
            vals.iter().position(|&v| v == max).unwrap() + 1,
            "{phase}: {vals:?}"
        );
        // training stopped within `patience` epochs of it, or ran out of epochs
        assert!(
            curve.len() == 6 || curve.len() == best + 2,
            "{phase}: {} epochs, best {best}",
            curve.len()
        );
        // test is read once, after training: no epoch has a test figure
        assert!(curve.iter().all(|e| e.get("test_metric").is_none()), "{r}");
        // the kept weights are the best epoch's; the last epoch's are evaluated too
        let metric = r["metric"].as_f64().unwrap();
        assert_eq!(r["best_val_epoch_metric"].as_f64().unwrap(), metric);
        let last = r["last_epoch_metric"]
            .as_f64()
            .expect("a last-epoch metric");
        if best == curve.len() {
            assert_eq!(last, metric, "{phase}");
        }
    }
}

/// No choice the pipeline makes depends on the test split: two runs whose data sets differ only in the test
/// labels train every phase identically (the same validation curves, best epochs, early stop and kept
/// weights, byte for byte), and only the final test figures differ.
#[test]
fn selection_never_reads_the_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(4)
        .replace("eval_batch_size = 500", "eval_batch_size = 500\nvalidation = 300")
        .replace(
            "[student]\nmodel = { arch = \"mlp\", hidden = [16] }\nepochs = 4",
            "[student]\nmodel = { arch = \"mlp\", hidden = [16] }\nepochs = 4\nearly_stopping = { patience = 1 }",
        );
    assert!(recipe.contains("early_stopping") && recipe.contains("validation"));
    let runs: Vec<std::path::PathBuf> = ["a", "b"]
        .iter()
        .map(|name| {
            let d = tmp.path().join(name);
            write_synthetic_mnist(&d.join("data"), 420, 300);
            std::fs::write(d.join("r.toml"), &recipe).unwrap();
            d
        })
        .collect();
    // run b's test labels are all 0: its test accuracy is that of predicting "0"
    write_idx(
        &runs[1].join("data/mnist/t10k-labels-idx1-ubyte.gz"),
        2049,
        &[300],
        &[0u8; 300],
        true,
    );
    for d in &runs {
        let o = run_in(d);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let result = |d: &std::path::Path, phase: &str| -> serde_json::Value {
        let p = d.join(format!("out/seed-0/{phase}/result.json"));
        let mut r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        // wall times differ from run to run
        for e in r["curve"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("seconds");
        }
        r
    };
    for phase in ["teacher", "scratch", "distilled"] {
        let (a, b) = (result(&runs[0], phase), result(&runs[1], phase));
        for key in ["best_val_epoch", "epochs", "curve"] {
            assert_eq!(a[key], b[key], "{phase}: {key} differs");
        }
        assert!(a["best_val_epoch"].as_u64().is_some(), "{a}");
        // the content digest distill writes in the header (the header's key order varies)
        let weights = |d: &std::path::Path| {
            let bytes =
                std::fs::read(d.join(format!("out/seed-0/{phase}/model.safetensors"))).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            let digest = header["__metadata__"]["distill.sha256"].clone();
            assert!(digest.is_string(), "{header}");
            digest
        };
        assert!(
            weights(&runs[0]) == weights(&runs[1]),
            "{phase}: kept weights differ"
        );
        // the test figures are read, and they are the only difference
        assert_ne!(a["metric"], b["metric"], "{phase}");
        assert_ne!(a["last_epoch_metric"], b["last_epoch_metric"], "{phase}");
    }
}

/// The number after `key` in `line` (up to the next space, `×` or `x`).
fn number_after(s: &str, key: &str) -> f64 {
    let rest = &s[s.find(key).unwrap_or_else(|| panic!("`{key}` not in {s}")) + key.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e} in {s}"))
}

/// `distill check --latency` reads the data (a graph's networks need it: plain `check` does not), times
/// both networks and prints FLOPs, latencies and speed-ups that agree with each other: the FLOPs those of
/// a GCN 12-8-3 and an MLP 12-8-3 on this graph, each speed-up the ratio of the printed latencies, the
/// target half the FLOPs ratio.
#[test]
fn check_latency_times_both_networks_on_the_real_task() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("r.toml"), tiny_graph_recipe(1)).unwrap();
    let o = distill(tmp.path(), &["check", "--latency", "r.toml"]);
    assert!(!o.status.success(), "no data: {}", stdout(&o));
    assert!(
        stderr(&o).contains("graph folder not found"),
        "{}",
        stderr(&o)
    );
    write_graph_folder(&tmp.path().join("data/g"), 60);
    let o = distill(tmp.path(), &["check", "--latency", "r.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    // 60 nodes, 2·(3·60 − 1 − 3 − 6) = 340 edge ends: average degree 340 / 60 = 5 (integer), + 1 self loop
    let (t_flops, s_flops) = (2 * (12 * 8 + 8 * 3) + 2 * 6 * (8 + 3), 2 * (12 * 8 + 8 * 3));
    assert_eq!(number_after(&s, "flops    teacher "), t_flops as f64, "{s}");
    assert_eq!(number_after(&s, "· student "), s_flops as f64, "{s}");
    let ratio = t_flops as f64 / s_flops as f64;
    assert!(
        (number_after(&s, "target speed-up ≥ ") - 0.5 * ratio).abs() < 0.006,
        "{s}"
    );
    let line = s.lines().find(|l| l.contains("latency  teacher")).unwrap();
    let t1 = number_after(line, "teacher ");
    let t256 = number_after(line, &format!("teacher {t1:.3} / "));
    let s1 = number_after(line, "student ");
    let s256 = number_after(line, &format!("student {s1:.3} / "));
    assert!(t1 > 0.0 && t256 > 0.0 && s1 > 0.0 && s256 > 0.0, "{line}");
    // each speed-up lies within what the printed (rounded) latencies allow
    let within = |speedup: f64, t: f64, st: f64, half_ulp: f64| {
        let (lo, hi) = (
            (t - half_ulp) / (st + half_ulp),
            (t + half_ulp) / (st - half_ulp),
        );
        speedup >= lo - 0.005 && speedup <= hi + 0.005
    };
    let b1 = number_after(&s, "\n  speed-up ");
    assert!(within(b1, t1, s1, 0.0005), "{s}");
    let b256 = number_after(s.split("at batch 1").nth(1).unwrap(), "), ");
    assert!(within(b256, t256, s256, 0.005), "{s}");
}
