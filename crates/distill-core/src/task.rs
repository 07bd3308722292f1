//! Tasks: a plugin's data splits, its own loss and its evaluation.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Batch, Mode, Network, Outputs, Result, Rng};

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training samples.
    Train,
    /// Held-out validation samples (early stopping, best-epoch selection).
    Val,
    /// Test samples (the reported metric).
    Test,
}

/// The task's headline metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricInfo {
    /// Its name, e.g. `"accuracy"`.
    pub name: String,
    /// Whether larger is better.
    pub higher_is_better: bool,
}

/// What a task looks like, known without reading any data (used by `distill check`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Data set name.
    pub dataset: String,
    /// Shape of one input sample, e.g. `[1, 28, 28]`.
    pub input_shape: Vec<usize>,
    /// Number of classes (or outputs).
    pub num_classes: usize,
    /// The headline metric.
    pub metric: MetricInfo,
}

/// An evaluation: the headline metric plus named extras (e.g. `top5`, `test_errors`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The headline metric.
    pub metric: f64,
    /// Other figures.
    pub extra: BTreeMap<String, f64>,
}

/// A task: batches, the task loss and evaluation. Classification gets sensible defaults.
pub trait Task: Send + Sync {
    /// Static description.
    fn info(&self) -> &TaskInfo;
    /// Number of samples in a split.
    fn len(&self, split: Split) -> usize;
    /// The samples `indices` of `split`, augmented with `augment` (a plugin-defined name) when given.
    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        augment: Option<&str>,
        rng: &mut Rng,
    ) -> Result<Batch>;
    /// The task's own loss (the "hard label" loss); cross-entropy by default.
    fn task_loss(&self, outputs: &Outputs, batch: &Batch) -> Result<Tensor> {
        crate::losses::ce_loss(&outputs.logits, &batch.targets)
    }
    /// Evaluates `net` on a split; by default top-1 accuracy, with `top5` and `errors` as extras.
    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        evaluate_classification(self, net, split, batch_size)
    }
    /// The order in which an epoch's training samples are cut into batches of `batch_size`, given the
    /// epoch's random permutation `perm`: `perm` itself by default. A task may regroup it (e.g. text tasks
    /// put sentences of similar length together so batches need little padding); `rng` is derived from the
    /// seed, phase and epoch, so a resumed run regroups identically. Must return a permutation of `perm`.
    fn batch_order(&self, perm: Vec<usize>, _batch_size: usize, _rng: &mut Rng) -> Vec<usize> {
        perm
    }
    /// Facts about the loaded data for the report's `notes` (e.g. how many bad files were skipped);
    /// none by default.
    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::new()
    }
}

/// Top-1 accuracy (the metric), top-5 accuracy and the error count over a split.
pub fn evaluate_classification<T: Task + ?Sized>(
    task: &T,
    net: &dyn Network,
    split: Split,
    batch_size: usize,
) -> Result<Evaluation> {
    let n = task.len(split);
    let mut rng = Rng::new(0);
    let (mut top1, mut top5) = (0usize, 0usize);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch = task.batch(split, chunk, None, &mut rng)?;
        let logits = net.forward(&batch.inputs, Mode::Eval)?.logits;
        let (c1, c5) = topk_correct(&logits, &batch.targets)?;
        top1 += c1;
        top5 += c5;
    }
    let mut extra = BTreeMap::new();
    let nf = n.max(1) as f64;
    extra.insert("top5".to_string(), top5 as f64 / nf);
    extra.insert("errors".to_string(), (n - top1) as f64);
    Ok(Evaluation {
        metric: top1 as f64 / nf,
        extra,
    })
}

/// Counts samples whose target is the arg-max (top-1) and among the 5 largest logits (top-5).
///
/// A sample's rank is the number of classes whose logit is strictly larger than the target's.
pub fn topk_correct(logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    let logits = logits.to_dtype(DType::F32)?;
    let target_logit = logits.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    let rank = logits
        .broadcast_gt(&target_logit)?
        .to_dtype(DType::F32)?
        .sum(1)?;
    let rank: Vec<f32> = rank.to_vec1()?;
    let top1 = rank.iter().filter(|&&r| r < 1.0).count();
    let top5 = rank.iter().filter(|&&r| r < 5.0).count();
    Ok((top1, top5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn topk_counts() -> Result<()> {
        let logits = Tensor::new(
            &[
                [0.9f32, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
                [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            ],
            &Device::Cpu,
        )?;
        // sample 0: target 0 is the max; sample 1: target 5 has 4 larger; sample 2: target 0 has 6 larger.
        let targets = Tensor::new(&[0u32, 5, 0], &Device::Cpu)?;
        assert_eq!(topk_correct(&logits, &targets)?, (1, 2));
        Ok(())
    }
}
