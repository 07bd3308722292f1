//! GraphSAGE with mean aggregation (Hamilton et al., NeurIPS 2017), PyTorch Geometric's `SAGEConv`:
//! `h'_i = W_l · mean_{j ∈ S(i)} h_j + b + W_r · h_i`, where `S(i)` is `fanout` neighbours sampled per node and
//! layer in training (all of them when `fanout` is unset, and always in evaluation).

use std::sync::Arc;

use candle_nn::VarMap;
use distill_core::{Mode, Network, Outputs, Result, Rng};
use distill_nn::layers::dropout;

use super::{gnn_forward, Lin, Pass};
use crate::data::{sparse::propagate, Graph};

/// GraphSAGE (mean).
pub struct Sage {
    graph: Arc<Graph>,
    /// `(lin_l, lin_r)` per layer.
    layers: Vec<(Lin, Lin)>,
    sizes: Vec<usize>,
    dropout: f64,
    fanout: Option<usize>,
    varmap: VarMap,
}

impl Sage {
    /// GraphSAGE over `graph` with `hidden` sizes.
    pub fn new(
        graph: Arc<Graph>,
        hidden: &[usize],
        dropout: f64,
        fanout: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, graph.device());
        let mut sizes = vec![graph.num_features];
        sizes.extend_from_slice(hidden);
        sizes.push(graph.num_classes);
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            let vb = vb.pp(format!("conv{}", i + 1));
            layers.push((
                Lin::new(&vb.pp("lin_l"), w[0], w[1], true)?,
                Lin::new(&vb.pp("lin_r"), w[0], w[1], false)?,
            ));
        }
        Ok(Self {
            graph,
            layers,
            sizes,
            dropout,
            fanout,
            varmap,
        })
    }
}

impl Network for Sage {
    fn forward(&self, input: &candle_core::Tensor, mode: Mode) -> Result<Outputs> {
        let hops = self.layers.len();
        gnn_forward(&self.graph, input, mode, hops, "sage", |view, x| {
            let mut h = x.clone();
            let mut hidden = Vec::new();
            for (i, (lin_l, lin_r)) in self.layers.iter().enumerate() {
                h = dropout(&h, self.dropout, mode, &format!("sage.layer{i}"))?;
                let sampled = match (mode, self.fanout) {
                    (Mode::Train { seed }, Some(k)) => {
                        let mut rng = Rng::derive(seed, &[&"sage.sample", &i]);
                        Some(self.graph.sampled_neighbors(k, &mut rng)?)
                    }
                    _ => None,
                };
                let t = h.matmul(&lin_l.weight.t()?)?;
                let agg = match &sampled {
                    Some((edges, norm)) => {
                        propagate(&t, edges, view.num_nodes)?.broadcast_mul(norm)?
                    }
                    None => view.mean_propagate(&t)?,
                };
                let mut out = (agg + lin_r.forward(&h)?)?;
                if let Some(b) = &lin_l.bias {
                    out = out.broadcast_add(b)?;
                }
                h = out;
                if i + 1 < self.layers.len() {
                    h = h.relu()?;
                    hidden.push(h.clone());
                }
            }
            Ok(Pass { out: h, hidden })
        })
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        let n = self.graph.num_nodes().max(1) as u64;
        let avg = (2 * self.graph.adj.num_edges() as u64) / n;
        self.sizes
            .windows(2)
            .map(|w| 4 * (w[0] * w[1]) as u64 + 2 * avg * w[1] as u64)
            .sum()
    }

    fn describe(&self) -> String {
        let s: Vec<String> = self.sizes.iter().map(|s| s.to_string()).collect();
        let fan = self
            .fanout
            .map(|k| format!(", fan-out {k}"))
            .unwrap_or_default();
        format!("sage-mean {} (dropout {}{fan})", s.join("-"), self.dropout)
    }
}
