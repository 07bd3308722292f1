//! The detection [`Task`]: every split decoded once and kept in memory; batches carry the CenterNet
//! targets, the task loss is [`centernet_loss`], and evaluation decodes the heatmaps into boxes in original
//! image pixels and scores them with COCO's box evaluation.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use distill_core::{
    Batch, Error, Evaluation, Mode, Network, Outputs, Result, Rng, Split, Task, TaskInfo,
};

use crate::{
    data::{make_batch, Augment, DetSet},
    losses::centernet_loss,
    metrics::{coco_eval, to_extra, Detection},
    models::{
        postprocess::{decode, PostProcess},
        STRIDE,
    },
};

/// A detection task: every split decoded once and kept in memory.
pub struct DetTask {
    info: TaskInfo,
    train: DetSet,
    val: DetSet,
    test: DetSet,
    postprocess: PostProcess,
    notes: BTreeMap<String, serde_json::Value>,
    device: Device,
}

impl DetTask {
    /// A task over loaded sets; the last `validation` training images become the validation split.
    pub fn new(
        info: TaskInfo,
        mut train: DetSet,
        test: DetSet,
        validation: usize,
        postprocess: PostProcess,
        notes: BTreeMap<String, serde_json::Value>,
        device: Device,
    ) -> Result<Self> {
        if validation >= train.len() {
            return Err(Error::config(
                "data.validation",
                format!(
                    "holds out {validation} images but the training set has only {}",
                    train.len()
                ),
            ));
        }
        let val = train.split_off(train.len() - validation);
        Ok(Self {
            info,
            train,
            val,
            test,
            postprocess,
            notes,
            device,
        })
    }

    /// The images of a split.
    pub fn set(&self, split: Split) -> &DetSet {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// Runs `net` over a split and returns its detections in original image pixels (COCO results).
    pub fn detect(
        &self,
        net: &dyn Network,
        split: Split,
        batch_size: usize,
    ) -> Result<Vec<Detection>> {
        let set = self.set(split);
        let mut rng = Rng::new(0);
        let idx: Vec<usize> = (0..set.len()).collect();
        let mut dets = Vec::new();
        for chunk in idx.chunks(batch_size.max(1)) {
            let (x, _) = make_batch(set, chunk, None, STRIDE, &mut rng, &self.device)?;
            let out = net.forward(&x, Mode::Eval)?;
            for (&i, boxes) in chunk.iter().zip(decode(&out, STRIDE, &self.postprocess)?) {
                let im = &set.images[i];
                let (iw, ih) = (im.orig_size.0 as f64, im.orig_size.1 as f64);
                for b in boxes {
                    let x0 = ((b.bbox[0] - im.pad.0) / im.scale.0).clamp(0.0, iw);
                    let y0 = ((b.bbox[1] - im.pad.1) / im.scale.1).clamp(0.0, ih);
                    let x1 = ((b.bbox[0] + b.bbox[2] - im.pad.0) / im.scale.0).clamp(0.0, iw);
                    let y1 = ((b.bbox[1] + b.bbox[3] - im.pad.1) / im.scale.1).clamp(0.0, ih);
                    dets.push(Detection {
                        image_id: im.id,
                        category_id: set.category_ids[b.class],
                        bbox: [x0, y0, x1 - x0, y1 - y0],
                        score: b.score,
                    });
                }
            }
        }
        Ok(dets)
    }
}

impl Task for DetTask {
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
        let aug = augment.map(Augment::parse).transpose()?;
        let (inputs, targets) = make_batch(
            self.set(split),
            indices,
            aug.as_ref(),
            STRIDE,
            rng,
            &self.device,
        )?;
        Ok(Batch {
            inputs,
            targets,
            indices: indices.to_vec(),
        })
    }

    fn task_loss(&self, outputs: &Outputs, batch: &Batch) -> Result<Tensor> {
        centernet_loss(outputs, &batch.targets)
    }

    /// COCO box evaluation: the metric is AP@[.5:.95]; extras are the other 11 summary numbers and
    /// `detections` (boxes kept per image, on average).
    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        let set = self.set(split);
        let dets = self.detect(net, split, batch_size)?;
        let m = coco_eval(
            &set.image_ids(),
            &set.category_ids,
            &set.ground_truth,
            &dets,
        )?;
        let mut extra = to_extra(&m);
        extra.remove("ap");
        extra.insert(
            "detections".into(),
            dets.len() as f64 / set.len().max(1) as f64,
        );
        Ok(Evaluation {
            metric: m.ap,
            extra,
        })
    }

    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
    }
}
