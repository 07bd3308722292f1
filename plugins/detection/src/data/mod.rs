//! Detection data in memory: images decoded once (the `image` crate), letterboxed to a square input, with
//! their boxes; augmentation (horizontal flip, scale jitter) and CenterNet training targets per batch.
//!
//! Boxes are `[x, y, w, h]` in pixels. A [`DetSet`] keeps each image's original ground truth (for COCO
//! evaluation in the original pixel space) and the letterboxed boxes (for training targets).
//!
//! The readers below it: [`coco`] (COCO detection JSON) and [`digits`] (the "digits on canvas" set,
//! generated from MNIST as COCO JSON + PNG).

pub mod coco;
pub mod digits;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use distill_core::{Error, Result, Rng};
use image::imageops::FilterType;

use crate::metrics::GroundTruth;
use coco::{load_coco, CocoFile};

/// The grey that fills letterbox borders and the area a zoom-out uncovers.
pub const PAD_VALUE: u8 = 114;

/// One letterboxed image.
#[derive(Debug, Clone)]
pub struct DetImage {
    /// COCO image id.
    pub id: u64,
    /// `[C, S, S]` bytes.
    pub pixels: Vec<u8>,
    /// Boxes in letterboxed pixels with their class index (0-based, in sorted category-id order).
    pub boxes: Vec<([f32; 4], usize)>,
    /// Letterbox scale per axis (letterboxed = original · scale + pad).
    pub scale: (f64, f64),
    /// Horizontal and vertical padding (pixels).
    pub pad: (f64, f64),
    /// Original width and height.
    pub orig_size: (u32, u32),
}

/// A split: letterboxed images, their ground truth in original pixels, the category ids.
#[derive(Debug, Clone)]
pub struct DetSet {
    /// Images, in the annotation file's order.
    pub images: Vec<DetImage>,
    /// Ground truth in original pixels (for COCO evaluation).
    pub ground_truth: Vec<GroundTruth>,
    /// Category ids; a class index is a position in this list.
    pub category_ids: Vec<u64>,
    /// Input side S.
    pub size: usize,
    /// Channels (1 grey or 3 RGB).
    pub channels: usize,
}

impl DetSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }
    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
    /// The first `n` images (and their ground truth).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.images.len() {
            return;
        }
        self.images.truncate(n);
        let keep: std::collections::BTreeSet<u64> = self.images.iter().map(|i| i.id).collect();
        self.ground_truth.retain(|g| keep.contains(&g.image_id));
    }
    /// Moves the images from `at` on (and their ground truth) into a new set.
    pub fn split_off(&mut self, at: usize) -> DetSet {
        let images = self.images.split_off(at.min(self.images.len()));
        let moved: std::collections::BTreeSet<u64> = images.iter().map(|i| i.id).collect();
        let (gt_moved, gt_kept) = self
            .ground_truth
            .drain(..)
            .partition(|g| moved.contains(&g.image_id));
        self.ground_truth = gt_kept;
        DetSet {
            images,
            ground_truth: gt_moved,
            category_ids: self.category_ids.clone(),
            size: self.size,
            channels: self.channels,
        }
    }
    /// Image ids.
    pub fn image_ids(&self) -> Vec<u64> {
        self.images.iter().map(|i| i.id).collect()
    }
}

/// Letterboxes `img` (any `image` crate image) to `size × size` with `channels` channels: scaled so the
/// longer side fits, centred, borders [`PAD_VALUE`]. Returns `[C, S, S]` bytes, the scale per axis (the
/// resized size is rounded to whole pixels) and the padding.
pub fn letterbox(
    img: &image::DynamicImage,
    size: usize,
    channels: usize,
) -> (Vec<u8>, (f64, f64), (f64, f64)) {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = size as f64 / w.max(h);
    let nw = ((w * scale).round() as u32).clamp(1, size as u32);
    let nh = ((h * scale).round() as u32).clamp(1, size as u32);
    let px = (size as u32 - nw) / 2;
    let py = (size as u32 - nh) / 2;
    let mut out = vec![PAD_VALUE; channels * size * size];
    let plane = size * size;
    if channels == 1 {
        let g = image::imageops::resize(&img.to_luma8(), nw, nh, FilterType::Triangle);
        for (x, y, p) in g.enumerate_pixels() {
            out[(y + py) as usize * size + (x + px) as usize] = p.0[0];
        }
    } else {
        let g = image::imageops::resize(&img.to_rgb8(), nw, nh, FilterType::Triangle);
        for (x, y, p) in g.enumerate_pixels() {
            let o = (y + py) as usize * size + (x + px) as usize;
            for c in 0..3 {
                out[c * plane + o] = p.0[c];
            }
        }
    }
    (out, (nw as f64 / w, nh as f64 / h), (px as f64, py as f64))
}

