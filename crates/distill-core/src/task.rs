//! Tasks: a plugin's data splits, its own loss and its evaluation.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Batch, Error, Mode, Network, Outputs, Result, Rng};

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
    /// The per-example scores behind `metric`, when the metric can be recomputed on a resample of the
    /// examples (a paired bootstrap of the KD gain, [`crate::stats`]); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<crate::stats::ExampleScores>,
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
    /// The input a latency measurement feeds the networks: `batch` samples of [`TaskInfo::input_shape`], zeros
    /// by default. A task whose networks' cost depends on which samples they see overrides it (the graph
    /// plugin: `batch` distinct nodes, so a GNN really propagates over their neighbourhoods).
    fn latency_input(&self, batch: usize, device: &candle_core::Device) -> Result<Tensor> {
        let mut shape = vec![batch];
        shape.extend_from_slice(&self.info().input_shape);
        Ok(Tensor::zeros(shape, candle_core::DType::F32, device)?)
    }
    /// What one item of a [`Task::latency_input`] batch is, as the report names it: `"sample"` by default
    /// (the graph plugin: a node with its neighbourhood).
    fn latency_unit(&self) -> &str {
        "sample"
    }
    /// A whole input timed besides the batches, with its name (the graph plugin: every node of the graph,
    /// `"whole graph"`); none by default. Its first dimension is its number of items.
    fn latency_whole_input(
        &self,
        _device: &candle_core::Device,
    ) -> Result<Option<(String, Tensor)>> {
        Ok(None)
    }
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
    /// The task as [`std::any::Any`], so its plugin's `build_network` can reach its own task type (a GNN
    /// needs the graph); `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
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
    let mut top5 = 0usize;
    let mut hits = Vec::with_capacity(n);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch = task.batch(split, chunk, None, &mut rng)?;
        let logits = net.forward(&batch.inputs, Mode::Eval)?.logits;
        let ranks = target_ranks(&logits, &batch.targets)?;
        hits.extend(ranks.iter().map(|&r| (r < 1) as u8 as f64));
        top5 += ranks.iter().filter(|&&r| r < 5).count();
    }
    let top1 = hits.iter().sum::<f64>() as usize;
    let mut extra = BTreeMap::new();
    let nf = n.max(1) as f64;
    extra.insert("top5".to_string(), top5 as f64 / nf);
    extra.insert("errors".to_string(), (n - top1) as f64);
    Ok(Evaluation {
        metric: top1 as f64 / nf,
        extra,
        examples: Some(crate::stats::ExampleScores::Mean { scores: hits }),
    })
}

/// Counts samples whose target is the arg-max (top-1) and among the 5 largest logits (top-5), by
/// [`topk_counts`]: ties and NaN logits never count as correct.
pub fn topk_correct(logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    let c = topk_counts(logits, targets, &[1, 5])?;
    Ok((c[0], c[1]))
}

/// For each `k` in `ks`, the number of samples whose target class is among the `k` highest logits.
///
/// The target's rank is the number of *other* classes whose logit is larger than **or equal to** the target's,
/// so a tie never counts as correct (a network that gives every class the same logit scores 0, not 100 %), and
/// a row with a NaN logit is never correct. `logits`: `[B, K]`; `targets`: `[B]` class indices (any integer
/// dtype), each `< K`. The one top-k of distill: every plugin's classification metric goes through it.
pub fn topk_counts(logits: &Tensor, targets: &Tensor, ks: &[usize]) -> Result<Vec<usize>> {
    if ks.contains(&0) {
        return Err(Error::msg("top-k needs k >= 1"));
    }
    let ranks = target_ranks(logits, targets)?;
    Ok(ks
        .iter()
        .map(|&k| ranks.iter().filter(|&&r| r < k).count())
        .collect())
}

/// Each sample's rank of its target class, as [`topk_counts`] defines it (the number of other classes with a
/// logit larger than or equal to the target's; `usize::MAX` for a row with a NaN logit): the sample is in the
/// top `k` when its rank is below `k`.
pub fn target_ranks(logits: &Tensor, targets: &Tensor) -> Result<Vec<usize>> {
    let (b, classes) = logits.dims2().map_err(|_| {
        Error::Shape(format!(
            "top-k expects [B, classes] logits, got {:?}",
            logits.dims()
        ))
    })?;
    if targets.dims() != [b] {
        return Err(Error::Shape(format!(
            "top-k expects [{b}] targets for logits {:?}, got {:?}",
            logits.dims(),
            targets.dims()
        )));
    }
    if b == 0 {
        return Ok(Vec::new());
    }
    let targets = targets.to_dtype(DType::U32)?;
    let max_target = targets.max(0)?.to_scalar::<u32>()?;
    if max_target as usize >= classes {
        return Err(Error::Shape(format!(
            "target class {max_target} out of range for {classes} logits"
        )));
    }
    let logits = logits.to_dtype(DType::F32)?;
    let target_logit = logits.gather(&targets.unsqueeze(1)?, 1)?; // [B, 1]
    let at_least: Vec<u32> = logits
        .broadcast_ge(&target_logit)?
        .to_dtype(DType::U32)?
        .sum(1)?
        .to_vec1()?;
    let nans: Vec<u32> = logits
        .ne(&logits)?
        .to_dtype(DType::U32)?
        .sum(1)?
        .to_vec1()?;
    // the target itself is counted by `>=` unless its logit is NaN, and a NaN row is never correct anyway
    let ranks: Vec<usize> = at_least
        .iter()
        .zip(&nans)
        .map(|(&n, &nan)| {
            if nan > 0 || n == 0 {
                usize::MAX
            } else {
                n as usize - 1
            }
        })
        .collect();
    Ok(ranks)
}

