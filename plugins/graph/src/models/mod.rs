//! Node-classification models: GCN (Kipf & Welling 2017), GraphSAGE with mean aggregation and neighbour
//! sampling (Hamilton et al. 2017), GAT (Veličković et al. 2018) and an MLP over node features alone.
//!
//! Every model is a [`Network`](distill_core::Network) whose input is a batch of **node ids** (`[B]` or
//! `[B, 1]`, any dtype) and whose logits are `[B, C]`. The graph is held by the model (an `Arc`), so the
//! training loop stays the generic one. A GNN in training mode runs over the whole graph and picks the batch's
//! rows; in eval mode, a small batch (fewer than 1/8 of the nodes) runs on the `L`-hop neighbourhood of its
//! nodes only, which gives exactly the same outputs (see [`crate::data::Graph::khop_view`]) — this is the
//! "one node at a time" path. The MLP reads only the batch's feature rows.
//!
//! Features: `hidden1` … `hiddenK` (post-activation hidden states) and `output` (logits) for the nodes the
//! pass ran on, kind `Nodes` for GNNs (the whole graph in training) and `Vector` for the MLP. Kipf's L2 on the
//! first layer's weights (every layer's for GAT) is an optimiser option, not part of a model: `optimizer =
//! { kind = "adam", lr = 0.01, weight_decay = 5e-4, decay_only = ["conv1.lin.weight"] }`.
//!
//! Parameter names follow PyTorch Geometric: `conv1.lin.weight` `[out, in]`, `conv1.bias`,
//! `conv1.lin_l.weight`/`conv1.lin_r.weight` (SAGE), `conv1.att_src`/`conv1.att_dst` (GAT), `fc1.weight` (MLP).

mod gat;
mod gcn;
mod mlp;
mod onnx;
mod sage;

use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};
use distill_core::{Error, FeatureKind, Mode, Network, Outputs, Result};
use serde::Deserialize;

pub use gat::Gat;
pub use gcn::Gcn;
pub use mlp::Mlp;
pub use sage::Sage;

use crate::data::{Graph, View};

/// Architectures this plugin builds.
pub const ARCHS: &[&str] = &["gcn", "sage", "gat", "mlp"];

fn default_gcn_hidden() -> Vec<usize> {
    vec![16]
}
fn default_dropout() -> f64 {
    0.5
}
fn default_gat_dropout() -> f64 {
    0.6
}
fn default_heads() -> usize {
    8
}
fn default_gat_hidden() -> usize {
    8
}
fn default_one() -> usize {
    1
}
fn default_mlp_hidden() -> Vec<usize> {
    vec![64]
}

/// A recipe's `model` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelSpec {
    /// `{ arch = "gcn", hidden = [16], dropout = 0.5 }`
    Gcn {
        /// Hidden sizes (one per hidden layer; Kipf: `[16]`).
        #[serde(default = "default_gcn_hidden")]
        hidden: Vec<usize>,
        /// Dropout on every layer's input (Kipf: 0.5).
        #[serde(default = "default_dropout")]
        dropout: f64,
    },
    /// `{ arch = "sage", hidden = [64], fanout = 10 }`: mean aggregation, `fanout` neighbours sampled per
    /// node and layer in training (all neighbours when absent, and always in evaluation).
    Sage {
        /// Hidden sizes.
        #[serde(default = "default_mlp_hidden")]
        hidden: Vec<usize>,
        /// Dropout on every layer's input.
        #[serde(default = "default_dropout")]
        dropout: f64,
        /// Neighbours sampled per node and layer in training.
        fanout: Option<usize>,
    },
    /// `{ arch = "gat", heads = 8, hidden = 8 }`: one hidden attention layer (heads concatenated, ELU) and an
    /// output attention layer (`out_heads` averaged).
    Gat {
        /// Features per head in the hidden layer.
        #[serde(default = "default_gat_hidden")]
        hidden: usize,
        /// Heads in the hidden layer.
        #[serde(default = "default_heads")]
        heads: usize,
        /// Heads in the output layer (averaged).
        #[serde(default = "default_one")]
        out_heads: usize,
        /// Dropout on every layer's input.
        #[serde(default = "default_gat_dropout")]
        dropout: f64,
        /// Dropout on the attention coefficients.
        #[serde(default = "default_gat_dropout")]
        attn_dropout: f64,
    },
    /// `{ arch = "mlp", hidden = [64], dropout = 0.5 }`: node features only, no neighbours.
    Mlp {
        /// Hidden sizes.
        #[serde(default = "default_mlp_hidden")]
        hidden: Vec<usize>,
        /// Dropout after every hidden layer.
        #[serde(default)]
        dropout: f64,
        /// Dropout on the input features.
        #[serde(default)]
        input_dropout: f64,
    },
}