/// Loads a COCO split: the annotation file and images under `image_root` (`file_name` is relative to it),
/// letterboxed to `size`. `category_ids` fixes the class order (else the file's categories, sorted); a
/// corrupt or missing image is an error naming the file and its image id.
pub fn load_coco_split(
    annotations: &Path,
    image_root: &Path,
    size: usize,
    channels: usize,
    limit: Option<usize>,
    category_ids: Option<&[u64]>,
) -> Result<DetSet> {
    let coco = load_coco(annotations)?;
    from_coco(
        &coco,
        annotations,
        image_root,
        size,
        channels,
        limit,
        category_ids,
    )
}

/// [`load_coco_split`] on a parsed file.
pub fn from_coco(
    coco: &CocoFile,
    annotations: &Path,
    image_root: &Path,
    size: usize,
    channels: usize,
    limit: Option<usize>,
    category_ids: Option<&[u64]>,
) -> Result<DetSet> {
    if coco.images.is_empty() {
        return Err(Error::data(annotations, "has no images"));
    }
    let cats: Vec<u64> = match category_ids {
        Some(c) => c.to_vec(),
        None => coco.category_ids(),
    };
    let by_image = coco.by_image();
    let n = limit.unwrap_or(usize::MAX).min(coco.images.len());
    let mut images = Vec::with_capacity(n);
    let mut ground_truth = Vec::new();
    for im in &coco.images[..n] {
        let path: PathBuf = image_root.join(&im.file_name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let img = image::load_from_memory(&bytes).map_err(|e| {
            Error::data(
                &path,
                format!(
                    "cannot decode image id {} ({} in {}): {e}",
                    im.id,
                    im.file_name,
                    annotations.display()
                ),
            )
        })?;
        if (img.width(), img.height()) != (im.width, im.height) {
            return Err(Error::data(
                &path,
                format!(
                    "is {}x{} pixels but {} says image id {} is {}x{}",
                    img.width(),
                    img.height(),
                    annotations.display(),
                    im.id,
                    im.width,
                    im.height
                ),
            ));
        }
        let (pixels, scale, pad) = letterbox(&img, size, channels);
        let mut boxes = Vec::new();
        for a in by_image.get(&im.id).map(|v| v.as_slice()).unwrap_or(&[]) {
            let cls = cats.iter().position(|&c| c == a.category_id).ok_or_else(|| {
                Error::data(
                    annotations,
                    format!(
                        "annotation id {}: category_id {} is not one of the training categories {cats:?}",
                        a.id, a.category_id
                    ),
                )
            })?;
            ground_truth.push(GroundTruth {
                image_id: a.image_id,
                category_id: a.category_id,
                bbox: a.bbox,
                area: a.area,
                iscrowd: a.iscrowd != 0,
            });
            if a.iscrowd != 0 {
                continue;
            }
            let [x, y, w, h] = a.bbox;
            boxes.push((
                [
                    (x * scale.0 + pad.0) as f32,
                    (y * scale.1 + pad.1) as f32,
                    (w * scale.0) as f32,
                    (h * scale.1) as f32,
                ],
                cls,
            ));
        }
        images.push(DetImage {
            id: im.id,
            pixels,
            boxes,
            scale,
            pad,
            orig_size: (im.width, im.height),
        });
    }
    Ok(DetSet {
        images,
        ground_truth,
        category_ids: cats,
        size,
        channels,
    })
}

/// Training augmentation: horizontal flip with probability ½ and/or a random zoom about the centre.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augment {
    /// Flip left-right with probability ½.
    pub flip: bool,
    /// Zoom by a factor drawn uniformly from `[1 - j, 1 + j]` (0: off).
    pub scale_jitter: f64,
}

