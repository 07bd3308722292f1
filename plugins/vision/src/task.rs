//! The image-classification [`Task`]: train / validation / test [`ImageSet`]s kept decoded in memory,
//! batched with the recipe's augmentation and normalisation.

use candle_core::Device;
use distill_core::{Batch, Error, Result, Rng, Split, Task, TaskInfo};

use crate::data::{parse_augment, Augment, ImageSet, Normalize};

/// An image-classification task: train / validation / test sets kept decoded in memory.
pub struct VisionTask {
    info: TaskInfo,
    train: ImageSet,
    val: ImageSet,
    test: ImageSet,
    norm: Normalize,
    device: Device,
}

impl VisionTask {
    /// A task over already-loaded sets (the last `validation` training samples become the validation split).
    pub fn new(
        info: TaskInfo,
        train: ImageSet,
        test: ImageSet,
        validation: usize,
        train_limit: Option<usize>,
        norm: Normalize,
        device: Device,
    ) -> Result<Self> {
        if validation >= train.len() {
            return Err(Error::config(
                "data.validation",
                format!(
                    "holds out {validation} samples but the training set has only {}",
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
            norm,
            device,
        })
    }

    fn set(&self, split: Split) -> &ImageSet {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

impl Task for VisionTask {
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
        let aug = match augment {
            Some(a) => parse_augment(a)?,
            None => Augment::None,
        };
        let (inputs, targets) =
            self.set(split)
                .batch(indices, &aug, rng, &self.norm, &self.device)?;
        Ok(Batch {
            inputs,
            targets,
            indices: indices.to_vec(),
        })
    }
}
