//! COCO box evaluation: mAP@[.5:.95], AP50, AP75, AP small/medium/large and the six average recalls, as
//! pycocotools' `COCOeval(iouType="bbox")` computes them (written from its documented behaviour and checked
//! against it on the fixtures in `tests/fixtures/cocoeval`).
//!
//! The rules, per image and category: detections are sorted by score (descending, ties kept in input order)
//! and cut to the 100 best; each, in that order, takes the still-unmatched ground-truth box of the best IoU
//! ≥ the threshold (non-ignored boxes before ignored ones; a crowd box may be matched many times and its IoU
//! is the intersection over the detection's area). A ground-truth box is ignored when it is a crowd region or
//! its `area` lies outside the area range; an unmatched detection is ignored when its box area lies outside
//! the range. Per category, area range and detection limit, the matches of every image are pooled, sorted by
//! score, and precision is made monotone and read at the 101 recall points 0, 0.01, …, 1 (the first point
//! whose recall reaches each; 0 beyond the last). AP is the mean over IoU thresholds .50:.05:.95, recall points
//! and the categories that have any non-ignored ground truth; -1 when no category has.
//!
//! ```
//! use distill_detection::metrics::{coco_eval, Detection, GroundTruth};
//! let gt = [GroundTruth::new(1, 1, [10.0, 10.0, 20.0, 20.0])];
//! let dt = [Detection { image_id: 1, category_id: 1, bbox: [10.0, 10.0, 20.0, 20.0], score: 0.9 }];
//! let m = coco_eval(&[1], &[1], &gt, &dt).unwrap();
//! assert!((m.ap - 1.0).abs() < 1e-12);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use distill_core::{
    stats::{coco_precision_at_recalls, MatchedDetection, MatchedImage},
    task::MetricInfo,
    Error, Result,
};
use serde::{Deserialize, Serialize};

/// The headline metric of a detection task: COCO's AP@[.5:.95] (`mAP`), higher is better.
pub fn map_metric() -> MetricInfo {
    MetricInfo {
        name: "mAP".into(),
        higher_is_better: true,
    }
}

/// A ground-truth box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// Area used for the area ranges (COCO's `area`: the segment's area; `w·h` when the file has none).
    pub area: f64,
    /// A crowd region: never counted as missed, may match many detections.
    pub iscrowd: bool,
}

impl GroundTruth {
    /// A non-crowd box whose area is `w·h`.
    pub fn new(image_id: u64, category_id: u64, bbox: [f64; 4]) -> Self {
        Self {
            image_id,
            category_id,
            bbox,
            area: bbox[2] * bbox[3],
            iscrowd: false,
        }
    }
}

/// A detection (COCO results format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
}

/// The 12 numbers of `COCOeval.summarize()` (−1 where nothing could be measured).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CocoMetrics {
    /// AP at IoU .50:.05:.95, all areas, 100 detections.
    pub ap: f64,
    /// AP at IoU .50.
    pub ap50: f64,
    /// AP at IoU .75.
    pub ap75: f64,
    /// AP for small objects (area < 32²).
    pub ap_small: f64,
    /// AP for medium objects (32² ≤ area < 96²).
    pub ap_medium: f64,
    /// AP for large objects (area ≥ 96²).
    pub ap_large: f64,
    /// AR with 1 detection per image.
    pub ar1: f64,
    /// AR with 10 detections per image.
    pub ar10: f64,
    /// AR with 100 detections per image.
    pub ar100: f64,
    /// AR (100 detections), small objects.
    pub ar_small: f64,
    /// AR (100 detections), medium objects.
    pub ar_medium: f64,
    /// AR (100 detections), large objects.
    pub ar_large: f64,
}