fn check_rate(name: &str, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::config(
            "model",
            format!("`{name}` must be in [0, 1), got {p}"),
        ));
    }
    Ok(())
}

fn check_sizes(arch: &str, hidden: &[usize]) -> Result<()> {
    if hidden.is_empty() || hidden.contains(&0) {
        return Err(Error::config(
            "model",
            format!("{arch} needs at least one hidden layer and positive sizes, got hidden = {hidden:?}"),
        ));
    }
    Ok(())
}

/// Builds the model a spec describes over `graph`, its parameters initialised from `seed`.
pub fn build_model(spec: &ModelSpec, graph: Arc<Graph>, seed: u64) -> Result<Box<dyn Network>> {
    Ok(match spec {
        ModelSpec::Gcn { hidden, dropout } => {
            check_sizes("gcn", hidden)?;
            check_rate("dropout", *dropout)?;
            Box::new(Gcn::new(graph, hidden, *dropout, seed)?)
        }
        ModelSpec::Sage {
            hidden,
            dropout,
            fanout,
        } => {
            check_sizes("sage", hidden)?;
            check_rate("dropout", *dropout)?;
            if *fanout == Some(0) {
                return Err(Error::config("model", "`fanout` must be > 0"));
            }
            Box::new(Sage::new(graph, hidden, *dropout, *fanout, seed)?)
        }
        ModelSpec::Gat {
            hidden,
            heads,
            out_heads,
            dropout,
            attn_dropout,
        } => {
            if *hidden == 0 || *heads == 0 || *out_heads == 0 {
                return Err(Error::config(
                    "model",
                    "gat needs positive `hidden`, `heads` and `out_heads`",
                ));
            }
            check_rate("dropout", *dropout)?;
            check_rate("attn_dropout", *attn_dropout)?;
            Box::new(Gat::new(
                graph,
                *hidden,
                *heads,
                *out_heads,
                *dropout,
                *attn_dropout,
                seed,
            )?)
        }
        ModelSpec::Mlp {
            hidden,
            dropout,
            input_dropout,
        } => {
            check_sizes("mlp", hidden)?;
            check_rate("dropout", *dropout)?;
            check_rate("input_dropout", *input_dropout)?;
            Box::new(Mlp::new(graph, hidden, *dropout, *input_dropout, seed)?)
        }
    })
}

