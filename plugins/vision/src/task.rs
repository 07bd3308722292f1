//! The image-classification task: the data set's training and test [`ImageSet`]s kept decoded in memory,
//! declared as [`Examples`] (core's [`SplitTask`](distill_core::examples::SplitTask) cuts the validation
//! split and the limits from them), batched with the recipe's augmentation and normalisation.

use candle_core::Device;
use distill_core::{
    examples::{Examples, Source},
    Batch, Result, Rng, TaskInfo,
};

use crate::data::{parse_augment, Augment, ImageSet, Normalize};

/// An image-classification data set's examples: its training and test sets.
pub struct VisionExamples {
    info: TaskInfo,
    train: ImageSet,
    test: ImageSet,
    norm: Normalize,
    device: Device,
}

impl VisionExamples {
    /// Examples over already-loaded sets, normalised with `norm` and batched onto `device`.
    pub fn new(
        info: TaskInfo,
        train: ImageSet,
        test: ImageSet,
        norm: Normalize,
        device: Device,
    ) -> Self {
        Self {
            info,
            train,
            test,
            norm,
            device,
        }
    }

    fn set(&self, source: Source) -> &ImageSet {
        match source {
            Source::Train => &self.train,
            Source::Test => &self.test,
        }
    }
}

impl Examples for VisionExamples {
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
        let aug = match augment {
            Some(a) => parse_augment(a)?,
            None => Augment::None,
        };
        let (inputs, targets) =
            self.set(source)
                .batch(indices, &aug, rng, &self.norm, &self.device)?;
        Ok(Batch {
            inputs,
            targets,
            indices: indices.to_vec(),
        })
    }
}
