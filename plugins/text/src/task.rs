//! The text tasks the pipeline trains on: sentence classification ([`ClassificationTask`]) and sentence-pair
//! similarity ([`PairTask`], STS-B), over sentences tokenised once at load time.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use distill_core::{
    stats::ExampleScores,
    task::{evaluate_classification, Evaluation},
    Batch, Error, Mode, Network, Outputs, Result, Rng, Split, Task, TaskInfo,
};

use crate::{
    data::{group_by_length, pad_batch},
    metrics::{pearson, spearman},
    models::bert::PAD_ID,
};

/// Sentence classification over tokenised sentences.
pub struct ClassificationTask {
    info: TaskInfo,
    splits: HashMap<Split, (Vec<Vec<u32>>, Vec<u32>)>,
    notes: BTreeMap<String, serde_json::Value>,
}

impl ClassificationTask {
    /// A task from tokenised splits; `notes` go into the report.
    pub fn new(
        info: TaskInfo,
        train: (Vec<Vec<u32>>, Vec<u32>),
        val: (Vec<Vec<u32>>, Vec<u32>),
        test: (Vec<Vec<u32>>, Vec<u32>),
        notes: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        let splits = [
            (Split::Train, train),
            (Split::Val, val),
            (Split::Test, test),
        ]
        .into_iter()
        .collect();
        Self {
            info,
            splits,
            notes,
        }
    }
}

impl Task for ClassificationTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }
    fn len(&self, split: Split) -> usize {
        self.splits[&split].0.len()
    }
    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        _augment: Option<&str>,
        _rng: &mut Rng,
    ) -> Result<Batch> {
        let (ids, labels) = &self.splits[&split];
        let rows: Vec<&[u32]> = indices.iter().map(|&i| ids[i].as_slice()).collect();
        let y: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
        Ok(Batch {
            inputs: pad_batch(&rows, &Device::Cpu)?,
            targets: Tensor::new(y, &Device::Cpu)?,
            indices: indices.to_vec(),
        })
    }
    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        evaluate_classification(self, net, split, batch_size)
    }
    fn batch_order(&self, perm: Vec<usize>, batch_size: usize, rng: &mut Rng) -> Vec<usize> {
        let ids = &self.splits[&Split::Train].0;
        group_by_length(perm, |i| ids[i].len(), batch_size, rng)
    }
    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
    }
}

/// One split of a pair task: tokenised (sentence 1, sentence 2) and their scores.
pub type PairSplit = (Vec<(Vec<u32>, Vec<u32>)>, Vec<f32>);

/// Sentence-pair similarity (STS-B): a network maps `[B, 2, T]` pairs to `[B, 2·D]` (the two sentence
/// embeddings side by side); the task loss is sentence-transformers' CosineSimilarityLoss (MSE between
/// cos(u, v) and score/5) and the metric is the Spearman correlation of cos(u, v) with the gold scores.
pub struct PairTask {
    info: TaskInfo,
    splits: HashMap<Split, PairSplit>,
    notes: BTreeMap<String, serde_json::Value>,
}

impl PairTask {
    /// A task from tokenised splits.
    pub fn new(
        info: TaskInfo,
        train: PairSplit,
        val: PairSplit,
        test: PairSplit,
        notes: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        let splits = [
            (Split::Train, train),
            (Split::Val, val),
            (Split::Test, test),
        ]
        .into_iter()
        .collect();
        Self {
            info,
            splits,
            notes,
        }
    }
}

/// Cosine similarity of the two halves of `[B, 2·D]` pair embeddings: `[B]`.
pub fn pair_cosine(logits: &Tensor) -> Result<Tensor> {
    let (_, d2) = logits.dims2()?;
    if d2 % 2 != 0 {
        return Err(Error::Shape(format!(
            "pair embeddings must be [batch, 2·dim], got {:?}",
            logits.dims()
        )));
    }
    let d = d2 / 2;
    let u = logits.narrow(1, 0, d)?;
    let v = logits.narrow(1, d, d)?;
    let dot = (&u * &v)?.sum(1)?;
    let nu = u.sqr()?.sum(1)?.sqrt()?;
    let nv = v.sqr()?.sum(1)?.sqrt()?;
    let den = (nu * nv)?.clamp(1e-8, f64::MAX)?;
    Ok(dot.div(&den)?)
}

impl Task for PairTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }
    fn len(&self, split: Split) -> usize {
        self.splits[&split].0.len()
    }
    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        _augment: Option<&str>,
        _rng: &mut Rng,
    ) -> Result<Batch> {
        let (pairs, scores) = &self.splits[&split];
        let t = indices
            .iter()
            .map(|&i| pairs[i].0.len().max(pairs[i].1.len()))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut v = vec![PAD_ID; indices.len() * 2 * t];
        for (k, &i) in indices.iter().enumerate() {
            let (a, b) = &pairs[i];
            v[2 * k * t..2 * k * t + a.len()].copy_from_slice(a);
            v[(2 * k + 1) * t..(2 * k + 1) * t + b.len()].copy_from_slice(b);
        }
        let y: Vec<f32> = indices.iter().map(|&i| scores[i]).collect();
        Ok(Batch {
            inputs: Tensor::from_vec(v, (indices.len(), 2, t), &Device::Cpu)?,
            targets: Tensor::new(y, &Device::Cpu)?,
            indices: indices.to_vec(),
        })
    }
    fn batch_order(&self, perm: Vec<usize>, batch_size: usize, rng: &mut Rng) -> Vec<usize> {
        let pairs = &self.splits[&Split::Train].0;
        group_by_length(
            perm,
            |i| pairs[i].0.len().max(pairs[i].1.len()),
            batch_size,
            rng,
        )
    }
    fn task_loss(&self, outputs: &Outputs, batch: &Batch) -> Result<Tensor> {
        let cos = pair_cosine(&outputs.logits)?;
        let target = (batch.targets.to_dtype(candle_core::DType::F32)? / 5.0)?;
        Ok((cos - target)?.sqr()?.mean_all()?)
    }
    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        let n = self.len(split);
        let mut rng = Rng::new(0);
        let idx: Vec<usize> = (0..n).collect();
        let mut pred = Vec::with_capacity(n);
        for chunk in idx.chunks(batch_size.max(1)) {
            let batch = self.batch(split, chunk, None, &mut rng)?;
            let out = net.forward(&batch.inputs, Mode::Eval)?;
            pred.extend(pair_cosine(&out.logits)?.to_vec1::<f32>()?);
        }
        let gold = &self.splits[&split].1;
        let p: Vec<f64> = pred.iter().map(|&x| x as f64).collect();
        let g: Vec<f64> = gold.iter().map(|&x| x as f64).collect();
        let mut extra = BTreeMap::new();
        extra.insert("pearson".to_string(), pearson(&p, &g));
        Ok(Evaluation {
            metric: spearman(&p, &g),
            extra,
            examples: Some(ExampleScores::Spearman { pred: p, gold: g }),
        })
    }
    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
    }
}
