//! The graph plugin's shipped recipes on real Cora (`DISTILL_DATA`), with `--quick` settings: one seed,
//! short phases. gcn-cora and glnn-cora share their quick teacher through a teacher cache, so it is trained
//! once. Skipped, with a note on stderr, when `DISTILL_DATA` is not set.

use std::path::Path;

use distill_tests::*;

fn run_quick(recipe: &str, data: &Path, cache: &Path, out: &Path) -> serde_json::Value {
    let path = root().join("plugins/graph/recipes").join(recipe);
    let o = distill(
        out.parent().unwrap(),
        &[
            "run",
            path.to_str().unwrap(),
            "--quick",
            "--quiet",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{recipe}: {}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn acc(run: &serde_json::Value, phase: &str) -> f64 {
    run[phase]["metric"]["mean"].as_f64().unwrap()
}

#[test]
fn graph_recipes_quick_on_cora() {
    let Some(data) = std::env::var_os("DISTILL_DATA") else {
        eprintln!("DISTILL_DATA is not set: skipping the real-data graph runs");
        return;
    };
    let data = Path::new(&data);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let t0 = std::time::Instant::now();

    let gcn = run_quick("gcn-cora.toml", data, &cache, &tmp.path().join("gcn"));
    let run = &gcn["runs"][0];
    eprintln!(
        "gcn-cora --quick: teacher {:.4} scratch {:.4} distilled {:.4} ({:.0} s)",
        acc(run, "teacher"),
        acc(run, "scratch"),
        acc(run, "distilled"),
        t0.elapsed().as_secs_f64()
    );
    // Kipf's GCN 1433-16-7: 1433*16 + 16 + 16*7 + 7 parameters
    assert_eq!(run["teacher"]["params"], 1433 * 16 + 16 + 16 * 7 + 7);
    let errors = run["teacher"]["extra"]["errors"]["mean"].as_f64().unwrap();
    assert!(
        (errors - 1000.0 * (1.0 - acc(run, "teacher"))).abs() < 1e-6,
        "1000 test nodes"
    );
    assert!(
        acc(run, "teacher") > 0.75,
        "GCN teacher {}",
        acc(run, "teacher")
    );

    let t1 = std::time::Instant::now();
    let glnn = run_quick("glnn-cora.toml", data, &cache, &tmp.path().join("glnn"));
    let run = &glnn["runs"][0];
    eprintln!(
        "glnn-cora --quick: teacher {:.4} scratch MLP {:.4} distilled MLP {:.4} ({:.0} s)",
        acc(run, "teacher"),
        acc(run, "scratch"),
        acc(run, "distilled"),
        t1.elapsed().as_secs_f64()
    );
    let teacher_dir = tmp.path().join("glnn/seed-0/teacher/result.json");
    let reused: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(teacher_dir).unwrap()).unwrap();
    assert_eq!(
        reused["reused"], true,
        "glnn-cora reuses gcn-cora's quick teacher"
    );
    assert!(
        acc(run, "scratch") < 0.7,
        "MLP alone {}",
        acc(run, "scratch")
    );
    assert!(
        acc(run, "distilled") > acc(run, "scratch") + 0.1,
        "distilled MLP {} vs MLP alone {}",
        acc(run, "distilled"),
        acc(run, "scratch")
    );
    // the MLP answers one node from its own features: faster than the GCN's 2-hop neighbourhood
    assert!(run["derived"]["speedup_batch1"].as_f64().unwrap() > 0.0);

    let t2 = std::time::Instant::now();
    let lsp = run_quick("lsp-cora.toml", data, &cache, &tmp.path().join("lsp"));
    let run = &lsp["runs"][0];
    eprintln!(
        "lsp-cora --quick: teacher {:.4} scratch GCN-4 {:.4} LSP GCN-4 {:.4} ({:.0} s)",
        acc(run, "teacher"),
        acc(run, "scratch"),
        acc(run, "distilled"),
        t2.elapsed().as_secs_f64()
    );
    assert_eq!(run["distilled"]["params"], 1433 * 4 + 4 + 4 * 7 + 7);
    assert!(
        acc(run, "distilled") > acc(run, "scratch"),
        "LSP student {} vs scratch {}",
        acc(run, "distilled"),
        acc(run, "scratch")
    );
    eprintln!(
        "graph quick recipes: {:.0} s in all",
        t0.elapsed().as_secs_f64()
    );
}
