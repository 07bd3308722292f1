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
    task::{evaluate_classification, Evaluation, Split, Task, TaskInfo},
    Batch, Error, Network, Outputs, Result, Rng,
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
    /// A task-specific evaluation of `net` on the samples `indices` of `source` (e.g. COCO mAP over their
    /// boxes), or `None` (the default) for the classification metrics of [`Task::evaluate`].
    fn evaluate(
        &self,
        _net: &dyn Network,
        _source: Source,
        _indices: &[usize],
        _batch_size: usize,
    ) -> Option<Result<Evaluation>> {
        None
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

    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        let source: Vec<usize> = self.holdout.indices(split).collect();
        match self
            .examples
            .evaluate(net, Holdout::source(split), &source, batch_size)
        {
            Some(e) => e,
            None => evaluate_classification(self, net, split, batch_size),
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.examples.notes()
    }
}
