//! Statistics of results: rank correlations, the per-example test scores a phase keeps
//! ([`ExampleScores`], `test_examples.json` in the phase's directory; for detection, images matched to their
//! ground truth and [`average_precision`] over any resample of them) and the paired bootstrap interval of a
//! KD gain over seeds × test examples ([`paired_bootstrap`]).
//!
//! The interval resamples both sources of noise in a gain: which seeds were trained (training noise) and which
//! test examples were drawn (test-set noise). One resample draws the seeds with replacement and, once for all
//! of them, the test examples with replacement; its gain is the mean over the drawn seeds of the distilled
//! student's metric minus its scratch twin's (same seed, same init and data order) on the drawn examples.
//! The 95 % interval is the 2.5th and 97.5th percentiles of 2,000 resamples; a gain is beyond noise when the
//! interval excludes 0.

use serde::{Deserialize, Serialize};

use distill_nn::{Error, Result, Rng};

/// Tie-averaged ranks (1-based), as `scipy.stats.rankdata`.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation; 0 when either side is constant or the inputs are empty.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (a, b) = (x[i] - mx, y[i] - my);
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Spearman rank correlation (Pearson of the tie-averaged ranks), as `scipy.stats.spearmanr`.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// What a test evaluation keeps per example, so that its metric can be recomputed on any resample of the
/// examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExampleScores {
    /// The metric is the mean of these per-example scores (1 or 0 per example for an accuracy).
    Mean {
        /// One score per test example.
        scores: Vec<f64>,
    },
    /// The metric is the Spearman correlation of `pred` with `gold`.
    Spearman {
        /// The network's score per example.
        pred: Vec<f64>,
        /// The gold score per example.
        gold: Vec<f64>,
    },
    /// The metric is COCO's AP@[.5:.95] of detections already matched to the ground truth image by image
    /// ([`average_precision`]); an example is an image.
    Detections {
        /// One entry per test image, in the order the evaluation pooled them.
        images: Vec<MatchedImage>,
    },
}

/// One image's detections matched against its ground truth at COCO's IoU thresholds .50:.05:.95 (area range
/// "all", the best 100 per image and category), as the detection plugin's COCO evaluation matches them.
/// Matching is per image and category, so a resample of images reuses it; only the pooling across images is
/// redone ([`average_precision`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchedImage {
    /// The detections, grouped by category and sorted by score (descending) within it.
    pub dets: Vec<MatchedDetection>,
    /// `(category, non-ignored ground-truth boxes)` for every category with ground truth on this image.
    pub gt: Vec<(u64, usize)>,
}

/// A matched detection; bit `t` of `matched` / `ignored` is its status at the `t`-th IoU threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MatchedDetection {
    /// Category id.
    pub category: u64,
    /// Score.
    pub score: f64,
    /// Matched a ground-truth box, per threshold.
    pub matched: u16,
    /// Ignored (matched a crowd / ignored box), per threshold.
    pub ignored: u16,
}

/// Number of IoU thresholds of COCO's AP@[.5:.95].
pub const COCO_IOU_THRESHOLDS: usize = 10;

/// COCO's reading of one ranked pool of detections (pycocotools' `accumulate`): `outcomes` in rank order
/// (`Some(true)` a true positive, `Some(false)` a false positive, `None` an ignored detection, which counts
/// neither way but keeps its place), `n_gt` > 0 ground-truth boxes. Returns the final recall and the precision
/// at the 101 recall points 0, 0.01, …, 1 (numpy's `linspace(0, 1, 101)`): precision made monotone from the
/// right, read at the first rank whose recall reaches each point, 0 beyond the last.
pub fn coco_precision_at_recalls(
    outcomes: impl Iterator<Item = Option<bool>>,
    n_gt: usize,
) -> (f64, [f64; 101]) {
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut rc, mut pr) = (Vec::new(), Vec::new());
    for o in outcomes {
        match o {
            Some(true) => tp += 1,
            Some(false) => fp += 1,
            None => {}
        }
        let (tpf, fpf) = (tp as f64, fp as f64);
        rc.push(tpf / n_gt as f64);
        pr.push(tpf / (fpf + tpf + f64::EPSILON));
    }
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    let mut out = [0.0; 101];
    for (r, p) in out.iter_mut().enumerate() {
        // numpy's linspace: start + r * step, the last point exactly 1
        let thr = if r == 100 { 1.0 } else { r as f64 * 0.01 };
        let pi = rc.partition_point(|&x| x < thr);
        *p = if pi < pr.len() { pr[pi] } else { 0.0 };
    }
    (rc.last().copied().unwrap_or(0.0), out)
}

