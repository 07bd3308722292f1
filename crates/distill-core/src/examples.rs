//! A data set's own examples and the splits the recipe cuts from them: one convention for every plugin.
//!
//! A data set ships a training and a test file ([`Source`]). The recipe's `[data]` table cuts the splits
//! the training loop sees ([`Holdout`]): the **last** `validation` training samples are the validation split,
//! `train_limit` keeps the first N of the training samples before them, `test_limit` the first N test samples.
//! A plugin declares its examples ([`Examples`]) and wraps them in a [`SplitTask`], which implements
//! [`Task`] by mapping each split onto source indices: early stopping and best-epoch selection then work
//! without a line of split code in the plugin.
//!
//! ```
//! use distill_core::{examples::{Holdout, Source}, recipe::DataConfig, Split};
//! # fn main() -> distill_core::Result<()> {
//! let data = DataConfig { validation: 2, train_limit: Some(3), test_limit: Some(4), ..Default::default() };
//! let h = Holdout::new(&data, 10, 6)?;
//! assert_eq!(h.indices(Split::Train), 0..3); // the first 3 of the 8 left for training
//! assert_eq!(h.indices(Split::Val), 8..10); // the last 2 training samples
//! assert_eq!(h.indices(Split::Test), 0..4);
//! assert_eq!(Holdout::source(Split::Val), Source::Train);
//! # Ok(()) }
//! ```

use std::{collections::BTreeMap, ops::Range};

use candle_core::Tensor;

use crate::{
    recipe::DataConfig,
    task::{Split, Task, TaskInfo},
    Batch, Error, Outputs, Result, Rng,
};

/// Where examples come from: the data set's own training or test file(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The training samples (the training and validation splits are cut from them).
    Train,
    /// The test samples.
    Test,
}

/// The source indices of the training, validation and test splits, as the recipe's `[data]` table cuts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdout {
    train: Range<usize>,
    val: Range<usize>,
    test: Range<usize>,
}

impl Holdout {
    /// Cuts `n_train` training and `n_test` test samples by `data.validation`, `data.train_limit` and
    /// `data.test_limit`. Fails, naming `data.validation`, when the hold-out leaves no training sample.
    pub fn new(data: &DataConfig, n_train: usize, n_test: usize) -> Result<Self> {
        if data.validation > 0 && data.validation >= n_train {
            return Err(Error::config(
                "data.validation",
                format!(
                    "holds out {} samples but the training set has only {n_train}",
                    data.validation
                ),
            ));
        }
        let rest = n_train - data.validation;
        let keep = data.train_limit.unwrap_or(rest).min(rest);
        let test = data.test_limit.unwrap_or(n_test).min(n_test);
        Ok(Self {
            train: 0..keep,
            val: rest..n_train,
            test: 0..test,
        })
    }

    /// The file a split's samples come from.
    pub fn source(split: Split) -> Source {
        match split {
            Split::Train | Split::Val => Source::Train,
            Split::Test => Source::Test,
        }
    }

    /// The source indices of a split.
    pub fn indices(&self, split: Split) -> Range<usize> {
        match split {
            Split::Train => self.train.clone(),
            Split::Val => self.val.clone(),
            Split::Test => self.test.clone(),
        }
    }

    /// The number of samples in a split.
    pub fn len(&self, split: Split) -> usize {
        self.indices(split).len()
    }

    /// Maps indices into a split onto indices into its [`Source`]; an index past the split's end is an error.
    pub fn map(&self, split: Split, indices: &[usize]) -> Result<Vec<usize>> {
        let range = self.indices(split);
        indices
            .iter()
            .map(|&i| {
                if i < range.len() {
                    Ok(range.start + i)
                } else {
                    Err(Error::msg(format!(
                        "sample {i} of the {split:?} split is out of range (it has {})",
                        range.len()
                    )))
                }
            })
            .collect()
    }
}

/// A data set's examples, as a plugin declares them: its shape, how many samples each [`Source`] holds, and
/// a batch of given source indices. [`SplitTask`] turns it into a [`Task`].
pub trait Examples: Send + Sync {
    /// Static description.
    fn info(&self) -> &TaskInfo;
    /// Number of samples in a source.
    fn len(&self, source: Source) -> usize;
    /// The samples `indices` of `source`, augmented with `augment` (a plugin-defined name) when given.
    /// The returned batch's `indices` are overwritten by [`SplitTask`] with the split's own.
    fn batch(
        &self,
        source: Source,
        indices: &[usize],
        augment: Option<&str>,
        rng: &mut Rng,
    ) -> Result<Batch>;
    /// The task's own loss; cross-entropy by default (as [`Task::task_loss`]).
    fn task_loss(&self, outputs: &Outputs, batch: &Batch) -> Result<Tensor> {
        crate::losses::ce_loss(&outputs.logits, &batch.targets)
    }
    /// Facts about the loaded data for the report's `notes`; none by default.
    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::new()
    }
}

/// A [`Task`] over [`Examples`]: the training, validation and test splits cut by a [`Holdout`].
pub struct SplitTask<E> {
    examples: E,
    holdout: Holdout,
}

impl<E: Examples> SplitTask<E> {
    /// The splits of `examples` that `data` (the recipe's `[data]` table) asks for.
    pub fn new(examples: E, data: &DataConfig) -> Result<Self> {
        let holdout = Holdout::new(
            data,
            examples.len(Source::Train),
            examples.len(Source::Test),
        )?;
        Ok(Self { examples, holdout })
    }

    /// The examples.
    pub fn examples(&self) -> &E {
        &self.examples
    }

    /// The splits.
    pub fn holdout(&self) -> &Holdout {
        &self.holdout
    }
}

