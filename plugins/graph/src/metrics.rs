//! Inference timing for node classification: every node in one pass, and one node at a time (a GNN reads
//! the node's `L`-hop neighbourhood; an MLP reads one feature row).

use std::time::Instant;

use candle_core::{Device, Tensor};
use distill_core::{Mode, Network, Result};

/// Median latencies in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeLatency {
    /// One forward pass over every node.
    pub all_nodes_ms: f64,
    /// One node at a time (median over the nodes timed).
    pub one_node_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `net` over all `n` nodes (`reps` runs) and on `singles` single nodes spread over the graph.
pub fn node_latency(
    net: &dyn Network,
    n: usize,
    reps: usize,
    singles: usize,
    device: &Device,
) -> Result<NodeLatency> {
    let all = Tensor::arange(0u32, n as u32, device)?;
    net.forward(&all, Mode::Eval)?;
    let mut t_all = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let o = net.forward(&all, Mode::Eval)?;
        device.synchronize()?;
        drop(o);
        t_all.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut t_one = Vec::new();
    let step = (n / singles.max(1)).max(1);
    for k in 0..singles.max(1) {
        let node = Tensor::new(&[((k * step) % n) as u32], device)?;
        let t = Instant::now();
        let o = net.forward(&node, Mode::Eval)?;
        device.synchronize()?;
        drop(o);
        t_one.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(NodeLatency {
        all_nodes_ms: median(t_all),
        one_node_ms: median(t_one),
    })
}