/// COCO's AP@[.5:.95] over the images `idx` of `images` (repeats allowed: a repeated image counts as another
/// image): per category with ground truth, the detections of every drawn image are pooled in draw order and
/// stable-sorted by score, precision is made monotone and read at the 101 recall points 0, 0.01, …, 1 (the
/// first point whose recall reaches each; 0 beyond the last), and AP is the mean over thresholds, recall
/// points and those categories; -1 when no category has ground truth. Over every image in order it equals
/// the plugin's `coco_eval(..).ap`.
pub fn average_precision(images: &[MatchedImage], idx: &[usize]) -> f64 {
    use std::collections::BTreeMap;
    /// A category's ground-truth count and its pooled (score, matched, ignored).
    type Pool = (usize, Vec<(f64, u16, u16)>);
    let mut cats: BTreeMap<u64, Pool> = BTreeMap::new();
    for &i in idx {
        let im = &images[i];
        for &(c, n) in &im.gt {
            cats.entry(c).or_default().0 += n;
        }
        for d in &im.dets {
            cats.entry(d.category)
                .or_default()
                .1
                .push((d.score, d.matched, d.ignored));
        }
    }
    let (mut sum, mut count) = (0.0, 0usize);
    for (n_gt, mut pool) in cats.into_values() {
        if n_gt == 0 {
            continue;
        }
        pool.sort_by(|x, y| y.0.total_cmp(&x.0));
        for t in 0..COCO_IOU_THRESHOLDS {
            let outcomes = pool
                .iter()
                .map(|&(_, m, ig)| (ig >> t & 1 == 0).then_some(m >> t & 1 == 1));
            let (_, precision) = coco_precision_at_recalls(outcomes, n_gt);
            sum += precision.iter().sum::<f64>();
            count += precision.len();
        }
    }
    if count == 0 {
        -1.0
    } else {
        sum / count as f64
    }
}

impl ExampleScores {
    /// Number of test examples.
    pub fn len(&self) -> usize {
        match self {
            Self::Mean { scores } => scores.len(),
            Self::Spearman { pred, .. } => pred.len(),
            Self::Detections { images } => images.len(),
        }
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The metric over every example.
    pub fn metric(&self) -> f64 {
        self.metric_on(&(0..self.len()).collect::<Vec<_>>())
    }

    /// The metric over the examples `idx` (repeats allowed, as in a bootstrap resample).
    pub fn metric_on(&self, idx: &[usize]) -> f64 {
        match self {
            Self::Mean { scores } => {
                idx.iter().map(|&i| scores[i]).sum::<f64>() / idx.len().max(1) as f64
            }
            Self::Spearman { pred, gold } => {
                let p: Vec<f64> = idx.iter().map(|&i| pred[i]).collect();
                let g: Vec<f64> = idx.iter().map(|&i| gold[i]).collect();
                spearman(&p, &g)
            }
            Self::Detections { images } => average_precision(images, idx),
        }
    }

    /// The examples of several test sets one after the other (e.g. the folds of a leave-one-speaker-out run,
    /// where every clip is tested once); all must be of one kind.
    pub fn concat(parts: &[ExampleScores]) -> Result<ExampleScores> {
        let mut out = match parts.first() {
            Some(Self::Mean { .. }) => Self::Mean { scores: Vec::new() },
            Some(Self::Spearman { .. }) => Self::Spearman {
                pred: Vec::new(),
                gold: Vec::new(),
            },
            Some(Self::Detections { .. }) => Self::Detections { images: Vec::new() },
            None => return Err(Error::msg("no per-example test scores to join")),
        };
        for p in parts {
            match (&mut out, p) {
                (Self::Mean { scores }, Self::Mean { scores: s }) => scores.extend(s),
                (Self::Spearman { pred, gold }, Self::Spearman { pred: p, gold: g }) => {
                    pred.extend(p);
                    gold.extend(g);
                }
                (Self::Detections { images }, Self::Detections { images: i }) => {
                    images.extend(i.iter().cloned())
                }
                _ => return Err(Error::msg("per-example test scores of different kinds")),
            }
        }
        Ok(out)
    }
}

/// The 95 % paired bootstrap interval of a KD gain (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GainInterval {
    /// 2.5th percentile of the resampled gains.
    pub lo: f64,
    /// 97.5th percentile.
    pub hi: f64,
    /// Seeds (scratch / distilled pairs) resampled.
    pub seeds: usize,
    /// Test examples resampled.
    pub examples: usize,
    /// Bootstrap resamples.
    pub resamples: usize,
}

