//! The graph plugin end to end on a small generated graph folder, and its bad inputs: each gives one line
//! naming the file and the problem, exit code 2, and no panic.

use distill_tests::*;

fn expect_error(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

fn setup(n: usize) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_graph_folder(&tmp.path().join("data/g"), n);
    std::fs::write(tmp.path().join("r.toml"), tiny_graph_recipe(30)).unwrap();
    tmp
}

fn edit(tmp: &tempfile::TempDir, file: &str, f: impl Fn(String) -> String) {
    let p = tmp.path().join("data/g").join(file);
    let s = std::fs::read_to_string(&p).unwrap();
    std::fs::write(p, f(s)).unwrap();
}

#[test]
fn tiny_graph_runs_end_to_end() {
    let tmp = setup(90);
    let o = run_in(tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    let run = &r["runs"][0];
    assert_eq!(run["plugin"], "graph");
    // gcn 12-8-3 and mlp 12-8-3 have the same parameter count
    assert_eq!(run["teacher"]["params"], 12 * 8 + 8 + 8 * 3 + 3);
    assert_eq!(run["distilled"]["params"], 12 * 8 + 8 + 8 * 3 + 3);
    // 60 test nodes
    let acc = run["teacher"]["metric"]["mean"].as_f64().unwrap();
    let errors = run["teacher"]["extra"]["errors"]["mean"].as_f64().unwrap();
    assert!((errors - 60.0 * (1.0 - acc)).abs() < 1e-6);
    assert!(acc > 0.9, "the classes are separable from features: {acc}");
    // the whole graph is timed by the latency protocol (one pass over all 90 nodes), not by the evaluation
    assert!(run["teacher"]["extra"]
        .get("latency_all_nodes_ms")
        .is_none());
    let whole: Vec<&serde_json::Value> = run["teacher"]["latency_ms"]["timings"]
        .as_array()
        .expect("latency timings")
        .iter()
        .filter(|t| t["input"] == "whole graph")
        .collect();
    assert!(!whole.is_empty(), "{}", run["teacher"]["latency_ms"]);
    for t in whole {
        assert_eq!(t["batch"], 90);
        assert!(t["median_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn edge_naming_a_missing_node() {
    let tmp = setup(60);
    edit(&tmp, "edges.tsv", |s| s + "3\t75\n");
    expect_error(
        &run_in(tmp.path()),
        &["edges.tsv", "names node 75", "not in nodes.tsv", "60 nodes"],
    );
}

#[test]
fn feature_index_out_of_range() {
    let tmp = setup(60);
    edit(&tmp, "nodes.tsv", |s| {
        s.replacen("0\t0\t0,3,6", "0\t0\t0,3,12", 1)
    });
    expect_error(
        &run_in(tmp.path()),
        &[
            "nodes.tsv",
            "line 2",
            "feature index 12 is out of range",
            "12 features",
        ],
    );
}

#[test]
fn empty_split_file() {
    let tmp = setup(60);
    edit(&tmp, "split_val.txt", |_| String::new());
    expect_error(
        &run_in(tmp.path()),
        &["split_val.txt", "the val split is empty"],
    );
}

#[test]
fn node_in_two_splits() {
    let tmp = setup(60);
    edit(&tmp, "split_test.txt", |s| s + "4\n");
    expect_error(
        &run_in(tmp.path()),
        &["split_test.txt", "node 4 is already in the train split"],
    );
}

#[test]
fn bad_headers_labels_and_options() {
    let tmp = setup(60);
    edit(&tmp, "nodes.tsv", |s| s.replacen("1\t1\t", "1\t7\t", 1));
    expect_error(
        &run_in(tmp.path()),
        &["nodes.tsv", "line 3", "label 7 is out of range"],
    );

    let tmp = setup(60);
    edit(&tmp, "edges.tsv", |s| s.replacen("src\tdst", "from\tto", 1));
    expect_error(
        &run_in(tmp.path()),
        &["edges.tsv", "line 1", "expected the header"],
    );

    let tmp = setup(60);
    std::fs::write(
        tmp.path().join("r.toml"),
        tiny_graph_recipe(2).replace("validation = 15", "validation = 10"),
    )
    .unwrap();
    expect_error(
        &run_in(tmp.path()),
        &["data.validation", "15 validation nodes"],
    );

    let tmp = setup(60);
    std::fs::write(
        tmp.path().join("r.toml"),
        tiny_graph_recipe(2).replace(
            "name = \"glnn\", params = { lambda = 0.5 }",
            "name = \"ce\"",
        ),
    )
    .unwrap();
    expect_error(
        &run_in(tmp.path()),
        &["distill.losses[0]", "`ce`", "use `task`"],
    );

    let tmp = setup(60);
    std::fs::write(
        tmp.path().join("r.toml"),
        tiny_graph_recipe(2).replace("lambda = 0.5", "lambda = 2.0"),
    )
    .unwrap();
    expect_error(
        &run_in(tmp.path()),
        &["distill.losses[0]", "lambda", "[0, 1]"],
    );
}
