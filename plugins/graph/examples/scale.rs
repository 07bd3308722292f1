//! Scale benchmark: a generated graph the size of ogbn-arxiv (169,343 nodes, 1,166,243 undirected edges,
//! 128 features, 40 classes). Trains a GCN full-batch (sparse gather + scatter-add, no dense adjacency), then
//! distils it into an MLP on every node, and prints per-epoch time and peak resident memory of each stage,
//! plus inference latency over all nodes and for one node.
//!
//! ```sh
//! cargo run --release -p distill-graph --example scale
//! cargo run --release -p distill-graph --example scale -- --nodes 2708 --edges 5278 --features 1433 --classes 7
//! ```
//! Options: `--nodes N --edges M --features F --classes C --hidden H --epochs E --seed S`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use distill_core::{
    losses::kd_loss,
    train::{peak_rss_mb, reset_peak_rss},
    Mode, Network, Result,
};
use distill_graph::{
    data::generate_graph,
    losses::{masked_ce, UNLABELLED},
    metrics::node_latency,
    models::{Gcn, Mlp},
};
use distill_nn::optim::{build_optimizer, trainable_vars, OptimizerConfig};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    distill_core::runtime::init();
    let (n, m, f, c) = (
        arg("--nodes", 169_343),
        arg("--edges", 1_166_243),
        arg("--features", 128),
        arg("--classes", 40),
    );
    let (hidden, epochs, seed) = (
        arg("--hidden", 64),
        arg("--epochs", 5),
        arg("--seed", 0) as u64,
    );
    let dev = Device::Cpu;
    println!(
        "graph: {n} nodes, {m} undirected edges, {f} features, {c} classes; GCN {f}-{hidden}-{c}, MLP {f}-{hidden}-{c}; {epochs} epochs; {} threads",
        rayon_threads()
    );
    let t = Instant::now();
    let g = std::sync::Arc::new(generate_graph(n, m, f, c, seed, &dev)?);
    let view = g.full_view()?;
    println!(
        "generated in {:.1} s: {} message edges (A + I), peak RSS {:.0} MiB",
        t.elapsed().as_secs_f64(),
        view.gcn.len(),
        peak_rss_mb()
    );
    let all = Tensor::arange(0u32, n as u32, &dev)?;
    let mut is_train = vec![false; n];
    for &i in &g.train {
        is_train[i as usize] = true;
    }
    let targets: Vec<u32> = (0..n)
        .map(|i| {
            if is_train[i] {
                g.labels[i].unwrap_or(0)
            } else {
                UNLABELLED
            }
        })
        .collect();
    let targets = Tensor::from_vec(targets, n, &dev)?;
    let adam: OptimizerConfig = toml::from_str(
        "kind = \"adam\"\nlr = 0.01\nweight_decay = 5e-4\ndecay_only = [\"conv1.lin.weight\"]",
    )
    .map_err(|e| distill_core::Error::msg(e.to_string()))?;

    // GCN, full batch
    let gcn = Gcn::new(g.clone(), &[hidden], 0.5, seed)?;
    let mut opt = build_optimizer(&adam, trainable_vars(gcn.varmap()))?;
    reset_peak_rss();
    let base = peak_rss_mb();
    let mut times = Vec::new();
    for e in 0..epochs {
        let t = Instant::now();
        let out = gcn.forward(&all, Mode::Train { seed: e as u64 })?;
        let loss =
            (masked_ce(&out.logits, &targets)? + out.feature("l2_penalty")?.tensor.sum_all()?)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        let lv = loss.to_scalar::<f32>()?;
        times.push(t.elapsed().as_secs_f64());
        println!("  gcn epoch {}: loss {lv:.4}, {:.2} s", e + 1, times[e]);
    }
    let gcn_peak = peak_rss_mb();
    println!(
        "GCN training: {:.2} s/epoch (median of {epochs}), peak RSS {gcn_peak:.0} MiB (graph and features already resident: {base:.0} MiB)",
        median(times)
    );

    // soft labels of every node, then the MLP distilled on all nodes
    let t = Instant::now();
    let soft = gcn.forward(&all, Mode::Eval)?.logits.detach();
    println!(
        "GCN inference over all nodes: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let mlp = Mlp::new(g.clone(), &[hidden], 0.5, 0.0, seed)?;
    let mut opt = build_optimizer(&adam, trainable_vars(mlp.varmap()))?;
    reset_peak_rss();
    let mut times = Vec::new();
    for e in 0..epochs {
        let t = Instant::now();
        let out = mlp.forward(&all, Mode::Train { seed: e as u64 })?;
        let loss = kd_loss(&out.logits, &soft, 1.0)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        let lv = loss.to_scalar::<f32>()?;
        times.push(t.elapsed().as_secs_f64());
        println!("  mlp epoch {}: loss {lv:.4}, {:.2} s", e + 1, times[e]);
    }
    println!(
        "MLP distillation: {:.2} s/epoch (median of {epochs}), peak RSS {:.0} MiB",
        median(times),
        peak_rss_mb()
    );
    let lg = node_latency(&gcn, n, 3, 20, &dev)?;
    let lm = node_latency(&mlp, n, 3, 20, &dev)?;
    println!(
        "latency, all nodes: GCN {:.1} ms, MLP {:.1} ms ({:.1}x); one node: GCN {:.3} ms, MLP {:.3} ms ({:.1}x)",
        lg.all_nodes_ms,
        lm.all_nodes_ms,
        lg.all_nodes_ms / lm.all_nodes_ms,
        lg.one_node_ms,
        lm.one_node_ms,
        lg.one_node_ms / lm.one_node_ms
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