impl CocoMetrics {
    /// `(name, value)` pairs, in `summarize()` order.
    pub fn named(&self) -> [(&'static str, f64); 12] {
        [
            ("ap", self.ap),
            ("ap50", self.ap50),
            ("ap75", self.ap75),
            ("ap_small", self.ap_small),
            ("ap_medium", self.ap_medium),
            ("ap_large", self.ap_large),
            ("ar1", self.ar1),
            ("ar10", self.ar10),
            ("ar100", self.ar100),
            ("ar_small", self.ar_small),
            ("ar_medium", self.ar_medium),
            ("ar_large", self.ar_large),
        ]
    }
}

/// `np.linspace(start, stop, num)`: `start + i·step`, the last point exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    v[num - 1] = stop;
    v
}

/// The area ranges all, small, medium, large (bounds inclusive, as in pycocotools).
const AREA_RANGES: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
/// The detection limits per image.
const MAX_DETS: [usize; 3] = [1, 10, 100];

/// IoU of `[x, y, w, h]` boxes; with `crowd`, intersection over the detection's area.
pub fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let u = if crowd {
        d[2] * d[3]
    } else {
        d[2] * d[3] + g[2] * g[3] - i
    };
    i / u
}

/// One image's ground truth, its sorted and cut detections, and their IoUs (`[detection][box]`).
type ImageMatches<'a> = (&'a Vec<&'a GroundTruth>, Vec<&'a Detection>, Vec<Vec<f64>>);

/// Matches of one image and category at one area range.
struct ImageEval {
    /// Scores of the (sorted, cut) detections.
    scores: Vec<f64>,
    /// `[threshold][detection]`: matched.
    matched: Vec<Vec<bool>>,
    /// `[threshold][detection]`: ignored.
    ignored: Vec<Vec<bool>>,
    /// Number of non-ignored ground-truth boxes.
    n_gt: usize,
}

fn evaluate_image(
    gts: &[&GroundTruth],
    dts: &[&Detection],
    ious: &[Vec<f64>],
    range: (f64, f64),
    thresholds: &[f64],
) -> Option<ImageEval> {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let gt_ignore: Vec<bool> = gts
        .iter()
        .map(|g| g.iscrowd || g.area < range.0 || g.area > range.1)
        .collect();
    // non-ignored first, stable
    let mut order: Vec<usize> = (0..gts.len()).collect();
    order.sort_by_key(|&i| gt_ignore[i]);
    let g_ig: Vec<bool> = order.iter().map(|&i| gt_ignore[i]).collect();
    let g_crowd: Vec<bool> = order.iter().map(|&i| gts[i].iscrowd).collect();
    let nt = thresholds.len();
    let mut matched = vec![vec![false; dts.len()]; nt];
    let mut ignored = vec![vec![false; dts.len()]; nt];
    for (ti, &t) in thresholds.iter().enumerate() {
        let mut gt_taken = vec![false; gts.len()];
        for (di, _) in dts.iter().enumerate() {
            let mut best = t.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (gi, &go) in order.iter().enumerate() {
                if gt_taken[gi] && !g_crowd[gi] {
                    continue;
                }
                // once a non-ignored match exists, ignored boxes (sorted last) cannot replace it
                if let Some(mi) = m {
                    if !g_ig[mi] && g_ig[gi] {
                        break;
                    }
                }
                let iou = ious[di][go];
                if iou < best {
                    continue;
                }
                best = iou;
                m = Some(gi);
            }
            if let Some(mi) = m {
                ignored[ti][di] = g_ig[mi];
                matched[ti][di] = true;
                gt_taken[mi] = true;
            }
        }
        for (di, d) in dts.iter().enumerate() {
            let a = d.bbox[2] * d.bbox[3];
            if !matched[ti][di] && (a < range.0 || a > range.1) {
                ignored[ti][di] = true;
            }
        }
    }
    Some(ImageEval {
        scores: dts.iter().map(|d| d.score).collect(),
        matched,
        ignored,
        n_gt: g_ig.iter().filter(|&&x| !x).count(),
    })
}