/// Top-`k` accuracy in `[0, 1]` by [`topk_counts`] (0 for an empty batch).
pub fn topk_accuracy(logits: &Tensor, targets: &Tensor, k: usize) -> Result<f64> {
    let n = targets.elem_count();
    let correct = topk_counts(logits, targets, &[k])?[0];
    Ok(if n == 0 {
        0.0
    } else {
        correct as f64 / n as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn top1_and_top5_of_a_hand_made_example() -> Result<()> {
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

    #[test]
    fn ties_and_nan_logits_are_never_correct() -> Result<()> {
        let dev = Device::Cpu;
        let nan = f32::NAN;
        let logits = Tensor::new(
            &[
                [0.1f32, 0.9, 0.3, 0.5], // target 3: rank 1
                [1.0, 1.0, 1.0, 1.0],    // all tied: every class has 3 others >= it
                [0.0, 2.0, 2.0, 1.0],    // target 1 tied with class 2: rank 1 (not top-1, top-2)
                [nan, 0.0, 5.0, 1.0],    // a NaN logit: never correct, even for k = 4
                [0.0, nan, nan, nan],    // all NaN
            ],
            &dev,
        )?;
        let targets = Tensor::new(&[3i64, 0, 1, 2, 1], &dev)?;
        assert_eq!(
            topk_counts(&logits, &targets, &[1, 2, 4, 10])?,
            [0, 2, 3, 3]
        );
        // a network that outputs one constant scores 0 at top-1 (it scored 100 % before)
        let constant = Tensor::zeros((6, 10), DType::F32, &dev)?;
        let t = Tensor::new(&[0u32, 1, 2, 3, 4, 5], &dev)?;
        assert_eq!(topk_correct(&constant, &t)?, (0, 0));
        assert_eq!(topk_accuracy(&constant, &t, 10)?, 1.0);
        // errors
        assert!(
            topk_counts(&logits, &Tensor::new(&[9u32, 0, 0, 0, 0], &dev)?, &[1])
                .unwrap_err()
                .to_string()
                .contains("target class 9")
        );
        assert!(topk_counts(&logits, &targets, &[0]).is_err());
        assert!(topk_counts(&logits, &Tensor::new(&[0u32], &dev)?, &[1]).is_err());
        Ok(())
    }

    #[test]
    fn a_tie_at_the_kth_place_is_never_correct_whichever_class_argmax_picks() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[
                [0.0f32, 0.0, 5.0, 1.0], // 2, 3, then 0 and 1 tied for the third place
                [3.0, 3.0, 1.0, 0.0],    // 0 and 1 tied for the first place
            ],
            &dev,
        )?;
        // row 0's class 0 or 1 (three others >= each: rank 3) is not in the top 3, where the two share the
        // third place, only in the top 4; row 1's class 0 or 1 (rank 1) is in the top 2, not the top 1
        for t in [[0u32, 0], [1, 1]] {
            let t = Tensor::new(&t, &dev)?;
            assert_eq!(topk_counts(&logits, &t, &[1, 2, 3, 4])?, [0, 1, 1, 2]);
        }
        // row 1's tied leaders: neither is top-1 (argmax would have made the first one correct)
        let t = Tensor::new(&[2u32, 0], &dev)?;
        assert_eq!(topk_counts(&logits, &t, &[1, 2])?, [1, 2]);
        assert!((topk_accuracy(&logits, &t, 1)? - 0.5).abs() < 1e-12);
        // an empty batch counts nothing and scores 0
        let empty = Tensor::zeros((0, 4), DType::F32, &dev)?;
        let none = Tensor::zeros(0, DType::U32, &dev)?;
        assert_eq!(topk_counts(&empty, &none, &[1, 5])?, [0, 0]);
        assert_eq!(topk_accuracy(&empty, &none, 1)?, 0.0);
        Ok(())
    }
}
