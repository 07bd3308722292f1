//! GCN (Kipf & Welling, ICLR 2017): `H' = D^-1/2 (A + I) D^-1/2 · dropout(H) · W + b`, ReLU between layers.

use std::sync::Arc;

use candle_nn::VarMap;
use distill_core::{Mode, Network, Outputs, Result};
use distill_nn::layers::dropout;

use super::{gnn_forward, Lin, Pass};
use crate::data::Graph;

/// A graph convolutional network.
pub struct Gcn {
    graph: Arc<Graph>,
    layers: Vec<Lin>,
    sizes: Vec<usize>,
    dropout: f64,
    varmap: VarMap,
}

impl Gcn {
    /// A GCN over `graph` with `hidden` sizes.
    pub fn new(graph: Arc<Graph>, hidden: &[usize], dropout: f64, seed: u64) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, graph.device());
        let mut sizes = vec![graph.num_features];
        sizes.extend_from_slice(hidden);
        sizes.push(graph.num_classes);
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            let vb = vb.pp(format!("conv{}", i + 1));
            let mut lin = Lin::new(&vb.pp("lin"), w[0], w[1], false)?;
            lin.bias = Some(vb.get_with_hints(w[1], "bias", candle_nn::Init::Const(0.0))?);
            layers.push(lin);
        }
        Ok(Self {
            graph,
            layers,
            sizes,
            dropout,
            varmap,
        })
    }
}

impl Network for Gcn {
    fn forward(&self, input: &candle_core::Tensor, mode: Mode) -> Result<Outputs> {
        let hops = self.layers.len();
        gnn_forward(&self.graph, input, mode, hops, "gcn", |view, x| {
            let mut h = x.clone();
            let mut hidden = Vec::new();
            for (i, lin) in self.layers.iter().enumerate() {
                h = dropout(&h, self.dropout, mode, &format!("gcn.layer{i}"))?;
                // transform first (the output is narrower than the input), then propagate
                let t = h.matmul(&lin.weight.t()?)?;
                h = view.gcn_propagate(&t)?;
                if let Some(b) = &lin.bias {
                    h = h.broadcast_add(b)?;
                }
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
        // per node: the dense transforms plus one weighted sum over (average degree + 1) neighbours per layer
        let n = self.graph.num_nodes().max(1) as u64;
        let avg = (2 * self.graph.adj.num_edges() as u64) / n + 1;
        self.sizes
            .windows(2)
            .map(|w| 2 * (w[0] * w[1]) as u64 + 2 * avg * w[1] as u64)
            .sum()
    }

    fn describe(&self) -> String {
        let s: Vec<String> = self.sizes.iter().map(|s| s.to_string()).collect();
        format!("gcn {} (dropout {})", s.join("-"), self.dropout)
    }
}