/// One image's detections of one category sorted by score (descending, ties in input order) and cut to
/// `max_det`, and their IoUs with its ground-truth boxes (`[detection][box]`).
fn sorted_with_ious<'a>(
    g: &[&GroundTruth],
    d: &[&'a Detection],
    max_det: usize,
) -> (Vec<&'a Detection>, Vec<Vec<f64>>) {
    let mut d = d.to_vec();
    d.sort_by(|a, b| b.score.total_cmp(&a.score));
    d.truncate(max_det);
    let ious = d
        .iter()
        .map(|dd| {
            g.iter()
                .map(|gg| box_iou(&dd.bbox, &gg.bbox, gg.iscrowd))
                .collect()
        })
        .collect();
    (d, ious)
}

/// Ground-truth boxes and detections grouped by (image, category), each group in input order.
#[allow(clippy::type_complexity)]
fn by_image_and_category<'a, 'b>(
    ground_truth: &'a [GroundTruth],
    detections: &'b [Detection],
) -> (
    HashMap<(u64, u64), Vec<&'a GroundTruth>>,
    HashMap<(u64, u64), Vec<&'b Detection>>,
) {
    let mut gt_by: HashMap<(u64, u64), Vec<&GroundTruth>> = HashMap::new();
    for g in ground_truth {
        gt_by
            .entry((g.image_id, g.category_id))
            .or_default()
            .push(g);
    }
    let mut dt_by: HashMap<(u64, u64), Vec<&Detection>> = HashMap::new();
    for d in detections {
        dt_by
            .entry((d.image_id, d.category_id))
            .or_default()
            .push(d);
    }
    (gt_by, dt_by)
}

/// Every image's detections matched to its ground truth as [`coco_eval`] matches them for its headline AP
/// (area range "all", 100 detections per image and category), for distill-core's
/// [`average_precision`](distill_core::stats::average_precision) on resamples of the images (the KD gain's
/// bootstrap interval): over all images in order it gives `coco_eval(..).ap`. Inputs as [`coco_eval`]'s, whose
/// checks it relies on (call it after).
pub fn matched_images(
    image_ids: &[u64],
    category_ids: &[u64],
    ground_truth: &[GroundTruth],
    detections: &[Detection],
) -> Vec<MatchedImage> {
    let imgs: BTreeSet<u64> = image_ids.iter().copied().collect();
    let cats: BTreeSet<u64> = category_ids.iter().copied().collect();
    let (gt_by, dt_by) = by_image_and_category(ground_truth, detections);
    let thresholds = linspace(0.5, 0.95, 10);
    let max_det = *MAX_DETS.last().expect("limits");
    let (empty_g, empty_d) = (Vec::new(), Vec::new());
    imgs.iter()
        .map(|&img| {
            let mut out = MatchedImage {
                dets: Vec::new(),
                gt: Vec::new(),
            };
            for &cat in &cats {
                let g = gt_by.get(&(img, cat)).unwrap_or(&empty_g);
                let (d, ious) =
                    sorted_with_ious(g, dt_by.get(&(img, cat)).unwrap_or(&empty_d), max_det);
                let Some(e) = evaluate_image(g, &d, &ious, AREA_RANGES[0], &thresholds) else {
                    continue;
                };
                let bits = |flags: &[Vec<bool>], di: usize| {
                    (0..thresholds.len()).fold(0u16, |b, t| b | ((flags[t][di] as u16) << t))
                };
                out.dets
                    .extend(d.iter().enumerate().map(|(di, det)| MatchedDetection {
                        category: cat,
                        score: det.score,
                        matched: bits(&e.matched, di),
                        ignored: bits(&e.ignored, di),
                    }));
                if e.n_gt > 0 {
                    out.gt.push((cat, e.n_gt));
                }
            }
            out
        })
        .collect()
}