/// A linear map `y = x Wᵀ (+ b)` with Glorot-uniform weights (Kipf's and GAT's init) and zero bias.
#[derive(Debug, Clone)]
pub(crate) struct Lin {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Lin {
    pub fn new(vb: &VarBuilder, din: usize, dout: usize, bias: bool) -> Result<Self> {
        let a = (6.0 / (din + dout) as f64).sqrt();
        let weight = vb.get_with_hints((dout, din), "weight", Init::Uniform { lo: -a, up: a })?;
        let bias = if bias {
            Some(vb.get_with_hints(dout, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Node ids of an input batch (`[B]` or `[B, 1]`, any dtype), checked against the graph's size.
pub(crate) fn node_ids(input: &Tensor, n: usize, arch: &str) -> Result<Vec<u32>> {
    if input.rank() > 2 || (input.rank() == 2 && input.dim(1)? != 1) {
        return Err(Error::Shape(format!(
            "{arch} expects node ids [B] or [B, 1], got {:?}",
            input.dims()
        )));
    }
    let ids: Vec<u32> = input.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= n) {
        return Err(Error::Shape(format!(
            "{arch}: node {bad} does not exist (the graph has {n} nodes)"
        )));
    }
    Ok(ids)
}

/// What one pass of a GNN over a view produced.
pub(crate) struct Pass {
    /// Logits of every node of the view.
    pub out: Tensor,
    /// Hidden states of every node of the view.
    pub hidden: Vec<Tensor>,
}

/// Runs `pass` over the right view for `input` (the whole graph, or the `hops`-hop neighbourhood of a small
/// eval batch) and assembles the outputs for the batch's nodes.
pub(crate) fn gnn_forward(
    graph: &Graph,
    input: &Tensor,
    mode: Mode,
    hops: usize,
    arch: &str,
    pass: impl Fn(&View, &Tensor) -> Result<Pass>,
) -> Result<Outputs> {
    let n = graph.num_nodes();
    let ids = node_ids(input, n, arch)?;
    let dev = graph.device();
    let (p, pos) = if !mode.is_train() && ids.len() * 8 < n {
        let (view, pos) = graph.khop_view(&ids, hops)?;
        let nodes = view.nodes.as_ref().expect("a k-hop view lists its nodes");
        let x = graph.features.index_select(nodes, 0)?;
        (pass(&view, &x)?, pos)
    } else {
        let view = graph.full_view()?;
        (pass(&view, &graph.features)?, ids)
    };
    let b = pos.len();
    let pos = Tensor::from_vec(pos, b, dev)?;
    let mut outputs = Outputs::logits(p.out.index_select(&pos, 0)?);
    for (i, h) in p.hidden.into_iter().enumerate() {
        outputs = outputs.with_feature(&format!("hidden{}", i + 1), FeatureKind::Nodes, h)?;
    }
    outputs = outputs.with_feature("output", FeatureKind::Nodes, p.out)?;
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ring(n: usize, f: usize) -> Arc<Graph> {
        let pairs: Vec<(u32, u32)> = (0..n as u32).map(|i| (i, (i + 1) % n as u32)).collect();
        let mut x = vec![0f32; n * f];
        for i in 0..n {
            x[i * f + i % f] = 1.0;
            x[i * f + (i * 7) % f] += 0.5;
        }
        let x = Tensor::from_vec(x, (n, f), &Device::Cpu).unwrap();
        let labels = (0..n).map(|i| Some((i % 3) as u32)).collect();
        let adj = crate::data::Adjacency::from_pairs(n, &pairs);
        Arc::new(Graph::new("ring", x, 3, labels, adj, vec![0], vec![1], vec![2]).unwrap())
    }

    fn spec(t: &str) -> ModelSpec {
        toml::from_str::<toml::Table>(t)
            .unwrap()
            .try_into()
            .unwrap()
    }

    #[test]
    fn one_node_forward_equals_the_full_graph_forward() -> Result<()> {
        let g = ring(40, 6);
        for s in [
            r#"arch = "gcn""#,
            r#"arch = "sage""#,
            r#"arch = "gat""#,
            r#"arch = "mlp""#,
        ] {
            let net = build_model(&spec(s), g.clone(), 3)?;
            let all = Tensor::arange(0u32, 40, &Device::Cpu)?;
            let full: Vec<Vec<f32>> = net.forward(&all, Mode::Eval)?.logits.to_vec2()?;
            assert_eq!(full.len(), 40);
            assert_eq!(full[0].len(), 3);
            for node in [0u32, 17, 39] {
                let one = Tensor::new(&[node], &Device::Cpu)?;
                let o: Vec<Vec<f32>> = net.forward(&one, Mode::Eval)?.logits.to_vec2()?;
                for c in 0..3 {
                    assert!(
                        (o[0][c] - full[node as usize][c]).abs() < 1e-5,
                        "{s} node {node}: {:?} vs {:?}",
                        o[0],
                        full[node as usize]
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn parameter_counts_and_errors() -> Result<()> {
        let g = ring(10, 6);
        let count = |s: &str| {
            distill_core::network::num_params(build_model(&spec(s), g.clone(), 0).unwrap().as_ref())
        };
        // gcn 6-16-3: 6*16 + 16 + 16*3 + 3
        assert_eq!(count(r#"arch = "gcn""#), 6 * 16 + 16 + 16 * 3 + 3);
        // gat: W1 [64, 6], att_src/att_dst [1, 8, 8], bias 64; W2 [3, 64], att 2 x [1, 1, 3], bias 3
        assert_eq!(
            count(r#"arch = "gat""#),
            64 * 6 + 2 * 64 + 64 + 3 * 64 + 2 * 3 + 3
        );
        // sage 6-64-3: lin_l (w + b) and lin_r (w) per layer
        assert_eq!(
            count(r#"arch = "sage""#),
            (64 * 6 + 64 + 64 * 6) + (3 * 64 + 3 + 3 * 64)
        );
        let net = build_model(&spec(r#"arch = "gcn""#), g.clone(), 0)?;
        let e = net
            .forward(&Tensor::new(&[12u32], &Device::Cpu)?, Mode::Eval)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node 12 does not exist"), "{e}");
        let e = build_model(&spec("arch = \"gcn\"\ndropout = 1.5"), g.clone(), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("dropout"), "{e}");
        let e = toml::from_str::<toml::Table>("arch = \"gcn\"\nhiden = [4]")
            .unwrap()
            .try_into::<ModelSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("hiden"), "{e}");
        Ok(())
    }

    #[test]
    fn weight_decay_in_a_model_table_is_refused() {
        let e = toml::from_str::<toml::Table>("arch = \"gcn\"\nweight_decay = 5e-4")
            .unwrap()
            .try_into::<ModelSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("weight_decay"), "{e}");
    }
}
