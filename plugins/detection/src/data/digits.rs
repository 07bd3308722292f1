//! "Digits on canvas": a detection set built from MNIST, small enough to train detectors from scratch on
//! two CPU cores.
//!
//! Each grey canvas gets 1..=`max_digits` MNIST digits, each cropped to its ink and resized so that its
//! height is drawn from `[min_scale, max_scale]` pixels (capped at 90% of the canvas), placed where at most
//! `max_overlap` of the smaller of its box and every earlier box is covered (so partial overlaps happen, but
//! no digit hides under another), drawn with a random
//! brightness over a cluttered background: a random grey level, pixel noise, and unannotated fragments of
//! other digits and line strokes. The box is the pasted digit's extent; the category is the digit (ids 1..=10,
//! names "0".."9"). Training canvases use MNIST's training digits, test canvases its test digits.
//!
//! Everything is a function of the [`DigitsConfig`] (seed included): [`ensure_generated`] writes the set
//! as COCO JSON + PNG under `<data dir>/digits-canvas/<fingerprint of the config>/` once (into a temporary
//! folder renamed into place, so concurrent runs cannot see half a set) and reuses it afterwards.

use std::path::{Path, PathBuf};

use distill_core::{Error, Result, Rng};
use image::{imageops::FilterType, GrayImage, Luma};
use serde::{Deserialize, Serialize};

use super::coco::{CocoAnnotation, CocoCategory, CocoFile, CocoImage};

/// Bumped whenever the generator's output for a given config changes (a new folder is generated).
pub const GENERATOR_VERSION: u32 = 2;

/// Generator settings (the recipe's `[data.options]` for `dataset = "digits-canvas"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DigitsConfig {
    /// Generator seed.
    pub seed: u64,
    /// Canvas side in pixels.
    pub canvas: usize,
    /// Training canvases.
    pub train: usize,
    /// Test canvases.
    pub test: usize,
    /// Most digits per canvas (at least one).
    pub max_digits: usize,
    /// Smallest digit height (pixels).
    pub min_scale: f64,
    /// Largest digit height (pixels; capped at 90% of the canvas).
    pub max_scale: f64,
    /// Largest overlap between two digits' boxes, as intersection over the smaller box's area (so no digit
    /// is hidden under a bigger one).
    pub max_overlap: f64,
    /// Unannotated clutter fragments per canvas (at most).
    pub clutter: usize,
}

impl Default for DigitsConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            canvas: 64,
            train: 2000,
            test: 500,
            max_digits: 4,
            min_scale: 14.0,
            max_scale: 56.0,
            max_overlap: 0.3,
            clutter: 4,
        }
    }
}