/// COCO box evaluation of `detections` against `ground_truth` over `image_ids` and `category_ids` (the
/// ground-truth file's images and categories; duplicates are merged).
///
/// A detection on an image that is not in `image_ids` is an error (pycocotools refuses such results too);
/// detections of a category not in `category_ids` are not evaluated.
pub fn coco_eval(
    image_ids: &[u64],
    category_ids: &[u64],
    ground_truth: &[GroundTruth],
    detections: &[Detection],
) -> Result<CocoMetrics> {
    let imgs: Vec<u64> = image_ids
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let cats: Vec<u64> = category_ids
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let img_set: BTreeSet<u64> = imgs.iter().copied().collect();
    for (i, d) in detections.iter().enumerate() {
        if !img_set.contains(&d.image_id) {
            return Err(Error::msg(format!(
                "detection {i} is on image {} which is not in the ground truth",
                d.image_id
            )));
        }
        if !(d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite())) {
            return Err(Error::msg(format!(
                "detection {i} (image {}) has a non-finite score or box",
                d.image_id
            )));
        }
    }
    let (gt_by, dt_by) = by_image_and_category(ground_truth, detections);
    let thresholds = linspace(0.5, 0.95, 10);
    // the 101 recall points of coco_precision_at_recalls
    let nr_points = 101;
    let max_det = *MAX_DETS.last().expect("limits");
    let (nt, nr, nk, na, nm) = (
        thresholds.len(),
        nr_points,
        cats.len(),
        AREA_RANGES.len(),
        MAX_DETS.len(),
    );
    // precision[t][r][k][a][m], recall[t][k][a][m]; -1 = no ground truth
    let pidx = |t: usize, r: usize, k: usize, a: usize, m: usize| {
        (((t * nr + r) * nk + k) * na + a) * nm + m
    };
    let ridx = |t: usize, k: usize, a: usize, m: usize| ((t * nk + k) * na + a) * nm + m;
    let mut precision = vec![-1.0f64; nt * nr * nk * na * nm];
    let mut recall = vec![-1.0f64; nt * nk * na * nm];
    let empty_g: Vec<&GroundTruth> = Vec::new();
    let empty_d: Vec<&Detection> = Vec::new();
    for (k, &cat) in cats.iter().enumerate() {
        // per image: sorted, cut detections and their IoUs (computed once, shared by the area ranges)
        let per_image: Vec<ImageMatches> = imgs
            .iter()
            .map(|&img| {
                let g = gt_by.get(&(img, cat)).unwrap_or(&empty_g);
                let (d, ious) =
                    sorted_with_ious(g, dt_by.get(&(img, cat)).unwrap_or(&empty_d), max_det);
                (g, d, ious)
            })
            .collect();
        for (a, &range) in AREA_RANGES.iter().enumerate() {
            let evals: Vec<ImageEval> = per_image
                .iter()
                .filter_map(|(g, d, ious)| evaluate_image(g, d, ious, range, &thresholds))
                .collect();
            let n_gt: usize = evals.iter().map(|e| e.n_gt).sum();
            if n_gt == 0 {
                continue;
            }
            for (m, &md) in MAX_DETS.iter().enumerate() {
                // pool the first `md` detections of every image, stable-sorted by score
                let mut pool: Vec<(f64, usize, usize)> = Vec::new();
                for (ei, e) in evals.iter().enumerate() {
                    for (di, &s) in e.scores.iter().enumerate().take(md) {
                        pool.push((s, ei, di));
                    }
                }
                pool.sort_by(|x, y| y.0.total_cmp(&x.0));
                for t in 0..nt {
                    // ignored detections count neither way but keep their place in the curve
                    let outcomes = pool.iter().map(|&(_, ei, di)| {
                        let e = &evals[ei];
                        (!e.ignored[t][di]).then_some(e.matched[t][di])
                    });
                    let (rc, pr) = coco_precision_at_recalls(outcomes, n_gt);
                    recall[ridx(t, k, a, m)] = rc;
                    for (r, p) in pr.iter().enumerate() {
                        precision[pidx(t, r, k, a, m)] = *p;
                    }
                }
            }
        }
    }
    let mean_valid = |vals: &mut dyn Iterator<Item = f64>| -> f64 {
        let (mut s, mut n) = (0.0, 0usize);
        for v in vals.filter(|&v| v > -1.0) {
            s += v;
            n += 1;
        }
        if n == 0 {
            -1.0
        } else {
            s / n as f64
        }
    };
    let t_of = |thr: f64| thresholds.iter().position(|&x| (x - thr).abs() < 1e-12);
    let ap = |thr: Option<f64>, a: usize, m: usize| -> f64 {
        let ts: Vec<usize> = match thr {
            None => (0..nt).collect(),
            Some(x) => t_of(x).into_iter().collect(),
        };
        let mut it = ts
            .into_iter()
            .flat_map(|t| (0..nr).flat_map(move |r| (0..nk).map(move |k| pidx(t, r, k, a, m))));
        mean_valid(&mut std::iter::from_fn(|| it.next().map(|i| precision[i])))
    };
    let ar = |a: usize, m: usize| -> f64 {
        let mut it = (0..nt).flat_map(|t| (0..nk).map(move |k| ridx(t, k, a, m)));
        mean_valid(&mut std::iter::from_fn(|| it.next().map(|i| recall[i])))
    };
    Ok(CocoMetrics {
        ap: ap(None, 0, 2),
        ap50: ap(Some(0.5), 0, 2),
        ap75: ap(Some(0.75), 0, 2),
        ap_small: ap(None, 1, 2),
        ap_medium: ap(None, 2, 2),
        ap_large: ap(None, 3, 2),
        ar1: ar(0, 0),
        ar10: ar(0, 1),
        ar100: ar(0, 2),
        ar_small: ar(1, 2),
        ar_medium: ar(2, 2),
        ar_large: ar(3, 2),
    })
}

