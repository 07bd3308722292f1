//! GAT (Veličković et al., ICLR 2018), PyTorch Geometric's `GATConv`: per head,
//! `e_ij = LeakyReLU_0.2(a_src · W h_j + a_dst · W h_i)` over the edges `j -> i` (self-loops included),
//! `α_ij = softmax_j(e_ij)` per destination, `h'_i = Σ_j α_ij W h_j`; hidden heads are concatenated (ELU),
//! output heads averaged. Dropout on every layer's input and on `α`.

use std::sync::Arc;

use candle_core::{Tensor, D};
use candle_nn::{Init, VarMap};
use distill_core::{Mode, Network, Outputs, Result};
use distill_nn::layers::dropout;

use super::{gnn_forward, Lin, Pass};
use crate::{
    data::sparse::segment_softmax,
    data::{Graph, View},
};

struct GatLayer {
    lin: Lin,
    att_src: Tensor,
    att_dst: Tensor,
    bias: Tensor,
    heads: usize,
    width: usize,
    concat: bool,
}

impl GatLayer {
    fn new(
        vb: &candle_nn::VarBuilder,
        din: usize,
        width: usize,
        heads: usize,
        concat: bool,
    ) -> Result<Self> {
        let lin = Lin::new(&vb.pp("lin"), din, heads * width, false)?;
        let a = (6.0 / (heads + width) as f64).sqrt();
        let att_src = vb.get_with_hints(
            (1, heads, width),
            "att_src",
            Init::Uniform { lo: -a, up: a },
        )?;
        let att_dst = vb.get_with_hints(
            (1, heads, width),
            "att_dst",
            Init::Uniform { lo: -a, up: a },
        )?;
        let out = if concat { heads * width } else { width };
        let bias = vb.get_with_hints(out, "bias", Init::Const(0.0))?;
        Ok(Self {
            lin,
            att_src,
            att_dst,
            bias,
            heads,
            width,
            concat,
        })
    }

    fn forward(
        &self,
        view: &View,
        x: &Tensor,
        attn_dropout: f64,
        mode: Mode,
        salt: &str,
    ) -> Result<Tensor> {
        let n = view.num_nodes;
        let e = &view.gcn;
        let wh = self.lin.forward(x)?.reshape((n, self.heads, self.width))?;
        let s_src = wh.broadcast_mul(&self.att_src)?.sum(D::Minus1)?; // [n, H]
        let s_dst = wh.broadcast_mul(&self.att_dst)?.sum(D::Minus1)?;
        let scores = (s_src.index_select(&e.src, 0)? + s_dst.index_select(&e.dst, 0)?)?; // [E, H]
        let scores = candle_nn::ops::leaky_relu(&scores, 0.2)?;
        let (alpha, _) = segment_softmax(&scores, e, n)?;
        let alpha = dropout(&alpha, attn_dropout, mode, salt)?;
        let msgs = wh
            .index_select(&e.src, 0)?
            .broadcast_mul(&alpha.unsqueeze(2)?)?; // [E, H, F]
        let agg = Tensor::zeros((n, self.heads, self.width), x.dtype(), x.device())?
            .index_add(&e.dst, &msgs, 0)?;
        let out = if self.concat {
            agg.reshape((n, self.heads * self.width))?
        } else {
            agg.mean(1)?
        };
        Ok(out.broadcast_add(&self.bias)?)
    }
}

/// A two-layer graph attention network.
pub struct Gat {
    graph: Arc<Graph>,
    layers: [GatLayer; 2],
    dropout: f64,
    attn_dropout: f64,
    varmap: VarMap,
}

impl Gat {
    /// A GAT over `graph`: `heads × hidden` concatenated, then `out_heads` averaged over the classes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        graph: Arc<Graph>,
        hidden: usize,
        heads: usize,
        out_heads: usize,
        dropout: f64,
        attn_dropout: f64,
        seed: u64,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, graph.device());
        let l1 = GatLayer::new(&vb.pp("conv1"), graph.num_features, hidden, heads, true)?;
        let l2 = GatLayer::new(
            &vb.pp("conv2"),
            heads * hidden,
            graph.num_classes,
            out_heads,
            false,
        )?;
        Ok(Self {
            graph,
            layers: [l1, l2],
            dropout,
            attn_dropout,
            varmap,
        })
    }
}

impl Network for Gat {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        gnn_forward(&self.graph, input, mode, 2, "gat", |view, x| {
            let h = dropout(x, self.dropout, mode, "gat.layer0")?;
            let h = self.layers[0]
                .forward(view, &h, self.attn_dropout, mode, "gat.attn0")?
                .elu(1.0)?;
            let h2 = dropout(&h, self.dropout, mode, "gat.layer1")?;
            let out = self.layers[1].forward(view, &h2, self.attn_dropout, mode, "gat.attn1")?;
            Ok(Pass {
                out,
                hidden: vec![h],
            })
        })
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        let n = self.graph.num_nodes().max(1) as u64;
        let avg = (2 * self.graph.adj.num_edges() as u64) / n + 1;
        let l = &self.layers;
        let (h1, w1) = (l[0].heads as u64, l[0].width as u64);
        let (h2, w2) = (l[1].heads as u64, l[1].width as u64);
        let f = self.graph.num_features as u64;
        2 * f * h1 * w1 + 4 * avg * h1 * w1 + 2 * h1 * w1 * h2 * w2 + 4 * avg * h2 * w2
    }

    fn describe(&self) -> String {
        let l = &self.layers;
        format!(
            "gat {}-{}x{}-{} ({} output heads, dropout {}, attention dropout {})",
            self.graph.num_features,
            l[0].heads,
            l[0].width,
            self.graph.num_classes,
            l[1].heads,
            self.dropout,
            self.attn_dropout
        )
    }
}