impl DigitsConfig {
    /// Checks the numbers, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, msg: String| Err(Error::config(format!("data.options.{k}"), msg));
        if self.canvas < 16 {
            return bad(
                "canvas",
                format!("must be >= 16 pixels, got {}", self.canvas),
            );
        }
        if self.train == 0 || self.test == 0 {
            return bad("train", "train and test must both be > 0".into());
        }
        if self.max_digits == 0 {
            return bad("max_digits", "must be >= 1".into());
        }
        if !(self.min_scale >= 4.0 && self.min_scale <= self.max_scale) {
            return bad(
                "min_scale",
                format!(
                    "must be >= 4 and <= max_scale, got {} and {}",
                    self.min_scale, self.max_scale
                ),
            );
        }
        if self.min_scale > 0.9 * self.canvas as f64 {
            return bad(
                "min_scale",
                format!(
                    "{} does not fit a {}-pixel canvas (at most 90% of it)",
                    self.min_scale, self.canvas
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.max_overlap) {
            return bad(
                "max_overlap",
                format!("must be in [0, 1], got {}", self.max_overlap),
            );
        }
        Ok(())
    }

    /// A short, stable fingerprint of the settings and [`GENERATOR_VERSION`] (FNV-1a of their JSON), naming
    /// the generated folder.
    pub fn fingerprint(&self) -> String {
        let json = format!(
            "v{GENERATOR_VERSION}:{}",
            serde_json::to_string(self).expect("config serialises")
        );
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in json.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Source digits: `n` grey `rows × cols` images with labels 0..=9.
#[derive(Debug, Clone)]
pub struct DigitSource {
    /// `n · rows · cols` bytes.
    pub pixels: Vec<u8>,
    /// Labels 0..=9.
    pub labels: Vec<u32>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl DigitSource {
    fn len(&self) -> usize {
        self.labels.len()
    }
    /// Digit `i` cropped to its ink (pixels > 30); `None` for a blank image.
    fn ink(&self, i: usize) -> Option<GrayImage> {
        let (r, c) = (self.rows, self.cols);
        let px = &self.pixels[i * r * c..(i + 1) * r * c];
        let (mut x0, mut y0, mut x1, mut y1) = (c, r, 0, 0);
        for y in 0..r {
            for x in 0..c {
                if px[y * c + x] > 30 {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
        }
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        Some(GrayImage::from_fn(
            (x1 - x0) as u32,
            (y1 - y0) as u32,
            |x, y| Luma([px[(y as usize + y0) * c + x as usize + x0]]),
        ))
    }
}

/// Intersection of two `[x, y, w, h]` boxes over the smaller one's area.
pub fn overlap_of_smaller(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let h = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    w * h / (a[2] * a[3]).min(b[2] * b[3])
}

/// One canvas: grey pixels and `(box, digit)` pairs.
pub fn make_canvas(
    src: &DigitSource,
    cfg: &DigitsConfig,
    rng: &mut Rng,
) -> (GrayImage, Vec<([f64; 4], u32)>) {
    let s = cfg.canvas;
    let bg = 10.0 + 70.0 * rng.uniform();
    let noise = 4.0 + 16.0 * rng.uniform();
    let mut canvas: Vec<f64> = (0..s * s).map(|_| bg + noise * rng.normal()).collect();
    let paste = |canvas: &mut Vec<f64>, g: &GrayImage, x0: i64, y0: i64, gain: f64| {
        for (x, y, p) in g.enumerate_pixels() {
            let (cx, cy) = (x0 + x as i64, y0 + y as i64);
            if cx >= 0 && cy >= 0 && (cx as usize) < s && (cy as usize) < s {
                let v = &mut canvas[cy as usize * s + cx as usize];
                *v = v.max(p.0[0] as f64 * gain);
            }
        }
    };
    // clutter: fragments of random digits and straight strokes, drawn first and never annotated
    let n_clutter = rng.below(cfg.clutter + 1);
    for _ in 0..n_clutter {
        if rng.uniform() < 0.6 {
            if let Some(g) = src.ink(rng.below(src.len())) {
                let (w, h) = (g.width(), g.height());
                let fw = (w / 3).max(2) + rng.below((w / 3).max(1) as usize) as u32;
                let fh = (h / 3).max(2) + rng.below((h / 3).max(1) as usize) as u32;
                let fx = rng.below((w - fw.min(w)) as usize + 1) as u32;
                let fy = rng.below((h - fh.min(h)) as usize + 1) as u32;
                let frag = image::imageops::crop_imm(&g, fx, fy, fw.min(w), fh.min(h)).to_image();
                let k = 0.5 + rng.uniform() * 1.5;
                let frag = image::imageops::resize(
                    &frag,
                    ((frag.width() as f64 * k).round() as u32).max(1),
                    ((frag.height() as f64 * k).round() as u32).max(1),
                    FilterType::Triangle,
                );
                let x0 = rng.below(s) as i64 - frag.width() as i64 / 2;
                let y0 = rng.below(s) as i64 - frag.height() as i64 / 2;
                paste(&mut canvas, &frag, x0, y0, 0.4 + 0.5 * rng.uniform());
            }
        } else {
            let (mut x, mut y) = (rng.uniform() * s as f64, rng.uniform() * s as f64);
            let a = rng.uniform() * std::f64::consts::TAU;
            let len = 4.0 + rng.uniform() * s as f64 / 3.0;
            let v = 90.0 + 120.0 * rng.uniform();
            for _ in 0..len as usize {
                if x >= 0.0 && y >= 0.0 && (x as usize) < s && (y as usize) < s {
                    let p = &mut canvas[y as usize * s + x as usize];
                    *p = p.max(v);
                }
                x += a.cos();
                y += a.sin();
            }
        }
    }
    let n_digits = 1 + rng.below(cfg.max_digits);
    let max_h = cfg.max_scale.min(0.9 * s as f64);
    let mut boxes: Vec<([f64; 4], u32)> = Vec::new();
    for _ in 0..n_digits {
        let i = rng.below(src.len());
        let Some(g) = src.ink(i) else { continue };
        let h = cfg.min_scale + (max_h - cfg.min_scale) * rng.uniform();
        let hpx = (h.round() as u32).max(1);
        let wpx =
            ((g.width() as f64 * hpx as f64 / g.height() as f64).round() as u32).clamp(1, s as u32);
        // up to 20 tries for a place that overlaps earlier digits by at most max_overlap
        let mut placed = None;
        for _ in 0..20 {
            let x = rng.below(s - wpx as usize + 1) as f64;
            let y = rng.below(s - hpx as usize + 1) as f64;
            let b = [x, y, wpx as f64, hpx as f64];
            if boxes
                .iter()
                .all(|(o, _)| overlap_of_smaller(o, &b) <= cfg.max_overlap)
            {
                placed = Some(b);
                break;
            }
        }
        let Some(b) = placed else { continue };
        let g = image::imageops::resize(&g, wpx, hpx, FilterType::Triangle);
        let gain = 0.75 + 0.25 * rng.uniform();
        paste(&mut canvas, &g, b[0] as i64, b[1] as i64, gain);
        boxes.push((b, src.labels[i]));
    }
    let img = GrayImage::from_fn(s as u32, s as u32, |x, y| {
        Luma([canvas[y as usize * s + x as usize]
            .round()
            .clamp(0.0, 255.0) as u8])
    });
    (img, boxes)
}

/// The ten digit categories (ids 1..=10, names "0".."9").
pub fn categories() -> Vec<CocoCategory> {
    (0..10)
        .map(|d| CocoCategory {
            id: d + 1,
            name: d.to_string(),
        })
        .collect()
}

/// Writes `n` canvases into `dir/images/<split>/` and returns their COCO file (file names relative to `dir`).
pub fn write_split(
    src: &DigitSource,
    cfg: &DigitsConfig,
    split: &str,
    n: usize,
    dir: &Path,
) -> Result<CocoFile> {
    let img_dir = dir.join("images").join(split);
    std::fs::create_dir_all(&img_dir).map_err(|e| Error::io(&img_dir, e))?;
    let mut images = Vec::with_capacity(n);
    let mut annotations = Vec::new();
    for k in 0..n {
        let mut rng = Rng::derive(cfg.seed, &[&"digits-canvas", &split, &k]);
        let (img, boxes) = make_canvas(src, cfg, &mut rng);
        let name = format!("images/{split}/{:06}.png", k + 1);
        let path = dir.join(&name);
        img.save(&path)
            .map_err(|e| Error::data(&path, format!("cannot write PNG: {e}")))?;
        let id = k as u64 + 1;
        images.push(CocoImage {
            id,
            file_name: name,
            width: cfg.canvas as u32,
            height: cfg.canvas as u32,
        });
        for (b, d) in boxes {
            annotations.push(CocoAnnotation {
                id: annotations.len() as u64 + 1,
                image_id: id,
                category_id: d as u64 + 1,
                bbox: b,
                area: b[2] * b[3],
                iscrowd: 0,
            });
        }
    }
    Ok(CocoFile {
        images,
        annotations,
        categories: categories(),
    })
}

/// Writes the whole set (train and test) into `dir`: `images/{train,test}/*.png`,
/// `annotations/instances_{train,test}.json`, `config.json`.
pub fn write_set(
    train: &DigitSource,
    test: &DigitSource,
    cfg: &DigitsConfig,
    dir: &Path,
) -> Result<()> {
    cfg.validate()?;
    let ann = dir.join("annotations");
    std::fs::create_dir_all(&ann).map_err(|e| Error::io(&ann, e))?;
    for (split, src, n) in [("train", train, cfg.train), ("test", test, cfg.test)] {
        let coco = write_split(src, cfg, split, n, dir)?;
        let p = ann.join(format!("instances_{split}.json"));
        std::fs::write(&p, coco.to_json()).map_err(|e| Error::io(&p, e))?;
    }
    let p = dir.join("config.json");
    std::fs::write(
        &p,
        serde_json::to_string_pretty(cfg).expect("config serialises"),
    )
    .map_err(|e| Error::io(&p, e))
}

/// The folder of the set `cfg` under `data_dir`, generating it from `<data_dir>/mnist` first if it is not
/// there yet.
pub fn ensure_generated(data_dir: &Path, cfg: &DigitsConfig) -> Result<PathBuf> {
    cfg.validate()?;
    let dir = data_dir.join("digits-canvas").join(cfg.fingerprint());
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let mnist = data_dir.join("mnist");
    let load = |train| -> Result<DigitSource> {
        let set = distill_data::mnist::load_mnist(&mnist, train)?;
        Ok(DigitSource {
            pixels: set.pixels,
            labels: set.labels,
            rows: set.rows,
            cols: set.cols,
        })
    };
    let train = load(true)?;
    let test = load(false)?;
    let parent = data_dir.join("digits-canvas");
    std::fs::create_dir_all(&parent).map_err(|e| {
        Error::io(
            &parent,
            std::io::Error::new(
                e.kind(),
                format!("{e} (the generated set is written here; pass a writable --data-dir)"),
            ),
        )
    })?;
    let tmp = parent.join(format!(".tmp-{}-{}", cfg.fingerprint(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_set(&train, &test, cfg, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // another process finished the same set first
        if !dir.join("config.json").is_file() {
            return Err(Error::io(&dir, e));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::coco::load_coco;

    /// Ten 28x28 glyphs: digit d is a bright (255) block of 10 + d columns by 20 rows.
    fn glyphs() -> DigitSource {
        let mut pixels = vec![0u8; 10 * 28 * 28];
        for d in 0..10 {
            for y in 4..24 {
                for x in 2..12 + d {
                    pixels[d * 784 + y * 28 + x] = 255;
                }
            }
        }
        DigitSource {
            pixels,
            labels: (0..10).collect(),
            rows: 28,
            cols: 28,
        }
    }

    fn small() -> DigitsConfig {
        DigitsConfig {
            train: 12,
            test: 6,
            ..DigitsConfig::default()
        }
    }

    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["annotations", "images/train", "images/test"] {
            let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                let b = std::fs::read(&p).unwrap();
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), b));
            }
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let src = glyphs();
        write_set(&src, &src, &small(), a.path()).unwrap();
        write_set(&src, &src, &small(), b.path()).unwrap();
        let other = DigitsConfig { seed: 1, ..small() };
        write_set(&src, &src, &other, c.path()).unwrap();
        let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
        assert_eq!(fa.len(), 2 + 12 + 6);
        assert!(fa == fb, "same config, different files");
        assert!(fa != fc, "another seed gave the same files");
        assert_ne!(small().fingerprint(), other.fingerprint());
    }

    #[test]
    fn boxes_are_valid_and_tight() {
        let dir = tempfile::tempdir().unwrap();
        let src = glyphs();
        let cfg = DigitsConfig {
            train: 40,
            test: 1,
            ..DigitsConfig::default()
        };
        write_set(&src, &src, &cfg, dir.path()).unwrap();
        // load_coco checks ids, categories and that every box lies inside its image
        let coco = load_coco(&dir.path().join("annotations/instances_train.json")).unwrap();
        assert_eq!(coco.images.len(), 40);
        let per_image = coco.by_image();
        let mut multi = 0;
        let mut overlapping = 0;
        for im in &coco.images {
            let anns = per_image.get(&im.id).cloned().unwrap_or_default();
            assert!(!anns.is_empty() && anns.len() <= cfg.max_digits);
            multi += usize::from(anns.len() > 1);
            let img = image::open(dir.path().join(&im.file_name))
                .unwrap()
                .to_luma8();
            for (i, a) in anns.iter().enumerate() {
                let [x, y, w, h] = a.bbox;
                assert!((14.0..=0.9 * 64.0 + 0.5).contains(&h), "height {h}");
                // glyph d has width (10 + d) / 20 of its height
                let d = (a.category_id - 1) as f64;
                assert!(
                    (w - h * (10.0 + d) / 20.0).abs() <= 1.0,
                    "{w} x {h} for digit {d}"
                );
                // the glyph is drawn at >= 0.75 of 255 inside its box (centre pixel)
                let c = img.get_pixel((x + w / 2.0) as u32, (y + h / 2.0) as u32).0[0];
                assert!(c >= 190, "centre of box {:?} is {c}", a.bbox);
                for b in &anns[..i] {
                    let o = overlap_of_smaller(&a.bbox, &b.bbox);
                    assert!(o <= cfg.max_overlap + 1e-9);
                    assert!(crate::metrics::box_iou(&a.bbox, &b.bbox, false) <= o);
                    overlapping += usize::from(o > 0.0);
                }
            }
        }
        assert!(multi > 20, "only {multi} canvases with several digits");
        assert!(overlapping > 0, "no partial overlaps");
    }

    #[test]
    fn bad_settings_name_the_key() {
        let e = DigitsConfig {
            min_scale: 60.0,
            ..DigitsConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("data.options.min_scale"), "{e}");
    }
}