impl<E: Examples + 'static> Task for SplitTask<E> {
    fn info(&self) -> &TaskInfo {
        self.examples.info()
    }

    fn len(&self, split: Split) -> usize {
        self.holdout.len(split)
    }

    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        augment: Option<&str>,
        rng: &mut Rng,
    ) -> Result<Batch> {
        let source = self.holdout.map(split, indices)?;
        let mut batch = self
            .examples
            .batch(Holdout::source(split), &source, augment, rng)?;
        batch.indices = indices.to_vec();
        Ok(batch)
    }

    fn task_loss(&self, outputs: &Outputs, batch: &Batch) -> Result<Tensor> {
        self.examples.task_loss(outputs, batch)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.examples.notes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::MetricInfo;
    use candle_core::Device;

    fn data(
        validation: usize,
        train_limit: Option<usize>,
        test_limit: Option<usize>,
    ) -> DataConfig {
        DataConfig {
            validation,
            train_limit,
            test_limit,
            ..Default::default()
        }
    }

    fn list(h: &Holdout, split: Split) -> Vec<usize> {
        h.indices(split).collect()
    }

    #[test]
    fn without_validation_every_training_sample_trains() -> Result<()> {
        let h = Holdout::new(&data(0, None, None), 5, 3)?;
        assert_eq!(list(&h, Split::Train), [0, 1, 2, 3, 4]);
        assert_eq!(list(&h, Split::Val), [] as [usize; 0]);
        assert_eq!(list(&h, Split::Test), [0, 1, 2]);
        Ok(())
    }

    #[test]
    fn validation_is_the_last_training_samples_and_limits_keep_the_first() -> Result<()> {
        let h = Holdout::new(&data(2, None, None), 7, 4)?;
        assert_eq!(list(&h, Split::Train), [0, 1, 2, 3, 4]);
        assert_eq!(list(&h, Split::Val), [5, 6]);
        assert_eq!(list(&h, Split::Test), [0, 1, 2, 3]);
        // train_limit applies after the hold-out: the validation split is the same
        let h = Holdout::new(&data(2, Some(3), Some(1)), 7, 4)?;
        assert_eq!(list(&h, Split::Train), [0, 1, 2]);
        assert_eq!(list(&h, Split::Val), [5, 6]);
        assert_eq!(list(&h, Split::Test), [0]);
        // limits above the sizes keep everything
        let h = Holdout::new(&data(1, Some(100), Some(100)), 3, 2)?;
        assert_eq!(list(&h, Split::Train), [0, 1]);
        assert_eq!(list(&h, Split::Val), [2]);
        assert_eq!(list(&h, Split::Test), [0, 1]);
        assert_eq!(h.map(Split::Val, &[0])?, [2]);
        assert!(h
            .map(Split::Val, &[1])
            .unwrap_err()
            .to_string()
            .contains("sample 1 of the Val split is out of range (it has 1)"));
        Ok(())
    }

    #[test]
    fn a_hold_out_of_every_training_sample_is_refused() {
        for (validation, n) in [(5, 5), (6, 5)] {
            let e = Holdout::new(&data(validation, None, None), n, 3).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("data.validation"), "{msg}");
            assert!(
                msg.contains(&format!(
                    "holds out {validation} samples but the training set has only {n}"
                )),
                "{msg}"
            );
        }
        assert!(Holdout::new(&data(4, None, None), 5, 0).is_ok());
    }

    /// Sample `i` of the training source has the value `100 + i`, of the test source `i`.
    struct Numbered {
        info: TaskInfo,
    }

    impl Examples for Numbered {
        fn info(&self) -> &TaskInfo {
            &self.info
        }
        fn len(&self, source: Source) -> usize {
            match source {
                Source::Train => 6,
                Source::Test => 3,
            }
        }
        fn batch(
            &self,
            source: Source,
            indices: &[usize],
            _augment: Option<&str>,
            _rng: &mut Rng,
        ) -> Result<Batch> {
            let base = if source == Source::Train { 100.0 } else { 0.0 };
            let x: Vec<f32> = indices.iter().map(|&i| base + i as f32).collect();
            let n = x.len();
            Ok(Batch {
                inputs: Tensor::from_vec(x, (n, 1), &Device::Cpu)?,
                targets: Tensor::zeros(n, candle_core::DType::U32, &Device::Cpu)?,
                indices: vec![usize::MAX; n],
            })
        }
    }

    #[test]
    fn a_split_task_reads_each_split_from_its_source() -> Result<()> {
        let info = TaskInfo {
            dataset: "numbered".into(),
            input_shape: vec![1],
            num_classes: 1,
            metric: MetricInfo {
                name: "accuracy".into(),
                higher_is_better: true,
            },
        };
        let task = SplitTask::new(Numbered { info }, &data(2, None, Some(2)))?;
        assert_eq!(
            [Split::Train, Split::Val, Split::Test].map(|s| task.len(s)),
            [4, 2, 2]
        );
        let mut rng = Rng::new(0);
        let values = |split, idx: &[usize], rng: &mut Rng| -> Result<(Vec<f32>, Vec<usize>)> {
            let b = task.batch(split, idx, None, rng)?;
            Ok((b.inputs.flatten_all()?.to_vec1()?, b.indices))
        };
        assert_eq!(
            values(Split::Train, &[3, 0], &mut rng)?,
            (vec![103.0, 100.0], vec![3, 0])
        );
        assert_eq!(
            values(Split::Val, &[0, 1], &mut rng)?,
            (vec![104.0, 105.0], vec![0, 1])
        );
        assert_eq!(values(Split::Test, &[1], &mut rng)?, (vec![1.0], vec![1]));
        assert!(task.batch(Split::Test, &[2], None, &mut rng).is_err());
        assert!(task.as_any().unwrap().is::<SplitTask<Numbered>>());
        Ok(())
    }
}