impl GainInterval {
    /// Whether the interval excludes 0: the gain (or loss) is beyond the noise of seeds and test examples.
    pub fn beyond_noise(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

/// Resamples used by [`paired_bootstrap`] in reports.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The paired bootstrap interval of the KD gain (distilled − scratch, sign flipped when lower is better) over
/// seeds × test examples: `distilled[i]` and `scratch[i]` are seed `i`'s twins, evaluated on the same test
/// examples. `rng_seed` fixes the resamples, so a report is reproducible.
pub fn paired_bootstrap(
    distilled: &[ExampleScores],
    scratch: &[ExampleScores],
    higher_is_better: bool,
    resamples: usize,
    rng_seed: u64,
) -> Result<GainInterval> {
    let seeds = distilled.len();
    if seeds == 0 || seeds != scratch.len() || resamples == 0 {
        return Err(Error::msg(format!(
            "a paired bootstrap needs one scratch run per distilled run and at least one of each ({seeds} \
             distilled, {} scratch) and resamples > 0",
            scratch.len()
        )));
    }
    let n = distilled[0].len();
    if n == 0 || distilled.iter().chain(scratch).any(|e| e.len() != n) {
        return Err(Error::msg(
            "a paired bootstrap needs the same, non-empty test examples in every run",
        ));
    }
    let sign = if higher_is_better { 1.0 } else { -1.0 };
    // a mean metric: the gain on a resample is a weighted sum of per-example differences
    let diffs: Option<Vec<Vec<f64>>> = distilled
        .iter()
        .zip(scratch)
        .map(|(d, s)| match (d, s) {
            (ExampleScores::Mean { scores: d }, ExampleScores::Mean { scores: s }) => {
                Some(d.iter().zip(s).map(|(a, b)| sign * (a - b)).collect())
            }
            _ => None,
        })
        .collect();
    let mut rng = Rng::new(rng_seed);
    let mut gains = Vec::with_capacity(resamples);
    let mut counts = vec![0u32; n];
    let mut idx = vec![0usize; n];
    for _ in 0..resamples {
        let drawn: Vec<usize> = (0..seeds).map(|_| rng.below(seeds)).collect();
        for v in idx.iter_mut() {
            *v = rng.below(n);
        }
        let gain = match &diffs {
            Some(diffs) => {
                counts.iter_mut().for_each(|c| *c = 0);
                for &i in &idx {
                    counts[i] += 1;
                }
                drawn
                    .iter()
                    .map(|&s| {
                        diffs[s]
                            .iter()
                            .zip(&counts)
                            .map(|(d, &c)| d * c as f64)
                            .sum::<f64>()
                            / n as f64
                    })
                    .sum::<f64>()
                    / seeds as f64
            }
            None => {
                drawn
                    .iter()
                    .map(|&s| sign * (distilled[s].metric_on(&idx) - scratch[s].metric_on(&idx)))
                    .sum::<f64>()
                    / seeds as f64
            }
        };
        gains.push(gain);
    }
    gains.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| gains[((p * resamples as f64).floor() as usize).min(resamples - 1)];
    Ok(GainInterval {
        lo: q(0.025),
        hi: q(0.975),
        seeds,
        examples: n,
        resamples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(v: &[f64]) -> ExampleScores {
        ExampleScores::Mean { scores: v.to_vec() }
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0]), vec![2.0, 3.5, 3.5, 1.0]);
    }

    #[test]
    fn spearman_matches_scipy() {
        // scipy.stats.spearmanr([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 6]).statistic = 0.8696565534786727
        // scipy.stats.pearsonr([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]).statistic = 0.7745966692414835
        let s = spearman(&[1., 2., 3., 4., 5., 6.], &[2., 1., 4., 3., 6., 6.]);
        assert!((s - 0.8696565534786727).abs() < 1e-12, "{s}");
        let p = pearson(&[1., 2., 3., 4., 5.], &[2., 4., 5., 4., 5.]);
        assert!((p - 0.7745966692414835).abs() < 1e-12, "{p}");
        assert_eq!(spearman(&[1., 1., 1.], &[1., 2., 3.]), 0.0);
        assert!((spearman(&[3., 2., 1.], &[1., 2., 3.]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn metric_on_a_resample_counts_repeats() {
        let e = mean(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(e.metric(), 0.75);
        assert_eq!(e.metric_on(&[1, 1, 0]), 1.0 / 3.0);
        let j = ExampleScores::concat(&[mean(&[1.0]), mean(&[0.0, 0.0])]).unwrap();
        assert_eq!(j, mean(&[1.0, 0.0, 0.0]));
        let s = ExampleScores::Spearman {
            pred: vec![0.1],
            gold: vec![1.0],
        };
        assert!(ExampleScores::concat(&[mean(&[1.0]), s]).is_err());
    }

    /// A distilled student right on 60 % of 1000 examples where its twin is right on 50 % (the same 500 plus
    /// 100 more): the gain 0.1 has a binomial-like spread, sqrt(0.1 * 0.9 / 1000) = 0.0095 for the paired
    /// difference of 1000 examples, so the interval is about 0.1 +- 0.019 and excludes 0.
    #[test]
    fn a_clear_gain_is_beyond_noise_and_its_interval_has_the_binomial_width() {
        let d: Vec<f64> = (0..1000).map(|i| (i < 600) as u8 as f64).collect();
        let s: Vec<f64> = (0..1000).map(|i| (i < 500) as u8 as f64).collect();
        let g =
            paired_bootstrap(&[mean(&d), mean(&d)], &[mean(&s), mean(&s)], true, 2000, 7).unwrap();
        assert!(g.beyond_noise(), "{g:?}");
        let half = 1.96 * (0.1f64 * 0.9 / 1000.0).sqrt();
        assert!((g.lo - (0.1 - half)).abs() < 0.004, "{g:?}");
        assert!((g.hi - (0.1 + half)).abs() < 0.004, "{g:?}");
        // lower is better: the same numbers are a loss
        let g = paired_bootstrap(&[mean(&d)], &[mean(&s)], false, 500, 7).unwrap();
        assert!(g.hi < 0.0, "{g:?}");
    }

    /// Twins that disagree on 20 of 1000 examples, 10 each way: no gain, and the interval straddles 0.
    /// Seeds that disagree with each other widen it: seed 0 gains 0.02, seed 1 loses 0.02.
    #[test]
    fn no_gain_or_a_seed_dependent_one_is_within_noise() {
        let s: Vec<f64> = (0..1000).map(|i| (i % 2) as f64).collect();
        let mut d = s.clone();
        for v in d.iter_mut().take(20) {
            *v = 1.0 - *v;
        }
        let g = paired_bootstrap(&[mean(&d)], &[mean(&s)], true, 2000, 1).unwrap();
        assert!(!g.beyond_noise() && g.lo < 0.0 && g.hi > 0.0, "{g:?}");
        let up: Vec<f64> = (0..1000).map(|i| if i < 40 { 1.0 } else { s[i] }).collect();
        let down: Vec<f64> = (0..1000).map(|i| if i < 40 { 0.0 } else { s[i] }).collect();
        let g = paired_bootstrap(
            &[mean(&up), mean(&down)],
            &[mean(&s), mean(&s)],
            true,
            2000,
            1,
        )
        .unwrap();
        assert!(!g.beyond_noise(), "{g:?}");
    }

    /// A Spearman metric is recomputed on each resample: a student whose scores follow the gold ones beats a
    /// twin whose scores are noise.
    #[test]
    fn a_spearman_gain_is_resampled_through_the_correlation() {
        let gold: Vec<f64> = (0..200).map(|i| (i % 50) as f64 / 10.0).collect();
        let good: Vec<f64> = gold
            .iter()
            .enumerate()
            .map(|(i, g)| g + (i % 7) as f64 * 0.1)
            .collect();
        let noise: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64).collect();
        let e = |p: &[f64]| ExampleScores::Spearman {
            pred: p.to_vec(),
            gold: gold.clone(),
        };
        let g = paired_bootstrap(&[e(&good)], &[e(&noise)], true, 300, 3).unwrap();
        let point = e(&good).metric() - e(&noise).metric();
        assert!(
            g.beyond_noise() && g.lo < point && point < g.hi,
            "{g:?} {point}"
        );
        assert!(paired_bootstrap(&[e(&good)], &[mean(&[1.0])], true, 10, 3).is_err());
    }
}
