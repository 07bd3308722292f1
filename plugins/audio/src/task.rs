//! The audio classification task: features of every clip computed once ([`FeatureSet`]), declared as
//! [`Examples`] (core's [`SplitTask`](distill_core::examples::SplitTask) cuts the validation split and the
//! limits), batched as `[B, 1, rows, frames]` with SpecAugment masks when the phase asks for them.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use distill_core::{
    examples::{Examples, Source},
    Batch, Error, Result, Rng, TaskInfo,
};

use crate::data::{frontend::SpecAugment, FeatureSet};

/// An audio data set's examples: features of every training and test clip, computed once and kept in memory.
pub struct AudioExamples {
    info: TaskInfo,
    train: FeatureSet,
    test: FeatureSet,
    notes: BTreeMap<String, serde_json::Value>,
    device: Device,
}

impl AudioExamples {
    /// Examples over featurised sets, batched onto `device`; `notes` go to the report.
    pub fn new(
        info: TaskInfo,
        train: FeatureSet,
        test: FeatureSet,
        notes: BTreeMap<String, serde_json::Value>,
        device: Device,
    ) -> Self {
        Self {
            info,
            train,
            test,
            notes,
            device,
        }
    }

    fn set(&self, source: Source) -> &FeatureSet {
        match source {
            Source::Train => &self.train,
            Source::Test => &self.test,
        }
    }
}

impl Examples for AudioExamples {
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn len(&self, source: Source) -> usize {
        self.set(source).len()
    }

    fn batch(
        &self,
        source: Source,
        indices: &[usize],
        augment: Option<&str>,
        rng: &mut Rng,
    ) -> Result<Batch> {
        let aug = augment.map(SpecAugment::parse).transpose()?;
        let set = self.set(source);
        let (rows, frames) = (set.rows, set.frames);
        let n = rows * frames;
        let mut x = Vec::with_capacity(indices.len() * n);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= set.len() {
                return Err(Error::msg(format!(
                    "sample index {i} is out of range for the {source:?} clips ({})",
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