impl Augment {
    /// Parses `flip`, `scale0.3` or both joined by `+` (`flip+scale0.3`).
    pub fn parse(s: &str) -> Result<Self> {
        let mut a = Augment::default();
        for part in s.split('+') {
            if part == "flip" {
                a.flip = true;
            } else if let Some(v) = part.strip_prefix("scale") {
                let j: f64 = v.parse().map_err(|_| bad_augment(s))?;
                if !(j > 0.0 && j < 1.0) {
                    return Err(Error::msg(format!(
                        "augmentation `{s}`: the scale jitter must be in (0, 1), got {j}"
                    )));
                }
                a.scale_jitter = j;
            } else {
                return Err(bad_augment(s));
            }
        }
        Ok(a)
    }

    /// Applies the augmentation to one `[C, S, S]` image and its boxes.
    pub fn apply(
        &self,
        pixels: &mut [u8],
        boxes: &mut Vec<([f32; 4], usize)>,
        size: usize,
        channels: usize,
        rng: &mut Rng,
    ) {
        if self.flip && rng.uniform() < 0.5 {
            hflip(pixels, boxes, size, channels);
        }
        if self.scale_jitter > 0.0 {
            let f = 1.0 + self.scale_jitter * (2.0 * rng.uniform() - 1.0);
            zoom(pixels, boxes, size, channels, f as f32);
        }
    }
}

fn bad_augment(s: &str) -> Error {
    Error::Unknown {
        what: "augmentation",
        name: s.to_string(),
        known: "flip, scaleJ (J in (0, 1), e.g. scale0.3), or both joined by `+`".into(),
    }
}

/// Mirrors an image and its boxes left-right.
pub fn hflip(pixels: &mut [u8], boxes: &mut [([f32; 4], usize)], size: usize, channels: usize) {
    for row in pixels.chunks_mut(size).take(channels * size) {
        row.reverse();
    }
    for (b, _) in boxes.iter_mut() {
        b[0] = size as f32 - b[0] - b[2];
    }
}

/// Zooms an image by `f` about its centre (nearest neighbour; uncovered area [`PAD_VALUE`]); boxes are
/// scaled, clipped to the canvas, and dropped when less than a third of them (or under 2 px) remains.
pub fn zoom(
    pixels: &mut [u8],
    boxes: &mut Vec<([f32; 4], usize)>,
    size: usize,
    channels: usize,
    f: f32,
) {
    let c = size as f32 / 2.0;
    let src = pixels.to_vec();
    let plane = size * size;
    let map: Vec<Option<usize>> = (0..size)
        .map(|i| {
            let s = ((i as f32 + 0.5 - c) / f + c).floor();
            (s >= 0.0 && s < size as f32).then_some(s as usize)
        })
        .collect();
    for ch in 0..channels {
        for y in 0..size {
            for x in 0..size {
                pixels[ch * plane + y * size + x] = match (map[y], map[x]) {
                    (Some(sy), Some(sx)) => src[ch * plane + sy * size + sx],
                    _ => PAD_VALUE,
                };
            }
        }
    }
    let s = size as f32;
    boxes.retain_mut(|(b, _)| {
        let x0 = ((b[0] - c) * f + c).clamp(0.0, s);
        let y0 = ((b[1] - c) * f + c).clamp(0.0, s);
        let x1 = ((b[0] + b[2] - c) * f + c).clamp(0.0, s);
        let y1 = ((b[1] + b[3] - c) * f + c).clamp(0.0, s);
        let full = b[2] * b[3] * f * f;
        let (w, h) = (x1 - x0, y1 - y0);
        *b = [x0, y0, w, h];
        w >= 2.0 && h >= 2.0 && w * h >= full / 3.0
    });
}

/// CenterNet's Gaussian radius for a `h × w` box (output-grid units): the largest corner shift that keeps
/// IoU ≥ `min_overlap` in the worst of three cases (Law & Deng, CornerNet; the same quadratic bounds).
pub fn gaussian_radius(h: f32, w: f32, min_overlap: f32) -> f32 {
    let (a1, b1, c1) = (
        1.0,
        h + w,
        w * h * (1.0 - min_overlap) / (1.0 + min_overlap),
    );
    let r1 = (b1 + (b1 * b1 - 4.0 * a1 * c1).max(0.0).sqrt()) / 2.0;
    let (a2, b2, c2) = (4.0, 2.0 * (h + w), (1.0 - min_overlap) * w * h);
    let r2 = (b2 + (b2 * b2 - 4.0 * a2 * c2).max(0.0).sqrt()) / 2.0;
    let (a3, b3, c3) = (
        4.0 * min_overlap,
        -2.0 * min_overlap * (h + w),
        (min_overlap - 1.0) * w * h,
    );
    let r3 = (b3 + (b3 * b3 - 4.0 * a3 * c3).max(0.0).sqrt()) / 2.0;
    r1.min(r2).min(r3)
}