/// The 12 figures as the `extra` map of an evaluation.
pub fn to_extra(m: &CocoMetrics) -> BTreeMap<String, f64> {
    m.named().iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_numpy_linspace() {
        let t = linspace(0.5, 0.95, 10);
        assert_eq!(t.len(), 10);
        assert_eq!(t[0], 0.5);
        assert_eq!(t[9], 0.95);
        // np.linspace(.5, .95, 10)[5] == 0.75 exactly
        assert_eq!(t[5], 0.75);
        let r = linspace(0.0, 1.0, 101);
        assert_eq!(r[100], 1.0);
    }

    #[test]
    fn iou_by_hand() {
        // two 10x10 boxes overlapping in a 5x10 strip: 50 / 150
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [5.0, 0.0, 10.0, 10.0];
        assert!((box_iou(&a, &b, false) - 1.0 / 3.0).abs() < 1e-12);
        // crowd: intersection over the detection's area
        assert!((box_iou(&a, &b, true) - 0.5).abs() < 1e-12);
        assert_eq!(box_iou(&a, &[20.0, 20.0, 1.0, 1.0], false), 0.0);
    }

    #[test]
    fn one_hit_one_miss_by_hand() {
        // one image, two boxes of one class, one perfect detection: recall 0.5 at every threshold, precision
        // 1 up to recall 0.5 → 51 of 101 recall points at 1.0.
        let gt = [
            GroundTruth::new(1, 1, [0.0, 0.0, 50.0, 50.0]),
            GroundTruth::new(1, 1, [100.0, 100.0, 50.0, 50.0]),
        ];
        let dt = [Detection {
            image_id: 1,
            category_id: 1,
            bbox: [0.0, 0.0, 50.0, 50.0],
            score: 0.5,
        }];
        let m = coco_eval(&[1], &[1], &gt, &dt).unwrap();
        assert!((m.ap - 51.0 / 101.0).abs() < 1e-12, "{m:?}");
        assert!((m.ar100 - 0.5).abs() < 1e-12);
        // no small or large boxes: -1
        assert_eq!(m.ap_small, -1.0);
        assert_eq!(m.ap_large, -1.0);
    }

    #[test]
    fn detection_on_unknown_image_is_an_error() {
        let dt = [Detection {
            image_id: 7,
            category_id: 1,
            bbox: [0.0, 0.0, 5.0, 5.0],
            score: 0.5,
        }];
        let e = coco_eval(&[1], &[1], &[], &dt).unwrap_err().to_string();
        assert!(e.contains("image 7"), "{e}");
    }
}
