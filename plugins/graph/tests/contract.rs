//! The graph plugin through the plugin contract alone, as the `distill` binary drives it: a graph folder
//! written here, its task's splits, networks built on the loaded task (and on the placeholder task of
//! `distill check`), and the refusal of a model-table weight decay.

use std::path::Path;

use candle_core::Tensor;
use distill_core::{recipe::Recipe, BuildContext, Domain, Mode, RunContext, Split};
use distill_graph::GraphPlugin;

/// `n` nodes in 3 classes, 12 sparse features, edges to the nodes 1, 3 and 6 ahead; 15 train, 15 val, the
/// rest test.
fn write_graph(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut nodes = String::from("node_id\tlabel\tfeature_indices\n");
    for i in 0..n {
        let c = i % 3;
        nodes.push_str(&format!("{i}\t{c}\t{},{},{}\n", c, 3 + c, 6 + (i * 5) % 6));
    }
    let mut edges = String::from("src\tdst\n");
    for i in 0..n {
        for d in [1, 3, 6] {
            if i + d < n {
                edges.push_str(&format!("{i}\t{}\n", i + d));
            }
        }
    }
    std::fs::write(dir.join("nodes.tsv"), nodes).unwrap();
    std::fs::write(dir.join("edges.tsv"), edges).unwrap();
    let ids = |r: std::ops::Range<usize>| r.map(|i| format!("{i}\n")).collect::<String>();
    std::fs::write(dir.join("split_train.txt"), ids(0..15)).unwrap();
    std::fs::write(dir.join("split_val.txt"), ids(15..30)).unwrap();
    std::fs::write(dir.join("split_test.txt"), ids(30..n)).unwrap();
}

fn recipe(teacher_model: &str, distill_nodes: &str) -> Recipe {
    let text = format!(
        r#"name = "g"
plugin = "graph"
dataset = "graph-folder"
[data]
batch_size = 4096
validation = 15
options = {{ root = "g", num_features = 12, num_classes = 3, distill_nodes = "{distill_nodes}" }}
[teacher]
model = {teacher_model}
epochs = 1
optimizer = {{ kind = "adam", lr = 0.01, weight_decay = 5e-4, decay_only = ["conv1.lin.weight"] }}
[student]
model = {{ arch = "mlp", hidden = [4] }}
epochs = 1
optimizer = {{ kind = "adam", lr = 0.01 }}
[distill]
losses = [{{ name = "kd", weight = 1.0 }}]
"#
    );
    Recipe::parse(&text, "g.toml", false).unwrap()
}

#[test]
fn splits_networks_and_check_through_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    write_graph(&tmp.path().join("g"), 60);
    let plugin = GraphPlugin;
    let ctx = RunContext::new(tmp.path(), tmp.path().join("out"));
    for (nodes, train) in [("all", 60), ("train", 15)] {
        let r = recipe(r#"{ arch = "gcn", hidden = [8] }"#, nodes);
        let task = plugin.load_task(&r, &ctx).unwrap();
        assert_eq!(
            (
                task.len(Split::Train),
                task.len(Split::Val),
                task.len(Split::Test)
            ),
            (train, 15, 30),
            "distill_nodes = {nodes}"
        );
        let net = plugin
            .build_network(
                &r.teacher.model,
                &BuildContext::new(task.info(), 0, &ctx, Some(task.as_ref()))
                    .for_model(&r, "teacher.model"),
            )
            .unwrap();
        let ids = Tensor::new(&[0u32, 7, 59], &candle_core::Device::Cpu).unwrap();
        assert_eq!(net.forward(&ids, Mode::Eval).unwrap().logits.dims(), [3, 3]);
        // the first layer's weight is named as decay_only names it
        assert!(net
            .varmap()
            .data()
            .lock()
            .unwrap()
            .contains_key("conv1.lin.weight"));
    }
    // distill check reads no data: the placeholder task serves the build
    let r = recipe(r#"{ arch = "gcn", hidden = [8] }"#, "all");
    let s = distill_core::pipeline::check_recipe(&plugin, &r, &ctx).unwrap();
    assert!(s.teacher.starts_with("gcn"), "{}", s.teacher);
    // a GNN needs its task: without one the build is a clear error, not a panic
    let info = plugin.task_info(&r).unwrap();
    let e = plugin
        .build_network(&r.teacher.model, &BuildContext::new(&info, 0, &ctx, None))
        .err()
        .expect("no task")
        .to_string();
    assert!(e.contains("graph"), "{e}");
}

#[test]
fn weight_decay_in_a_model_table_points_to_the_optimiser() {
    let tmp = tempfile::tempdir().unwrap();
    write_graph(&tmp.path().join("g"), 40);
    let ctx = RunContext::new(tmp.path(), tmp.path().join("out"));
    let r = recipe(
        r#"{ arch = "gcn", hidden = [8], weight_decay = 5e-4 }"#,
        "all",
    );
    let e = distill_core::pipeline::check_recipe(&GraphPlugin, &r, &ctx)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("teacher.model") && e.contains("decay_only"),
        "{e}"
    );
}
