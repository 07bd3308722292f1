//! From heatmaps to boxes: peak picking (a cell that is the maximum of its 3×3 neighbourhood), score
//! threshold, top-k, boxes from the size and offset maps, class-wise NMS, and the final per-image cut.

use distill_core::{Error, Outputs, Result};

use crate::metrics::box_iou;

/// Post-processing settings (the recipe's `[data.options.postprocess]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostProcess {
    /// Peaks with a lower score are dropped.
    pub score_threshold: f64,
    /// Peaks kept per image before NMS.
    pub top_k: usize,
    /// Boxes of one class overlapping a better one by more than this IoU are dropped.
    pub nms_iou: f64,
    /// Boxes kept per image after NMS (COCO evaluates 100).
    pub max_detections: usize,
}

impl Default for PostProcess {
    fn default() -> Self {
        Self {
            score_threshold: 0.01,
            top_k: 100,
            nms_iou: 0.6,
            max_detections: 100,
        }
    }
}

impl PostProcess {
    /// Checks the numbers, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |k: &str, m: String| Err(Error::config(format!("data.options.postprocess.{k}"), m));
        if !(0.0..1.0).contains(&self.score_threshold) {
            return bad(
                "score_threshold",
                format!("must be in [0, 1), got {}", self.score_threshold),
            );
        }
        if !(self.nms_iou > 0.0 && self.nms_iou <= 1.0) {
            return bad(
                "nms_iou",
                format!("must be in (0, 1], got {}", self.nms_iou),
            );
        }
        if self.top_k == 0 || self.max_detections == 0 {
            return bad("top_k", "top_k and max_detections must be > 0".into());
        }
        Ok(())
    }
}

/// A detected box in input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxPred {
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
    /// Class index.
    pub class: usize,
}

/// Greedy class-wise NMS: boxes in score order (ties by input order); a box is dropped when it overlaps a
/// kept box of the same class by IoU > `iou`. Returns the kept boxes in score order.
pub fn nms(mut boxes: Vec<BoxPred>, iou: f64) -> Vec<BoxPred> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<BoxPred> = Vec::with_capacity(boxes.len());
    for b in boxes {
        if keep
            .iter()
            .all(|k| k.class != b.class || box_iou(&k.bbox, &b.bbox, false) <= iou)
        {
            keep.push(b);
        }
    }
    keep
}

/// Decodes a batch of outputs (heatmap logits `[B, K, H, W]`, `size` and `offset` `[B, 2, H, W]`) into
/// boxes per image, in input pixels (`stride` pixels per cell).
pub fn decode(out: &Outputs, stride: usize, pp: &PostProcess) -> Result<Vec<Vec<BoxPred>>> {
    let heat = candle_nn::ops::sigmoid(&out.logits)?;
    let (b, k, h, w) = heat.dims4()?;
    // 3x3 max with zero padding (scores are > 0), stride 1
    let pooled = heat
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .max_pool2d_with_stride(3, 1)?;
    let peaks = heat.eq(&pooled)?.to_dtype(candle_core::DType::F32)?;
    let scores: Vec<f32> = (heat * peaks)?.flatten_all()?.to_vec1()?;
    let size: Vec<f32> = out.feature("size")?.tensor.flatten_all()?.to_vec1()?;
    let offset: Vec<f32> = out.feature("offset")?.tensor.flatten_all()?.to_vec1()?;
    let plane = h * w;
    let r = stride as f64;
    let mut all = Vec::with_capacity(b);
    for i in 0..b {
        let s = &scores[i * k * plane..(i + 1) * k * plane];
        let mut cand: Vec<(f32, usize)> = s
            .iter()
            .enumerate()
            .filter(|(_, &v)| v as f64 >= pp.score_threshold && v > 0.0)
            .map(|(j, &v)| (v, j))
            .collect();
        cand.sort_by(|a, b| b.0.total_cmp(&a.0));
        cand.truncate(pp.top_k);
        let boxes: Vec<BoxPred> = cand
            .into_iter()
            .map(|(v, j)| {
                let (class, cell) = (j / plane, j % plane);
                let (y, x) = (cell / w, cell % w);
                let at = |c: usize, v: &[f32]| v[(i * 2 + c) * plane + cell] as f64;
                let bw = at(0, &size).max(0.0) * r;
                let bh = at(1, &size).max(0.0) * r;
                let cx = (x as f64 + at(0, &offset)) * r;
                let cy = (y as f64 + at(1, &offset)) * r;
                BoxPred {
                    bbox: [cx - bw / 2.0, cy - bh / 2.0, bw, bh],
                    score: v as f64,
                    class,
                }
            })
            .collect();
        let mut kept = nms(boxes, pp.nms_iou);
        kept.truncate(pp.max_detections);
        all.push(kept);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use distill_core::FeatureKind;

    fn bp(x: f64, score: f64, class: usize) -> BoxPred {
        BoxPred {
            bbox: [x, 0.0, 10.0, 10.0],
            score,
            class,
        }
    }

    #[test]
    fn nms_is_class_wise_and_greedy() {
        // b (0.9) suppresses a (0.8, IoU 0.67 > 0.5); c is another class and stays; d (x=8, IoU with b 0.11)
        // stays.
        let kept = nms(
            vec![
                bp(2.0, 0.8, 0),
                bp(0.0, 0.9, 0),
                bp(0.0, 0.7, 1),
                bp(8.0, 0.6, 0),
            ],
            0.5,
        );
        let got: Vec<(f64, usize)> = kept.iter().map(|b| (b.bbox[0], b.class)).collect();
        assert_eq!(got, vec![(0.0, 0), (0.0, 1), (8.0, 0)]);
    }

    #[test]
    fn decode_reads_peaks_sizes_and_offsets() {
        let dev = Device::Cpu;
        // one class, 4x4 map; a peak at (y=1, x=2) with logit 2 and a weaker neighbour at (1, 3): only the
        // peak survives the 3x3 maximum
        let mut heat = vec![-10f32; 16];
        heat[4 + 2] = 2.0;
        heat[4 + 3] = 1.0;
        let logits = Tensor::from_vec(heat, (1, 1, 4, 4), &dev).unwrap();
        let mut size = vec![0f32; 32];
        size[4 + 2] = 3.0; // w cells
        size[16 + 4 + 2] = 2.0; // h cells
        let mut off = vec![0f32; 32];
        off[4 + 2] = 0.5;
        off[16 + 4 + 2] = 0.25;
        let out = Outputs::logits(logits)
            .with_feature(
                "size",
                FeatureKind::Map,
                Tensor::from_vec(size, (1, 2, 4, 4), &dev).unwrap(),
            )
            .unwrap()
            .with_feature(
                "offset",
                FeatureKind::Map,
                Tensor::from_vec(off, (1, 2, 4, 4), &dev).unwrap(),
            )
            .unwrap();
        let pp = PostProcess {
            score_threshold: 0.1,
            ..PostProcess::default()
        };
        let d = decode(&out, 4, &pp).unwrap();
        assert_eq!(d[0].len(), 1);
        let b = d[0][0];
        // centre ((2 + 0.5) * 4, (1 + 0.25) * 4) = (10, 5); size (12, 8)
        assert_eq!(b.bbox, [4.0, 1.0, 12.0, 8.0]);
        assert!((b.score - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-6);
    }
}
