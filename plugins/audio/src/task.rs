//! The audio classification [`Task`]: features of every clip computed once ([`FeatureSet`]) and batched as
//! `[B, 1, rows, frames]`, with SpecAugment masks when the phase asks for them.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use distill_core::{Batch, Error, Result, Rng, Split, Task, TaskInfo};

use crate::data::{frontend::SpecAugment, FeatureSet};

/// An audio classification task: features of every clip computed once and kept in memory.
pub struct AudioTask {
    info: TaskInfo,
    train: FeatureSet,
    val: FeatureSet,
    test: FeatureSet,
    notes: BTreeMap<String, serde_json::Value>,
    device: Device,
}

impl AudioTask {
    /// A task over featurised sets; the last `validation` training clips become the validation split.
    pub fn new(
        info: TaskInfo,
        train: FeatureSet,
        test: FeatureSet,
        validation: usize,
        train_limit: Option<usize>,
        notes: BTreeMap<String, serde_json::Value>,
        device: Device,
    ) -> Result<Self> {
        if validation >= train.len() {
            return Err(Error::config(
                "data.validation",
                format!(
                    "holds out {validation} clips but the training set has only {}",
                    train.len()
                ),
            ));
        }
        let n_train = train.len() - validation;
        let val = train.subset(&(n_train..train.len()).collect::<Vec<_>>());
        let keep = train_limit.unwrap_or(n_train).min(n_train);
        let train = train.subset(&(0..keep).collect::<Vec<_>>());
        Ok(Self {
            info,
            train,
            val,
            test,
            notes,
            device,
        })
    }

    fn set(&self, split: Split) -> &FeatureSet {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

impl Task for AudioTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn len(&self, split: Split) -> usize {
        self.set(split).len()
    }

    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        augment: Option<&str>,
        rng: &mut Rng,
    ) -> Result<Batch> {
        let aug = augment.map(SpecAugment::parse).transpose()?;
        let set = self.set(split);
        let (rows, frames) = (set.rows, set.frames);
        let n = rows * frames;
        let mut x = Vec::with_capacity(indices.len() * n);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= set.len() {
                return Err(Error::msg(format!(
                    "sample index {i} is out of range for the {split:?} split ({} clips)",
                    set.len()
                )));
            }
            let start = x.len();
            x.extend_from_slice(&set.features[i * n..(i + 1) * n]);
            if let Some(a) = &aug {
                a.apply(&mut x[start..], rows, frames, rng);
            }
            y.push(set.labels[i]);
        }
        let b = indices.len();
        Ok(Batch {
            inputs: Tensor::from_vec(x, (b, 1, rows, frames), &self.device)?,
            targets: Tensor::from_vec(y, b, &self.device)?,
            indices: indices.to_vec(),
        })
    }

    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
    }
}
