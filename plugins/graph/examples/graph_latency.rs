//! Inference latency of trained graph models, over every node and one node at a time: give it phase
//! directories written by `distill run` (each holds `model.safetensors` and `card.json`).
//!
//! ```sh
//! DISTILL_DATA=../shared/datasets cargo run --release -p distill-graph --example graph_latency -- \
//!     out/glnn-cora/seed-0/teacher out/glnn-cora/seed-0/distilled
//! ```
//! Per model: median of 20 passes over all nodes, and median over 200 single nodes spread over the graph
//! (a GNN computes the node's L-hop neighbourhood; an MLP reads one feature row).

use std::path::{Path, PathBuf};

use distill_core::{recipe::Recipe, BuildContext, Domain, Error, Result, RunContext};
use distill_graph::{metrics::node_latency, GraphPlugin};

fn main() -> Result<()> {
    distill_core::runtime::init();
    let dirs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        return Err(Error::msg("usage: latency PHASE_DIR [PHASE_DIR ...]"));
    }
    let data = std::env::var_os("DISTILL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("datasets"));
    let mut first = None;
    for dir in &dirs {
        let (name, l) = measure(dir, &data)?;
        let base = *first.get_or_insert(l);
        println!(
            "{:<40} all nodes {:>8.2} ms ({:>5.2}x)   one node {:>7.3} ms ({:>5.2}x)",
            name,
            l.all_nodes_ms,
            base.all_nodes_ms / l.all_nodes_ms,
            l.one_node_ms,
            base.one_node_ms / l.one_node_ms
        );
    }
    println!("(speed-ups relative to the first model)");
    Ok(())
}

fn measure(dir: &Path, data: &Path) -> Result<(String, distill_graph::metrics::NodeLatency)> {
    let card_path = dir.join("card.json");
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&card_path).map_err(|e| Error::io(&card_path, e))?,
    )
    .map_err(|e| Error::data(&card_path, e.to_string()))?;
    let field = |k: &str| -> Result<String> {
        card[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::data(&card_path, format!("no `{k}`")))
    };
    let recipe = Recipe::parse(
        &field("recipe_toml")?,
        &card_path.display().to_string(),
        false,
    )?;
    let plugin = GraphPlugin;
    let ctx = RunContext::new(data, dir);
    let task = plugin.load_task(&recipe, &ctx)?;
    let model: toml::Table =
        toml::from_str(&field("model")?).map_err(|e| Error::data(&card_path, e.to_string()))?;
    let net = plugin.build_network(
        &model,
        &BuildContext::new(task.info(), 0, &ctx, Some(task.as_ref())),
    )?;
    distill_core::network::load_network(net.as_ref(), &dir.join("model.safetensors"), &ctx.device)?;
    let n = task
        .as_any()
        .and_then(|t| t.downcast_ref::<distill_graph::GraphTask>())
        .map(|t| t.graph().num_nodes())
        .unwrap_or(0);
    let l = node_latency(net.as_ref(), n, 20, 200, &ctx.device)?;
    Ok((net.describe(), l))
}
