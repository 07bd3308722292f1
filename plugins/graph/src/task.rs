//! The node-classification task: batches of node ids, the masked cross-entropy over labelled training
//! nodes, and accuracy (with the all-node latency on the test split).

use std::sync::Arc;

use candle_core::Tensor;
use distill_core::{
    task::{evaluate_classification, Evaluation},
    Batch, Error, Network, Outputs, Result, Rng, Split, Task, TaskInfo,
};

use crate::{
    data::Graph,
    losses::{masked_ce, UNLABELLED},
};

/// A node-classification task over one graph.
pub struct GraphTask {
    info: TaskInfo,
    graph: Arc<Graph>,
    /// Nodes of the training split (every node, or the labelled training nodes).
    train: Vec<u32>,
    is_train: Vec<bool>,
}

impl GraphTask {
    /// A task over `graph`; with `all_nodes`, the training split is every node (only training nodes labelled).
    pub fn new(info: TaskInfo, graph: Arc<Graph>, all_nodes: bool) -> Self {
        let mut is_train = vec![false; graph.num_nodes()];
        for &i in &graph.train {
            is_train[i as usize] = true;
        }
        let train = if all_nodes {
            (0..graph.num_nodes() as u32).collect()
        } else {
            graph.train.clone()
        };
        Self {
            info,
            graph,
            train,
            is_train,
        }
    }

    /// The graph.
    pub fn graph(&self) -> &Arc<Graph> {
        &self.graph
    }

    fn nodes(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.graph.val,
            Split::Test => &self.graph.test,
        }
    }
}

impl Task for GraphTask {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn len(&self, split: Split) -> usize {
        self.nodes(split).len()
    }

    /// `batch` distinct nodes (0, 1, 2, … cycling over the graph): zeros would be one node `batch` times,
    /// and a GNN would propagate over that one node's neighbourhood only.
    fn latency_input(&self, batch: usize, device: &candle_core::Device) -> Result<Tensor> {
        let n = self.graph.num_nodes().max(1) as u32;
        let ids: Vec<u32> = (0..batch as u32).map(|i| i % n).collect();
        Ok(Tensor::from_vec(ids, batch, device)?)
    }

    /// A latency batch item is one node: an MLP reads its feature row, a GNN its `L`-hop neighbourhood.
    fn latency_unit(&self) -> &str {
        "node with its neighbourhood"
    }

    /// Every node of the graph in one pass (a GNN propagates over the whole graph once).
    fn latency_whole_input(
        &self,
        device: &candle_core::Device,
    ) -> Result<Option<(String, Tensor)>> {
        let n = self.graph.num_nodes() as u32;
        Ok(Some((
            "whole graph".to_string(),
            Tensor::arange(0u32, n, device)?,
        )))
    }

    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        _augment: Option<&str>,
        _rng: &mut Rng,
    ) -> Result<Batch> {
        let list = self.nodes(split);
        let mut ids = Vec::with_capacity(indices.len());
        let mut targets = Vec::with_capacity(indices.len());
        for &i in indices {
            let node = *list.get(i).ok_or_else(|| {
                Error::msg(format!(
                    "sample {i} is out of range for the {split:?} split ({} nodes)",
                    list.len()
                ))
            })?;
            ids.push(node);
            let label = match split {
                Split::Train if !self.is_train[node as usize] => None,
                _ => self.graph.labels[node as usize],
            };
            targets.push(label.unwrap_or(UNLABELLED));
        }
        let dev = self.graph.device();
        let b = ids.len();
        Ok(Batch {
            inputs: Tensor::from_vec(ids, b, dev)?,
            targets: Tensor::from_vec(targets, b, dev)?,
            indices: indices.to_vec(),
        })
    }

    /// Cross-entropy over the labelled training nodes of the batch (Kipf's L2 is the optimiser's
    /// `weight_decay` with `decay_only`).
    fn task_loss(&self, outputs: &Outputs, batch: &Batch) -> Result<Tensor> {
        masked_ce(&outputs.logits, &batch.targets)
    }

    /// Accuracy (the whole graph's latency is the latency protocol's, [`Task::latency_whole_input`]).
    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        let mut e = evaluate_classification(self, net, split, batch_size)?;
        e.extra.remove("top5");
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use distill_core::task::MetricInfo;

    /// A latency batch is distinct nodes in order, cycling once the graph runs out (zeros would be one node
    /// `batch` times, whose neighbourhood is all a GNN would then propagate over).
    #[test]
    fn latency_input_is_distinct_nodes() -> Result<()> {
        let n = 5;
        let x = Tensor::zeros((n, 2), DType::F32, &Device::Cpu)?;
        let adj = crate::data::Adjacency::from_pairs(n, &[(0, 1), (1, 2), (3, 4)]);
        let g = Graph::new("g", x, 2, vec![Some(0); n], adj, vec![0], vec![1], vec![2])?;
        let info = TaskInfo {
            dataset: "g".into(),
            input_shape: vec![1],
            num_classes: 2,
            metric: MetricInfo {
                name: "accuracy".into(),
                higher_is_better: true,
            },
        };
        let task = GraphTask::new(info, Arc::new(g), false);
        let ids: Vec<u32> = task.latency_input(3, &Device::Cpu)?.to_vec1()?;
        assert_eq!(ids, [0, 1, 2]);
        let ids: Vec<u32> = task.latency_input(7, &Device::Cpu)?.to_vec1()?;
        assert_eq!(ids, [0, 1, 2, 3, 4, 0, 1]);
        // the whole-graph figure is every node once, named for what it is
        let (name, all) = task.latency_whole_input(&Device::Cpu)?.unwrap();
        assert_eq!(name, "whole graph");
        assert_eq!(all.to_vec1::<u32>()?, [0, 1, 2, 3, 4]);
        assert_eq!(task.latency_unit(), "node with its neighbourhood");
        Ok(())
    }
}
