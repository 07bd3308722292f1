//! The shared splits (distill_core::examples) through their public API: the hold-out convention, a
//! SplitTask reading each split from its source, and a plugin's own evaluation on each split's samples.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use distill_core::{
    examples::{Examples, Holdout, Source, SplitTask},
    recipe::DataConfig,
    task::{Evaluation, MetricInfo},
    Batch, Network, Outputs, Result, Rng, Split, Task, TaskInfo,
};

fn data(validation: usize, train_limit: Option<usize>, test_limit: Option<usize>) -> DataConfig {
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

/// Scores a split by the sum of its source indices, so the test sees which samples it was given.
struct Scored(Numbered);

impl Examples for Scored {
    fn info(&self) -> &TaskInfo {
        self.0.info()
    }
    fn len(&self, source: Source) -> usize {
        self.0.len(source)
    }
    fn batch(
        &self,
        source: Source,
        indices: &[usize],
        augment: Option<&str>,
        rng: &mut Rng,
    ) -> Result<Batch> {
        self.0.batch(source, indices, augment, rng)
    }
    fn evaluate(
        &self,
        _net: &dyn Network,
        source: Source,
        indices: &[usize],
        _batch_size: usize,
    ) -> Option<Result<Evaluation>> {
        let offset = if source == Source::Train { 1000.0 } else { 0.0 };
        Some(Ok(Evaluation {
            metric: offset + indices.iter().sum::<usize>() as f64,
            extra: BTreeMap::new(),
            examples: None,
        }))
    }
}

struct Zero(candle_nn::VarMap);

impl Network for Zero {
    fn forward(&self, input: &Tensor, _mode: distill_core::Mode) -> Result<Outputs> {
        Ok(Outputs::logits(input.zeros_like()?))
    }
    fn varmap(&self) -> &candle_nn::VarMap {
        &self.0
    }
    fn describe(&self) -> String {
        "zero".into()
    }
}

#[test]
fn a_plugin_evaluation_gets_each_splits_source_samples() -> Result<()> {
    let info = TaskInfo {
        dataset: "numbered".into(),
        input_shape: vec![1],
        num_classes: 1,
        metric: MetricInfo {
            name: "score".into(),
            higher_is_better: true,
        },
    };
    let task = SplitTask::new(Scored(Numbered { info }), &data(2, Some(3), None))?;
    let net = Zero(candle_nn::VarMap::new());
    // validation = training samples 4 and 5; training = 0, 1, 2; test = 0, 1, 2
    assert_eq!(task.evaluate(&net, Split::Val, 8)?.metric, 1009.0);
    assert_eq!(task.evaluate(&net, Split::Train, 8)?.metric, 1003.0);
    assert_eq!(task.evaluate(&net, Split::Test, 8)?.metric, 3.0);
    Ok(())
}
