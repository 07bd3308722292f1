//! An MLP over node features alone: it needs no neighbours, so one node's prediction reads one feature row.

use std::sync::Arc;

use candle_nn::VarMap;
use distill_core::{FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::layers::dropout;

use super::{node_ids, Lin};
use crate::data::Graph;

/// A multi-layer perceptron on node features.
pub struct Mlp {
    graph: Arc<Graph>,
    pub(crate) layers: Vec<Lin>,
    pub(crate) sizes: Vec<usize>,
    dropout: f64,
    input_dropout: f64,
    varmap: VarMap,
}

impl Mlp {
    /// An MLP with `hidden` sizes over `graph`'s node features.
    pub fn new(
        graph: Arc<Graph>,
        hidden: &[usize],
        dropout: f64,
        input_dropout: f64,
        seed: u64,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, graph.device());
        let mut sizes = vec![graph.num_features];
        sizes.extend_from_slice(hidden);
        sizes.push(graph.num_classes);
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| Lin::new(&vb.pp(format!("fc{}", i + 1)), w[0], w[1], true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            graph,
            layers,
            sizes,
            dropout,
            input_dropout,
            varmap,
        })
    }
}

impl Network for Mlp {
    fn forward(&self, input: &candle_core::Tensor, mode: Mode) -> Result<Outputs> {
        let ids = node_ids(input, self.graph.num_nodes(), "mlp")?;
        let b = ids.len();
        let x = if b == self.graph.num_nodes()
            && ids.iter().enumerate().all(|(i, &v)| v as usize == i)
        {
            // every node in order: the feature matrix itself, no copy
            self.graph.features.clone()
        } else {
            let ids = candle_core::Tensor::from_vec(ids, b, self.graph.device())?;
            self.graph.features.index_select(&ids, 0)?
        };
        let mut h = dropout(&x, self.input_dropout, mode, "mlp.input")?;
        let mut hidden = Vec::new();
        for (i, lin) in self.layers.iter().enumerate() {
            h = lin.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
                hidden.push(h.clone());
                h = dropout(&h, self.dropout, mode, &format!("mlp.hidden{}", i + 1))?;
            }
        }
        let mut out = Outputs::logits(h.clone());
        for (i, t) in hidden.into_iter().enumerate() {
            out = out.with_feature(&format!("hidden{}", i + 1), FeatureKind::Vector, t)?;
        }
        out = out.with_feature("output", FeatureKind::Vector, h)?;
        Ok(out)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        self.sizes
            .windows(2)
            .map(|w| 2 * (w[0] * w[1]) as u64)
            .sum()
    }

    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> Result<()> {
        self.emit_onnx(g)
    }

    fn describe(&self) -> String {
        let s: Vec<String> = self.sizes.iter().map(|s| s.to_string()).collect();
        format!(
            "mlp {} (dropout {}, input dropout {})",
            s.join("-"),
            self.dropout,
            self.input_dropout
        )
    }
}