/// Channels of the target tensor after the `C` heatmap channels.
pub mod target {
    /// Box width, height (output-grid units) at centre cells.
    pub const SIZE: usize = 0;
    /// Sub-cell offset of the centre (x, y).
    pub const OFFSET: usize = 2;
    /// 1 at each object's centre cell.
    pub const CENTRE: usize = 4;
    /// 1 at every cell whose centre lies inside a box (the near-object region of feature imitation).
    pub const REGION: usize = 5;
    /// Number of channels after the heatmap.
    pub const EXTRA: usize = 6;
}

/// Builds `[C + 6, S/R, S/R]` CenterNet targets for one image's boxes (letterboxed pixels): per-class
/// Gaussian heatmaps (peak 1 at each centre cell, σ = (2r+1)/6 with [`gaussian_radius`] at IoU 0.7), then
/// the channels of [`target`].
pub fn centernet_targets(
    boxes: &[([f32; 4], usize)],
    classes: usize,
    out: usize,
    stride: usize,
) -> Vec<f32> {
    let plane = out * out;
    let mut t = vec![0f32; (classes + target::EXTRA) * plane];
    let r = stride as f32;
    for &(b, cls) in boxes {
        let (w, h) = (b[2] / r, b[3] / r);
        if w <= 0.0 || h <= 0.0 {
            continue;
        }
        let cx = (b[0] + b[2] / 2.0) / r;
        let cy = (b[1] + b[3] / 2.0) / r;
        let ix = (cx.floor() as isize).clamp(0, out as isize - 1) as usize;
        let iy = (cy.floor() as isize).clamp(0, out as isize - 1) as usize;
        let radius = gaussian_radius(h.ceil(), w.ceil(), 0.7).floor().max(0.0) as isize;
        let sigma = (2 * radius + 1) as f32 / 6.0;
        let hm = &mut t[cls * plane..(cls + 1) * plane];
        for dy in -radius..=radius {
            for dx in -radius..=radius {
                let (x, y) = (ix as isize + dx, iy as isize + dy);
                if x < 0 || y < 0 || x >= out as isize || y >= out as isize {
                    continue;
                }
                let g = (-((dx * dx + dy * dy) as f32) / (2.0 * sigma * sigma)).exp();
                let v = &mut hm[y as usize * out + x as usize];
                *v = v.max(g);
            }
        }
        let at = iy * out + ix;
        let base = classes * plane;
        t[base + target::SIZE * plane + at] = w;
        t[base + (target::SIZE + 1) * plane + at] = h;
        t[base + target::OFFSET * plane + at] = cx - ix as f32;
        t[base + (target::OFFSET + 1) * plane + at] = cy - iy as f32;
        t[base + target::CENTRE * plane + at] = 1.0;
        let region = &mut t[base + target::REGION * plane..base + (target::REGION + 1) * plane];
        region[at] = 1.0;
        for y in 0..out {
            let yc = (y as f32 + 0.5) * r;
            if yc < b[1] || yc > b[1] + b[3] {
                continue;
            }
            for x in 0..out {
                let xc = (x as f32 + 0.5) * r;
                if xc >= b[0] && xc <= b[0] + b[2] {
                    region[y * out + x] = 1.0;
                }
            }
        }
    }
    t
}

