//! The detection task: the data set's images decoded once and kept in memory, declared as [`Examples`]
//! (core's [`SplitTask`](distill_core::examples::SplitTask) cuts the validation split and the limits);
//! batches carry the CenterNet targets, the task loss is [`centernet_loss`], and evaluation decodes the
//! heatmaps into boxes in original image pixels and scores a split's images with COCO's box evaluation.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use distill_core::{
    examples::{Examples, Source},
    stats::ExampleScores,
    Batch, Evaluation, Mode, Network, Outputs, Result, Rng, TaskInfo,
};

use crate::{
    data::{make_batch, Augment, DetSet},
    losses::centernet_loss,
    metrics::{coco_eval, matched_images, to_extra, Detection, GroundTruth},
    models::{
        postprocess::{decode, PostProcess},
        STRIDE,
    },
};

/// A detection data set's examples: its training and test images, decoded once and kept in memory.
pub struct DetExamples {
    info: TaskInfo,
    train: DetSet,
    test: DetSet,
    postprocess: PostProcess,
    notes: BTreeMap<String, serde_json::Value>,
    device: Device,
}

impl DetExamples {
    /// Examples over loaded sets, batched onto `device`; `postprocess` decodes the heatmaps for evaluation.
    pub fn new(
        info: TaskInfo,
        train: DetSet,
        test: DetSet,
        postprocess: PostProcess,
        notes: BTreeMap<String, serde_json::Value>,
        device: Device,
    ) -> Self {
        Self {
            info,
            train,
            test,
            postprocess,
            notes,
            device,
        }
    }

    /// The images of a source.
    pub fn set(&self, source: Source) -> &DetSet {
        match source {
            Source::Train => &self.train,
            Source::Test => &self.test,
        }
    }

    /// Runs `net` over the images `indices` of `set` and returns their detections in original image pixels
    /// (COCO results).
    pub fn detect(
        &self,
        net: &dyn Network,
        set: &DetSet,
        indices: &[usize],
        batch_size: usize,
    ) -> Result<Vec<Detection>> {
        let mut rng = Rng::new(0);
        let mut dets = Vec::new();
        for chunk in indices.chunks(batch_size.max(1)) {
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

impl Examples for DetExamples {
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
        let aug = augment.map(Augment::parse).transpose()?;
        let (inputs, targets) = make_batch(
            self.set(source),
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

    /// COCO box evaluation of the images `indices` of `source`: the metric is AP@[.5:.95]; extras are the
    /// other 11 summary numbers and `detections` (boxes kept per image, on average).
    fn evaluate(
        &self,
        net: &dyn Network,
        source: Source,
        indices: &[usize],
        batch_size: usize,
    ) -> Option<Result<Evaluation>> {
        Some((|| {
            let set = self.set(source);
            let dets = self.detect(net, set, indices, batch_size)?;
            let ids: Vec<u64> = indices.iter().map(|&i| set.images[i].id).collect();
            let wanted: BTreeSet<u64> = ids.iter().copied().collect();
            let gt: Vec<GroundTruth> = set
                .ground_truth
                .iter()
                .filter(|g| wanted.contains(&g.image_id))
                .cloned()
                .collect();
            let m = coco_eval(&ids, &set.category_ids, &gt, &dets)?;
            let mut extra = to_extra(&m);
            extra.remove("ap");
            extra.insert(
                "detections".into(),
                dets.len() as f64 / indices.len().max(1) as f64,
            );
            // on the test split, the images matched to their ground truth, for the KD gain's bootstrap
            // interval over images (COCO AP is recomputed on each resample)
            let examples = (source == Source::Test).then(|| ExampleScores::Detections {
                images: matched_images(&ids, &set.category_ids, &gt, &dets),
            });
            Ok(Evaluation {
                metric: m.ap,
                extra,
                examples,
            })
        })())
    }

    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
    }
}
