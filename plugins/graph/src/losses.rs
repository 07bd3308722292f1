//! Graph distillation losses: GLNN (Zhang et al., ICLR 2022) and LSP (Yang et al., CVPR 2020), plus the
//! masked cross-entropy the graph task trains with.
//!
//! In a graph task's training split, nodes without a training label carry the target [`UNLABELLED`]; the
//! losses here skip them, so soft-label terms can cover every node while the hard-label term sees the
//! training labels only.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use distill_core::{
    losses::{ce_loss, kd_loss, DistillLoss},
    Batch, Error, FeatureKind, Outputs, Result,
};

use crate::data::{sparse::segment_softmax, Graph};

/// Target of a node whose label is not used for training.
pub const UNLABELLED: u32 = u32::MAX;

/// Cross-entropy over the rows whose target is not [`UNLABELLED`] (zero, still attached to the graph, when
/// there are none).
pub fn masked_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t: Vec<u32> = targets.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let keep: Vec<u32> = (0..t.len() as u32)
        .filter(|&i| t[i as usize] != UNLABELLED)
        .collect();
    if keep.is_empty() {
        return Ok(logits.sum_all()?.affine(0.0, 0.0)?);
    }
    if keep.len() == t.len() {
        return ce_loss(logits, targets);
    }
    let k = keep.len();
    let idx = Tensor::from_vec(keep, k, logits.device())?;
    ce_loss(
        &logits.index_select(&idx, 0)?,
        &targets.flatten_all()?.index_select(&idx, 0)?,
    )
}

/// GLNN: `λ · CE(training labels) + (1 − λ) · T² · KL(teacher_T ‖ student_T)` over every node of the batch
/// (with the graph task's default `distill_nodes = "all"`, every node of the graph: the transductive setting).
#[derive(Debug, Clone, PartialEq)]
pub struct Glnn {
    /// Weight λ of the hard-label term.
    pub lambda: f64,
    /// Temperature T (GLNN: 1).
    pub t: f64,
}

impl DistillLoss for Glnn {
    fn name(&self) -> &str {
        "glnn"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, batch: &Batch) -> Result<Tensor> {
        let kd = kd_loss(&student.logits, &teacher.logits, self.t)?;
        let ce = masked_ce(&student.logits, &batch.targets)?;
        Ok((ce.affine(self.lambda, 0.0)? + kd.affine(1.0 - self.lambda, 0.0)?)?)
    }
}

/// Local-structure similarities of node `i`: `softmax_{j ∈ N(i)}(−‖z_i − z_j‖²)` as per-edge
/// `(probabilities, log-probabilities)` over `graph`'s neighbour edges.
pub fn local_structure(z: &Tensor, graph: &Graph) -> Result<(Tensor, Tensor)> {
    let view = graph.full_view()?;
    let e = &view.neighbors;
    let d = (z.index_select(&e.dst, 0)? - z.index_select(&e.src, 0)?)?
        .sqr()?
        .sum(1)?;
    segment_softmax(&d.neg()?, e, graph.num_nodes())
}

/// LSP loss: `(1/N) Σ_i KL(LS_i^student ‖ LS_i^teacher)` between the local-structure distributions of the
/// student's and the teacher's node embeddings (their widths may differ: only distances are compared).
pub fn lsp_loss(student: &Tensor, teacher: &Tensor, graph: &Graph) -> Result<Tensor> {
    let n = graph.num_nodes();
    for (who, z) in [("student", student), ("teacher", teacher)] {
        if z.rank() != 2 || z.dim(0)? != n {
            return Err(Error::Shape(format!(
                "lsp: the {who} feature must hold every node of the graph [{n}, D], got {:?} \
                 (LSP needs a GNN trained on the whole graph)",
                z.dims()
            )));
        }
    }
    let (ps, logps) = local_structure(student, graph)?;
    let (_, logpt) = local_structure(teacher, graph)?;
    let kl = (ps * (logps - logpt)?)?.sum_all()?;
    Ok(kl.affine(1.0 / n as f64, 0.0)?)
}

/// The LSP distillation term on named `Nodes` features.
pub struct Lsp {
    /// Student tap.
    pub student_feature: String,
    /// Teacher tap.
    pub teacher_feature: String,
    /// The graph whose edges define neighbourhoods.
    pub graph: Arc<Graph>,
}