/// Inputs `[B, C, S, S]` (bytes scaled to `(v/255 - 0.5) / 0.25`) and targets `[B, K + 6, S/R, S/R]` for the
/// images `indices` of `set`, augmented with `augment`.
pub fn make_batch(
    set: &DetSet,
    indices: &[usize],
    augment: Option<&Augment>,
    stride: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (s, c) = (set.size, set.channels);
    let out = s / stride;
    let k = set.category_ids.len();
    let mut x = Vec::with_capacity(indices.len() * c * s * s);
    let mut y = Vec::with_capacity(indices.len() * (k + target::EXTRA) * out * out);
    for &i in indices {
        let im = set.images.get(i).ok_or_else(|| {
            Error::msg(format!(
                "image index {i} is out of range ({} images)",
                set.len()
            ))
        })?;
        let (pixels, boxes) = match augment {
            Some(a) => {
                let (mut p, mut b) = (im.pixels.clone(), im.boxes.clone());
                a.apply(&mut p, &mut b, s, c, rng);
                (std::borrow::Cow::Owned(p), std::borrow::Cow::Owned(b))
            }
            None => (
                std::borrow::Cow::Borrowed(&im.pixels),
                std::borrow::Cow::Borrowed(&im.boxes),
            ),
        };
        x.extend(pixels.iter().map(|&v| (v as f32 / 255.0 - 0.5) / 0.25));
        y.extend(centernet_targets(&boxes, k, out, stride));
    }
    let b = indices.len();
    Ok((
        Tensor::from_vec(x, (b, c, s, s), device)?,
        Tensor::from_vec(y, (b, k + target::EXTRA, out, out), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_and_zoom_move_boxes_with_pixels() {
        // a 8x8 grey image with one bright 2x2 block at x 1..3, y 4..6
        let size = 8;
        let mut px = vec![0u8; 64];
        for y in 4..6 {
            for x in 1..3 {
                px[y * 8 + x] = 255;
            }
        }
        let mut boxes = vec![([1.0f32, 4.0, 2.0, 2.0], 0usize)];
        hflip(&mut px, &mut boxes, size, 1);
        assert_eq!(boxes[0].0, [5.0, 4.0, 2.0, 2.0]);
        assert_eq!(px[4 * 8 + 5], 255);
        assert_eq!(px[4 * 8 + 6], 255);
        assert_eq!(px[4 * 8 + 1], 0);
        // zoom 2x about the centre (4, 4): the block at x 5..7, y 4..6 goes to x 6..10 (clipped 6..8), y 4..8
        zoom(&mut px, &mut boxes, size, 1, 2.0);
        assert_eq!(boxes[0].0, [6.0, 4.0, 2.0, 4.0]);
        assert_eq!(px[5 * 8 + 6], 255);
        assert_eq!(px[3 * 8 + 6], 0);
        // zoom out: the uncovered border is PAD_VALUE
        let mut px = vec![0u8; 64];
        let mut none = Vec::new();
        zoom(&mut px, &mut none, size, 1, 0.5);
        assert_eq!(px[0], PAD_VALUE);
        assert_eq!(px[4 * 8 + 4], 0);
    }

    #[test]
    fn augment_names() {
        assert_eq!(
            Augment::parse("flip+scale0.25").unwrap(),
            Augment {
                flip: true,
                scale_jitter: 0.25
            }
        );
        assert!(Augment::parse("flop")
            .unwrap_err()
            .to_string()
            .contains("flop"));
        assert!(Augment::parse("scale1.5").is_err());
    }

    #[test]
    fn targets_peak_at_centres() {
        // one 16x8 box at (8, 8) in a 32-pixel image, stride 4: centre (16, 12) px = cell (4, 3), size 4x2
        let t = centernet_targets(&[([8.0, 8.0, 16.0, 8.0], 1)], 2, 8, 4);
        let plane = 64;
        assert_eq!(t[plane + 3 * 8 + 4], 1.0);
        assert!(t[..plane].iter().all(|&v| v == 0.0));
        let base = 2 * plane;
        assert_eq!(t[base + 3 * 8 + 4], 4.0);
        assert_eq!(t[base + plane + 3 * 8 + 4], 2.0);
        assert_eq!(t[base + 4 * plane + 3 * 8 + 4], 1.0);
        // region: cells with centres in x 8..24, y 8..16 → x cells 2..=5, y cells 2..=3
        let region: usize = t[base + 5 * plane..].iter().filter(|&&v| v == 1.0).count();
        assert_eq!(region, 8);
        // CenterNet's radius of a 10x10 box at IoU 0.7 (numpy of its gaussian_radius: min(19.07, 36.73, 2.733))
        let r = gaussian_radius(10.0, 10.0, 0.7);
        assert!((r - 2.7330).abs() < 1e-3, "{r}");
    }
}
