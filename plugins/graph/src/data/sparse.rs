//! Sparse message passing on candle tensors: gather the sources' rows (`index_select`), weight them, and
//! scatter-add them onto their destinations (`index_add`). Both ops have a backward pass, so every model
//! trains through them. Nothing here ever builds a dense `N × N` matrix.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use distill_graph::data::sparse::{propagate, EdgeSet};
//! # fn main() -> distill_core::Result<()> {
//! let dev = Device::Cpu;
//! // edges 0 -> 1 (weight 2) and 1 -> 0 (weight 3)
//! let e = EdgeSet::new(vec![0, 1], vec![1, 0], Some(vec![2.0, 3.0]), &dev)?;
//! let x = Tensor::new(&[[1f32], [10.0]], &dev)?;
//! let y: Vec<Vec<f32>> = propagate(&x, &e, 2)?.to_vec2()?;
//! assert_eq!(y, vec![vec![30.0], vec![2.0]]);
//! # Ok(()) }
//! ```

use candle_core::{DType, Device, Tensor};
use distill_core::{Error, Result};

/// Directed edges `src -> dst` (u32 index tensors built once), with an optional weight per edge.
#[derive(Debug, Clone)]
pub struct EdgeSet {
    /// Source node of each edge, `[E]` u32.
    pub src: Tensor,
    /// Destination node of each edge, `[E]` u32.
    pub dst: Tensor,
    /// Weight of each edge, `[E, 1]` f32.
    pub weight: Option<Tensor>,
    /// Destinations on the host (segment reductions group by them).
    pub dst_host: Vec<u32>,
}

impl EdgeSet {
    /// Edges from host vectors.
    pub fn new(
        src: Vec<u32>,
        dst: Vec<u32>,
        weight: Option<Vec<f32>>,
        device: &Device,
    ) -> Result<Self> {
        let e = src.len();
        if dst.len() != e || weight.as_ref().is_some_and(|w| w.len() != e) {
            return Err(Error::Shape(format!(
                "edge lists differ in length: {} sources, {} destinations",
                e,
                dst.len()
            )));
        }
        let weight = match weight {
            Some(w) => Some(Tensor::from_vec(w, (e, 1), device)?),
            None => None,
        };
        Ok(Self {
            src: Tensor::from_vec(src, e, device)?,
            dst: Tensor::from_vec(dst.clone(), e, device)?,
            weight,
            dst_host: dst,
        })
    }

    /// Number of edges.
    pub fn len(&self) -> usize {
        self.dst_host.len()
    }

    /// Whether there are no edges.
    pub fn is_empty(&self) -> bool {
        self.dst_host.is_empty()
    }
}

/// `out[i] = Σ_{e: dst(e) = i} w_e · x[src(e)]` for `x` of shape `[N, ...]`: the sparse product `A x` with
/// `A[dst, src] = w` (unweighted edges count 1). `n` is the number of output rows.
pub fn propagate(x: &Tensor, edges: &EdgeSet, n: usize) -> Result<Tensor> {
    let msgs = x.index_select(&edges.src, 0)?;
    let msgs = match &edges.weight {
        Some(w) if x.rank() == 2 => msgs.broadcast_mul(w)?,
        Some(w) => {
            let mut shape = vec![edges.len()];
            shape.resize(x.rank(), 1);
            msgs.broadcast_mul(&w.reshape(shape)?)?
        }
        None => msgs,
    };
    let mut shape = x.dims().to_vec();
    shape[0] = n;
    let zeros = Tensor::zeros(shape, x.dtype(), x.device())?;
    Ok(zeros.index_add(&edges.dst, &msgs, 0)?)
}