impl Lsp {
    /// Checks that both taps exist and are `Nodes` features.
    pub fn new(
        student_feature: &str,
        teacher_feature: &str,
        student: &Outputs,
        teacher: &Outputs,
        graph: Arc<Graph>,
    ) -> Result<Self> {
        for (who, name, out) in [
            ("student", student_feature, student),
            ("teacher", teacher_feature, teacher),
        ] {
            let f = out
                .feature(name)
                .map_err(|e| Error::msg(format!("{who}: {e}")))?;
            if f.kind != FeatureKind::Nodes {
                return Err(Error::Shape(format!(
                    "lsp: the {who} feature `{name}` is {:?}; LSP needs node embeddings of a GNN (Nodes)",
                    f.kind
                )));
            }
        }
        Ok(Self {
            student_feature: student_feature.to_string(),
            teacher_feature: teacher_feature.to_string(),
            graph,
        })
    }
}

impl DistillLoss for Lsp {
    fn name(&self) -> &str {
        "lsp"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        lsp_loss(
            &student.feature(&self.student_feature)?.tensor,
            &teacher.feature(&self.teacher_feature)?.tensor,
            &self.graph,
        )
    }
    fn uses_features(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Adjacency;
    use candle_core::Device;

    fn star() -> Graph {
        // node 0 joined to 1, 2, 3; node 3 also to 2
        let adj = Adjacency::from_pairs(4, &[(0, 1), (0, 2), (0, 3), (2, 3)]);
        let x = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
        Graph::new(
            "star",
            x,
            2,
            vec![Some(0); 4],
            adj,
            vec![0],
            vec![1],
            vec![2],
        )
        .unwrap()
    }

    #[test]
    fn masked_ce_skips_unlabelled_rows() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2f32, 0.0], [0.0, 5.0], [1.0, 1.0]], &dev)?;
        let t = Tensor::new(&[0u32, UNLABELLED, 1], &dev)?;
        let got = masked_ce(&logits, &t)?.to_scalar::<f32>()?;
        // mean of -log softmax: row 0 target 0: log(1 + e^-2); row 2: log 2
        let want = ((1.0 + (-2f32).exp()).ln() + 2f32.ln()) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let none = Tensor::new(&[UNLABELLED; 3], &dev)?;
        assert_eq!(masked_ce(&logits, &none)?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn lsp_matches_a_hand_computed_local_structure_kl() -> Result<()> {
        let g = star();
        let dev = Device::Cpu;
        let zs = Tensor::new(&[[0f32, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], &dev)?;
        let zt = Tensor::new(&[[0f32, 0.0], [0.5, 0.0], [0.0, 1.0], [3.0, 0.0]], &dev)?;
        let got = lsp_loss(&zs, &zt, &g)?.to_scalar::<f32>()?;
        // reference: plain loops over the neighbour lists
        let s = [[0f32, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]];
        let t = [[0f32, 0.0], [0.5, 0.0], [0.0, 1.0], [3.0, 0.0]];
        let nbrs: [&[usize]; 4] = [&[1, 2, 3], &[0], &[0, 3], &[0, 2]];
        let d2 = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
        let mut want = 0f32;
        for i in 0..4 {
            let es: Vec<f32> = nbrs[i].iter().map(|&j| (-d2(s[i], s[j])).exp()).collect();
            let et: Vec<f32> = nbrs[i].iter().map(|&j| (-d2(t[i], t[j])).exp()).collect();
            let (zs_, zt_) = (es.iter().sum::<f32>(), et.iter().sum::<f32>());
            for k in 0..es.len() {
                let (p, q) = (es[k] / zs_, et[k] / zt_);
                want += p * (p / q).ln();
            }
        }
        want /= 4.0;
        assert!(want > 0.01);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // same structure (even at another width): zero
        let wide = Tensor::cat(&[&zs, &zs], 1)?.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?;
        assert!(lsp_loss(&zs, &wide, &g)?.to_scalar::<f32>()?.abs() < 1e-6);
        let e = lsp_loss(&zs.narrow(0, 0, 3)?, &zt, &g)
            .unwrap_err()
            .to_string();
        assert!(e.contains("every node"), "{e}");
        Ok(())
    }

    #[test]
    fn glnn_mixes_kd_and_masked_ce() -> Result<()> {
        let dev = Device::Cpu;
        let s = Outputs::logits(Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev)?);
        let t = Outputs::logits(Tensor::new(&[[0f32, 2.0], [0.0, 1.0]], &dev)?);
        let batch = Batch {
            inputs: Tensor::new(&[0u32, 1], &dev)?,
            targets: Tensor::new(&[0u32, UNLABELLED], &dev)?,
            indices: vec![0, 1],
        };
        let l = Glnn {
            lambda: 0.3,
            t: 1.0,
        };
        let got = l.compute(&s, &t, &batch)?.to_scalar::<f32>()?;
        let kd = kd_loss(&s.logits, &t.logits, 1.0)?.to_scalar::<f32>()?;
        let ce = (1.0 + (-1f32).exp()).ln();
        assert!((got - (0.3 * ce + 0.7 * kd)).abs() < 1e-6);
        Ok(())
    }
}