/// Softmax of per-edge `scores` (`[E]` or `[E, H]`) over the edges that share a destination, as
/// `(probabilities, log-probabilities)`. Each group is shifted by its own maximum (computed on the host
/// from detached values, which leaves the gradient unchanged), so no group underflows.
pub fn segment_softmax(scores: &Tensor, edges: &EdgeSet, n: usize) -> Result<(Tensor, Tensor)> {
    let e = edges.len();
    if scores.dim(0)? != e {
        return Err(Error::Shape(format!(
            "segment_softmax: {} scores for {e} edges",
            scores.dim(0)?
        )));
    }
    let h = scores.elem_count() / e.max(1);
    let s2 = scores.reshape((e, h))?;
    let host: Vec<f32> = s2.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut max = vec![f32::NEG_INFINITY; n * h];
    for (k, &d) in edges.dst_host.iter().enumerate() {
        for j in 0..h {
            let m = &mut max[d as usize * h + j];
            *m = m.max(host[k * h + j]);
        }
    }
    let mut shift = vec![0f32; e * h];
    for (k, &d) in edges.dst_host.iter().enumerate() {
        for j in 0..h {
            shift[k * h + j] = max[d as usize * h + j];
        }
    }
    let shift = Tensor::from_vec(shift, (e, h), scores.device())?.to_dtype(scores.dtype())?;
    let z = (s2 - shift)?;
    let ez = z.exp()?;
    let denom =
        Tensor::zeros((n, h), scores.dtype(), scores.device())?.index_add(&edges.dst, &ez, 0)?;
    let denom_e = denom.index_select(&edges.dst, 0)?;
    let p = (ez / &denom_e)?;
    let logp = (z - denom_e.log()?)?;
    Ok((p.reshape(scores.shape())?, logp.reshape(scores.shape())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Adjacency, Graph};

    /// The 4-node path 0 - 1 - 2 - 3 plus the edge 1 - 3, features `x`.
    fn small_graph() -> Graph {
        let dev = Device::Cpu;
        let adj = Adjacency::from_pairs(4, &[(0, 1), (1, 2), (2, 3), (1, 3), (3, 1)]);
        let x = Tensor::new(&[[1f32, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 4.0]], &dev).unwrap();
        Graph::new("g", x, 2, vec![Some(0); 4], adj, vec![0], vec![1], vec![2]).unwrap()
    }

    /// Dense reference D^-1/2 (A + I) D^-1/2 X, computed by hand-written loops.
    fn dense_gcn(adj: &[[f32; 4]; 4], x: &[[f32; 2]; 4]) -> Vec<Vec<f32>> {
        let mut a = *adj;
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += 1.0;
        }
        let d: Vec<f32> = a.iter().map(|r| r.iter().sum()).collect();
        (0..4)
            .map(|i| {
                (0..2)
                    .map(|f| {
                        (0..4)
                            .map(|j| a[i][j] / (d[i] * d[j]).sqrt() * x[j][f])
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn gcn_propagation_matches_the_dense_normalised_adjacency() -> Result<()> {
        let g = small_graph();
        assert_eq!(g.adj.num_edges(), 4, "duplicate 3-1 dropped");
        let view = g.full_view()?;
        let y: Vec<Vec<f32>> = view.gcn_propagate(&g.features)?.to_vec2()?;
        let adj = [
            [0., 1., 0., 0.],
            [1., 0., 1., 1.],
            [0., 1., 0., 1.],
            [0., 1., 1., 0.],
        ];
        let x = [[1., 0.], [0., 2.], [3., 1.], [-1., 4.]];
        let want = dense_gcn(&adj, &x);
        // node 0: degrees with self-loop d0 = 2, d1 = 4 -> 1/2 * x0 + 1/sqrt(8) * x1 = [0.5, 0.7071]
        assert!((want[0][0] - 0.5).abs() < 1e-6 && (want[0][1] - 0.70710677).abs() < 1e-6);
        for i in 0..4 {
            for f in 0..2 {
                assert!(
                    (y[i][f] - want[i][f]).abs() < 1e-5,
                    "{i},{f}: {y:?} vs {want:?}"
                );
            }
        }
        // mean aggregation over neighbours: node 1 averages nodes 0, 2, 3
        let m: Vec<Vec<f32>> = view.mean_propagate(&g.features)?.to_vec2()?;
        assert!((m[1][0] - (1.0 + 3.0 - 1.0) / 3.0).abs() < 1e-6);
        assert!((m[1][1] - (0.0 + 1.0 + 4.0) / 3.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn propagation_has_the_transposed_gradient() -> Result<()> {
        // d/dx sum(c * A x) = A^T c; with the symmetric GCN matrix, A c.
        let g = small_graph();
        let view = g.full_view()?;
        let x = candle_core::Var::from_tensor(&g.features)?;
        let c = Tensor::new(
            &[[1f32, 2.0], [0.5, -1.0], [0.0, 1.0], [2.0, 0.0]],
            &Device::Cpu,
        )?;
        let y = (view.gcn_propagate(x.as_tensor())? * &c)?.sum_all()?;
        let grads = y.backward()?;
        let gx: Vec<Vec<f32>> = grads.get(x.as_tensor()).expect("grad").to_vec2()?;
        let want: Vec<Vec<f32>> = view.gcn_propagate(&c)?.to_vec2()?;
        assert_eq!(gx.len(), 4);
        for i in 0..4 {
            for f in 0..2 {
                assert!((gx[i][f] - want[i][f]).abs() < 1e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn segment_softmax_normalises_per_destination_without_underflow() -> Result<()> {
        let dev = Device::Cpu;
        // node 0 receives edges with scores 1, 2; node 1 receives one edge with score -1000 (would underflow
        // with a global shift) and one with -1001.
        let e = EdgeSet::new(vec![1, 2, 0, 2], vec![0, 0, 1, 1], None, &dev)?;
        let s = Tensor::new(&[1f32, 2.0, -1000.0, -1001.0], &dev)?;
        let (p, logp) = segment_softmax(&s, &e, 3)?;
        let p: Vec<f32> = p.to_vec1()?;
        let a = 1.0 / (1.0 + 1f32.exp());
        for (got, want) in p.iter().zip([a, 1.0 - a, 1.0 - a, a]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        let lp: Vec<f32> = logp.to_vec1()?;
        assert!((lp[0] - a.ln()).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn khop_view_reproduces_full_graph_outputs_of_two_layers() -> Result<()> {
        let g = small_graph();
        let full = g.full_view()?;
        let two = |v: &crate::data::View, x: &Tensor| -> Result<Tensor> {
            let h = v.gcn_propagate(x)?.relu()?;
            v.gcn_propagate(&h)
        };
        let want: Vec<Vec<f32>> = two(&full, &g.features)?.to_vec2()?;
        let (view, pos) = g.khop_view(&[0], 2)?;
        // 2 hops from node 0 reach 1, then 2 and 3: every node
        assert_eq!(view.num_nodes, 4);
        let x = g.features.index_select(view.nodes.as_ref().unwrap(), 0)?;
        let got: Vec<Vec<f32>> = two(&view, &x)?.to_vec2()?;
        for f in 0..2 {
            assert!((got[pos[0] as usize][f] - want[0][f]).abs() < 1e-6);
        }
        // one hop from node 0: nodes 0 and 1, the one-layer output of node 0 is exact
        let (v1, p1) = g.khop_view(&[0], 1)?;
        assert_eq!(v1.num_nodes, 2);
        let x1 = g.features.index_select(v1.nodes.as_ref().unwrap(), 0)?;
        let got: Vec<Vec<f32>> = v1.gcn_propagate(&x1)?.to_vec2()?;
        let want: Vec<Vec<f32>> = full.gcn_propagate(&g.features)?.to_vec2()?;
        assert_eq!(got[p1[0] as usize], want[0]);
        assert!(g
            .khop_view(&[9], 1)
            .unwrap_err()
            .to_string()
            .contains("node 9"));
        Ok(())
    }
}
