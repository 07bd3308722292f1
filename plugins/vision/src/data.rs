//! Image data: loaders (MNIST IDX, CIFAR-10/100 binary, folders of images), the in-memory [`ImageSet`],
//! augmentation ([`Augment`]) and batch assembly into normalised tensors ([`ImageSet::batch`]).
//!
//! Images are kept as `u8` in `C, H, W` order; a batch becomes `[B, C, H, W]` f32 with
//! `(x / 255 - mean[c]) / std[c]` ([`Normalize`]) and `[B]` u32 labels.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use distill_core::{Error, Result, Rng};
use distill_data::files::{check_dir, fetch_hint};
use distill_data::mnist;
use rayon::prelude::*;

/// Which part of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split.
    Train,
    /// The test split.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A labelled set of same-sized images held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// All pixels, `N·C·H·W` bytes, each image in `C, H, W` order (0 = black / background).
    pub images: Vec<u8>,
    /// One class index per image, each `< classes.len()`.
    pub labels: Vec<u32>,
    /// Channels per image (1 grey, 3 RGB).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// `[C, H, W]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Bytes per image, `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (`C, H, W` order). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// How many images each class has.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The images at `indices` (in that order, repeats allowed), with the same classes.
    /// Panics if an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            assert!(
                i < self.len(),
                "subset index {i} out of range for {} images",
                self.len()
            );
            images.extend_from_slice(self.image(i));
        }
        ImageSet {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes.clone(),
        }
    }

    /// The images at `indices` as a normalised `[B, C, H, W]` f32 tensor (augmented with `augment`, its random
    /// draws taken from `rng`) and their labels as a `[B]` u32 tensor.
    ///
    /// Random draws are taken from `rng` sequentially, sample by sample, before the (parallel) pixel work,
    /// so the result depends only on `rng`'s state: `Jitter` draws `dx` then `dy`, `CropFlip` draws the crop
    /// column, the crop row, then the flip; `None` draws nothing.
    pub fn batch(
        &self,
        indices: &[usize],
        augment: &Augment,
        rng: &mut Rng,
        norm: &Normalize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        norm.check(self.channels)?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::msg(format!(
                "batch index {bad} out of range for a set of {} images",
                self.len()
            )));
        }
        let draws: Vec<Draw> = indices.iter().map(|_| Draw::sample(augment, rng)).collect();
        let luts = norm.luts();
        let n = self.image_len();
        let mut out = vec![0f32; indices.len() * n];
        out.par_chunks_mut(n.max(1))
            .zip(indices.par_iter().zip(draws.par_iter()))
            .with_min_len(16)
            .for_each(|(dst, (&i, draw))| {
                write_sample(dst, self.image(i), self.shape(), draw, &luts)
            });
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        let b = indices.len();
        let x = Tensor::from_vec(out, (b, self.channels, self.height, self.width), device)?;
        let y = Tensor::from_vec(labels, b, device)?;
        Ok((x, y))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Augmentation and normalisation
// ---------------------------------------------------------------------------------------------------------

/// Training-time augmentation, written in a recipe as `"none"`, `"jitter2"` or `"crop-flip"`
/// (see [`parse_augment`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// No augmentation.
    None,
    /// Translate each image by a uniform random `(dx, dy)` in `[-max_shift, max_shift]²`, filling with zeros.
    Jitter {
        /// Largest shift in pixels, each axis.
        max_shift: usize,
    },
    /// Pad with `padding` zero pixels on each side, take a random crop of the original size, then flip
    /// horizontally with probability 0.5 (the standard CIFAR augmentation with `padding = 4`).
    CropFlip {
        /// Zero padding on each side before cropping.
        padding: usize,
    },
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Augment::None => f.write_str("none"),
            Augment::Jitter { max_shift } => write!(f, "jitter{max_shift}"),
            Augment::CropFlip { padding: 4 } => f.write_str("crop-flip"),
            Augment::CropFlip { padding } => write!(f, "crop-flip{padding}"),
        }
    }
}

/// Parses an augmentation name: `"none"`, `"jitterN"` (±N pixels, e.g. `"jitter2"`), `"crop-flip"`
/// (padding 4) or `"crop-flipN"` (padding N).
pub fn parse_augment(s: &str) -> Result<Augment> {
    let unknown = || Error::Unknown {
        what: "augmentation",
        name: s.to_string(),
        known: "none, jitterN (e.g. jitter2), crop-flip, crop-flipN".to_string(),
    };
    let t = s.trim();
    if t == "none" {
        return Ok(Augment::None);
    }
    if t == "crop-flip" {
        return Ok(Augment::CropFlip { padding: 4 });
    }
    if let Some(n) = t.strip_prefix("crop-flip") {
        let padding = n.parse().map_err(|_| unknown())?;
        return Ok(Augment::CropFlip { padding });
    }
    if let Some(n) = t.strip_prefix("jitter") {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unknown());
        }
        let max_shift = n.parse().map_err(|_| unknown())?;
        return Ok(Augment::Jitter { max_shift });
    }
    Err(unknown())
}

/// The random part of one sample's augmentation: the output pixel `(y, x)` reads input pixel
/// `(y - dy, x' - dx)` where `x' = W - 1 - x` when flipped, else `x` (zero outside the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Draw {
    dx: isize,
    dy: isize,
    flip: bool,
}

impl Draw {
    const IDENTITY: Draw = Draw {
        dx: 0,
        dy: 0,
        flip: false,
    };

    fn sample(augment: &Augment, rng: &mut Rng) -> Draw {
        match *augment {
            Augment::None => Draw::IDENTITY,
            Augment::Jitter { max_shift } => {
                let m = max_shift as isize;
                let dx = rng.below(2 * max_shift + 1) as isize - m;
                let dy = rng.below(2 * max_shift + 1) as isize - m;
                Draw {
                    dx,
                    dy,
                    flip: false,
                }
            }
            Augment::CropFlip { padding } => {
                // Crop offset (ox, oy) in the padded image: output (y, x) = padded (y + oy, x + ox)
                // = input (y + oy - p, x + ox - p), i.e. a shift of p - offset.
                let p = padding as isize;
                let ox = rng.below(2 * padding + 1) as isize;
                let oy = rng.below(2 * padding + 1) as isize;
                let flip = rng.uniform() < 0.5;
                Draw {
                    dx: p - ox,
                    dy: p - oy,
                    flip,
                }
            }
        }
    }
}

/// Writes one normalised, augmented image into `dst` (`C·H·W` floats).
fn write_sample(dst: &mut [f32], src: &[u8], shape: [usize; 3], d: &Draw, luts: &[[f32; 256]]) {
    let [_, h, w] = shape;
    let planes = luts
        .iter()
        .zip(dst.chunks_exact_mut(h * w))
        .zip(src.chunks_exact(h * w));
    if *d == Draw::IDENTITY {
        for ((lut, dp), sp) in planes {
            for (o, &v) in dp.iter_mut().zip(sp) {
                *o = lut[v as usize];
            }
        }
        return;
    }
    for ((lut, dp), sp) in planes {
        let zero = lut[0];
        for (y, row) in dp.chunks_exact_mut(w).enumerate() {
            let sy = y as isize - d.dy;
            if sy < 0 || sy >= h as isize {
                row.fill(zero);
                continue;
            }
            let srow = &sp[sy as usize * w..(sy as usize + 1) * w];
            for (x, o) in row.iter_mut().enumerate() {
                let xs = if d.flip { w - 1 - x } else { x };
                let sx = xs as isize - d.dx;
                *o = if sx < 0 || sx >= w as isize {
                    zero
                } else {
                    lut[srow[sx as usize] as usize]
                };
            }
        }
    }
}

/// Per-channel normalisation: a pixel `x` (0-255) becomes `(x / 255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    /// Mean per channel, on the 0-1 scale.
    pub mean: Vec<f32>,
    /// Standard deviation per channel, on the 0-1 scale.
    pub std: Vec<f32>,
}

impl Normalize {
    /// Normalisation with the given per-channel mean and standard deviation.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Self {
        Self { mean, std }
    }

    /// Scaling to 0-1 only (mean 0, std 1) for `channels` channels.
    pub fn identity(channels: usize) -> Self {
        Self::new(vec![0.0; channels], vec![1.0; channels])
    }

    /// The usual MNIST statistics (0.1307, 0.3081).
    pub fn mnist() -> Self {
        Self::new(vec![0.1307], vec![0.3081])
    }

    /// The usual CIFAR-10 statistics.
    pub fn cifar10() -> Self {
        Self::new(vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])
    }

    /// The usual CIFAR-100 statistics (as in CRD / mdistiller).
    pub fn cifar100() -> Self {
        Self::new(vec![0.5071, 0.4867, 0.4408], vec![0.2675, 0.2565, 0.2761])
    }

    /// Per-channel mean and standard deviation of `set` (on the 0-1 scale); a zero deviation becomes 1.
    pub fn from_data(set: &ImageSet) -> Self {
        let (c, hw) = (set.channels, set.height * set.width);
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for img in set.images.chunks_exact(set.image_len().max(1)) {
            for ch in 0..c {
                for &v in &img[ch * hw..(ch + 1) * hw] {
                    let v = v as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (set.len() * hw).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std: Vec<f32> = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let s = (q / n - m * m).max(0.0).sqrt() as f32;
                if s > 0.0 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Self::new(mean.iter().map(|&m| m as f32).collect(), std)
    }

    fn check(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::Shape(format!(
                "normalisation has {} means and {} standard deviations, the images have {channels} channels",
                self.mean.len(),
                self.std.len()
            )));
        }
        if let Some(s) = self.std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            return Err(Error::msg(format!(
                "normalisation standard deviations must be positive, got {s}"
            )));
        }
        Ok(())
    }

    /// Per channel, the normalised value of each byte.
    fn luts(&self) -> Vec<[f32; 256]> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&m, &s)| std::array::from_fn(|v| (v as f32 / 255.0 - m) / s))
            .collect()
    }
}

/// The normalisation a recipe gets when it names none: the data set's usual statistics, else 0.5 / 0.5
/// per channel.
pub(crate) fn default_norm(dataset: &str, channels: usize) -> Normalize {
    match dataset {
        "mnist" => Normalize {
            mean: vec![0.1307],
            std: vec![0.3081],
        },
        "cifar10" => Normalize {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        },
        "cifar100" => Normalize {
            mean: vec![0.5071, 0.4865, 0.4409],
            std: vec![0.2673, 0.2564, 0.2762],
        },
        _ => Normalize {
            mean: vec![0.5; channels],
            std: vec![0.5; channels],
        },
    }
}

// ---------------------------------------------------------------------------------------------------------
// MNIST (IDX)
// ---------------------------------------------------------------------------------------------------------

/// Loads the MNIST `split` from `dir`, which holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or gzipped (`.gz`; the raw file wins
/// when both exist). Classes are `"0"` … `"9"`. The reader is [`distill_data::mnist::load_mnist`].
pub fn load_mnist(dir: &Path, split: Split) -> Result<ImageSet> {
    mnist::load_mnist(dir, split == Split::Train).map(image_set)
}

/// Decodes an MNIST images file and its labels file from their bytes (the IDX parser of [`load_mnist`],
/// also the entry point of the fuzz target `idx`). A path ending in `.gz` is decompressed first; the paths
/// otherwise only name the files in errors.
pub fn decode_mnist(
    images_path: &Path,
    images: Vec<u8>,
    labels_path: &Path,
    labels: Vec<u8>,
) -> Result<ImageSet> {
    mnist::decode_mnist(images_path, images, labels_path, labels).map(image_set)
}

/// The [`ImageSet`] of an MNIST split: one channel, classes `"0"` … `"9"`.
fn image_set(set: mnist::MnistSet) -> ImageSet {
    ImageSet {
        images: set.pixels,
        labels: set.labels,
        channels: 1,
        height: set.rows,
        width: set.cols,
        classes: (0..10).map(|d| d.to_string()).collect(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// CIFAR-10 / CIFAR-100 (binary versions)
// ---------------------------------------------------------------------------------------------------------

const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// `dir/sub` when it exists, else `dir` itself (so both the extraction root and the batches folder work).
fn cifar_root(dir: &Path, sub: &str, dataset: &str) -> Result<PathBuf> {
    check_dir(dir, dataset)?;
    let inner = dir.join(sub);
    Ok(if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    })
}

/// Reads CIFAR binary records (`label_bytes` label bytes then 3072 pixel bytes) from `files`, taking the
/// label at `label_index` of each record and checking it is `< classes`.
fn read_cifar_records(
    files: &[PathBuf],
    label_bytes: usize,
    label_index: usize,
    classes: usize,
    dataset: &str,
    images: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let record = label_bytes + CIFAR_PIXELS;
    for path in files {
        if !path.is_file() {
            return Err(Error::data(
                path,
                format!("not found; {}", fetch_hint(dataset)),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::data(
                path,
                format!(
                    "size {} bytes is not a positive multiple of the {record}-byte record ({label_bytes} label byte{} + {CIFAR_PIXELS} pixels): truncated, or not the binary version",
                    bytes.len(),
                    if label_bytes == 1 { "" } else { "s" }
                ),
            ));
        }
        images.reserve(bytes.len() / record * CIFAR_PIXELS);
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[label_index];
            if label as usize >= classes {
                return Err(Error::data(
                    path,
                    format!("record {i} has label {label}, expected 0-{}", classes - 1),
                ));
            }
            labels.push(label as u32);
            images.extend_from_slice(&rec[label_bytes..]);
        }
    }
    Ok(())
}

/// Class names from a text file (one per line, blank lines ignored) when it exists and lists exactly
/// `n` names, else `"0"` … `"n-1"`.
fn class_names(path: &Path, n: usize) -> Vec<String> {
    let names: Vec<String> = std::fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if names.len() == n {
        names
    } else {
        (0..n).map(|i| i.to_string()).collect()
    }
}

/// Loads the CIFAR-10 `split` from `dir` (the folder holding `cifar-10-batches-bin/`, or that folder itself):
/// `data_batch_1.bin` … `data_batch_5.bin` for training, `test_batch.bin` for testing; records of 1 label
/// byte and 3072 pixel bytes (R, G, B planes of 32x32). Class names from `batches.meta.txt` when present.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<ImageSet> {
    let root = cifar_root(dir, "cifar-10-batches-bin", "cifar10")?;
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5)
            .map(|i| root.join(format!("data_batch_{i}.bin")))
            .collect(),
        Split::Test => vec![root.join("test_batch.bin")],
    };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    read_cifar_records(&files, 1, 0, 10, "cifar10", &mut images, &mut labels)?;
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes: class_names(&root.join("batches.meta.txt"), 10),
    })
}

/// Loads the CIFAR-100 `split` (fine labels) from `dir` (the folder holding `cifar-100-binary/`, or that
/// folder itself): `train.bin` / `test.bin`, records of a coarse label byte, a fine label byte and 3072
/// pixel bytes. Class names from `fine_label_names.txt` when present.
pub fn load_cifar100(dir: &Path, split: Split) -> Result<ImageSet> {
    let root = cifar_root(dir, "cifar-100-binary", "cifar100")?;
    let file = root.join(match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    });
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    read_cifar_records(&[file], 2, 1, 100, "cifar100", &mut images, &mut labels)?;
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes: class_names(&root.join("fine_label_names.txt"), 100),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Image folders
// ---------------------------------------------------------------------------------------------------------

fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    entries.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

/// Loads `root/CLASS/*.{png,jpg,jpeg}`: one class per subfolder (classes sorted by name, files sorted by
/// name, other files ignored). Images are converted to grey (1 channel) when `grayscale`, else RGB
/// (3 channels; alpha dropped). With `size = Some((height, width))` every image is resized to it
/// (bilinear); with `None` all images must have the size of the first.
pub fn load_image_folder(
    root: &Path,
    size: Option<(usize, usize)>,
    grayscale: bool,
) -> Result<ImageSet> {
    if !root.is_dir() {
        return Err(Error::data(root, "image folder not found"));
    }
    if let Some((h, w)) = size {
        if h == 0 || w == 0 {
            return Err(Error::data(
                root,
                format!("cannot resize images to {h}x{w}"),
            ));
        }
    }
    let class_dirs: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if class_dirs.is_empty() {
        return Err(Error::data(
            root,
            "has no class subfolders (expected root/CLASS/*.png|jpg)",
        ));
    }
    let mut classes = Vec::with_capacity(class_dirs.len());
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for (label, dir) in class_dirs.iter().enumerate() {
        classes.push(
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        for f in sorted_entries(dir)? {
            if f.is_file() && is_image_file(&f) {
                files.push((f, label as u32));
            }
        }
    }
    if files.is_empty() {
        return Err(Error::data(
            root,
            "has no .png/.jpg/.jpeg images in its class subfolders",
        ));
    }
    let channels = if grayscale { 1 } else { 3 };
    // Decode (and resize) in parallel; the first error in file order wins.
    let decoded: Vec<Result<(usize, usize, Vec<u8>)>> = files
        .par_iter()
        .map(|(path, _)| decode_image(path, size, grayscale))
        .collect();
    let mut images = Vec::new();
    let mut shape: Option<(usize, usize, &Path)> = None;
    for ((path, _), d) in files.iter().zip(decoded) {
        let (h, w, pixels) = d?;
        match shape {
            None => {
                shape = Some((h, w, path));
                images.reserve(files.len() * pixels.len());
            }
            Some((h0, w0, first)) if (h, w) != (h0, w0) => {
                return Err(Error::data(
                    path,
                    format!(
                        "is {w}x{h} (width x height) but {} is {w0}x{h0}; give the loader a size to resize all images to",
                        first.display()
                    ),
                ));
            }
            Some(_) => {}
        }
        images.extend_from_slice(&pixels);
    }
    let (height, width, _) = shape.expect("at least one image");
    Ok(ImageSet {
        images,
        labels: files.iter().map(|(_, l)| *l).collect(),
        channels,
        height,
        width,
        classes,
    })
}

/// Decodes one image file into `C, H, W` bytes, grey or RGB, resized (bilinear) to `size` if given:
/// `(height, width, pixels)`. What the image-folder loader and `distill predict` read files with.
pub fn decode_image(
    path: &Path,
    size: Option<(usize, usize)>,
    grayscale: bool,
) -> Result<(usize, usize, Vec<u8>)> {
    let bad = |e: image::ImageError| Error::data(path, format!("cannot decode image: {e}"));
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(bad)?;
    let img = if grayscale {
        image::DynamicImage::ImageLuma8(img.to_luma8())
    } else {
        image::DynamicImage::ImageRgb8(img.to_rgb8())
    };
    let img = match size {
        Some((h, w)) if (img.height() as usize, img.width() as usize) != (h, w) => {
            img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
        }
        _ => img,
    };
    let (h, w) = (img.height() as usize, img.width() as usize);
    let pixels = if grayscale {
        img.into_luma8().into_raw()
    } else {
        // interleaved HWC -> planar CHW
        let hwc = img.into_rgb8().into_raw();
        let mut chw = vec![0u8; hwc.len()];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * h * w + i] = px[c];
            }
        }
        chw
    };
    Ok((h, w, pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn err_text<T: fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    /// The IDX checks live in distill-data (tested there); here: the `ImageSet` the wrappers build.
    #[test]
    fn mnist_image_set() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let mut images = Vec::new();
        for v in [2051u32, 2, 4, 5] {
            images.extend_from_slice(&v.to_be_bytes());
        }
        images.extend((0..40).map(|j| j as u8));
        let mut labels = Vec::new();
        for v in [2049u32, 2] {
            labels.extend_from_slice(&v.to_be_bytes());
        }
        labels.extend_from_slice(&[7, 3]);
        write(dir.path(), "t10k-images-idx3-ubyte", &images);
        write(dir.path(), "t10k-labels-idx1-ubyte", &labels);
        let test = load_mnist(dir.path(), Split::Test)?;
        assert_eq!(test.len(), 2);
        assert_eq!(test.shape(), [1, 4, 5]);
        assert_eq!(test.labels, [7, 3]);
        assert_eq!(test.image(1), &(20..40).collect::<Vec<u8>>()[..]);
        assert_eq!(test.num_classes(), 10);
        assert_eq!(test.classes[3], "3");
        let decoded = decode_mnist(Path::new("i"), images, Path::new("l"), labels)?;
        assert_eq!(decoded.images, test.images);
        let e = err_text(load_mnist(dir.path(), Split::Train));
        assert!(
            e.contains("train-images-idx3-ubyte") && e.contains("distill data fetch mnist"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn missing_data_suggests_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = err_text(load_mnist(&missing, Split::Train));
        assert!(
            e.contains("nope")
                && e.contains("distill data fetch mnist")
                && e.contains("DISTILL_DATA"),
            "{e}"
        );
        let e = err_text(load_cifar10(&missing, Split::Test));
        assert!(e.contains("distill data fetch cifar10"), "{e}");
        let e = err_text(load_cifar100(dir.path(), Split::Test));
        assert!(e.contains("test.bin") && e.contains("cifar100"), "{e}");
    }

    /// `DISTILL_DATA/mnist` (or `DISTILL_DATA` itself when it holds the IDX files).
    fn real_mnist_dir() -> Option<PathBuf> {
        let root = distill_data::testing::required_dir("DISTILL_DATA", None, "real_mnist")?;
        let sub = root.join("mnist");
        Some(if sub.is_dir() { sub } else { root })
    }

    #[test]
    fn real_mnist() -> Result<()> {
        let Some(dir) = real_mnist_dir() else {
            return Ok(());
        };
        let train = load_mnist(&dir, Split::Train)?;
        assert_eq!(train.len(), 60_000);
        assert_eq!(train.shape(), [1, 28, 28]);
        assert_eq!(train.images.len(), 60_000 * 784);
        assert_eq!(train.labels[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        assert_eq!(
            train.label_counts(),
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        );
        assert_eq!(*train.images.iter().max().unwrap(), 255);
        let test = load_mnist(&dir, Split::Test)?;
        assert_eq!(test.len(), 10_000);
        assert_eq!(test.labels[..10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        assert_eq!(
            test.label_counts(),
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
        // Batches over the real data are normalised to about zero mean / unit variance with the MNIST stats.
        let idx: Vec<usize> = (0..1000).collect();
        let (x, y) = train.batch(
            &idx,
            &Augment::None,
            &mut Rng::new(0),
            &Normalize::mnist(),
            &Device::Cpu,
        )?;
        assert_eq!(x.dims(), [1000, 1, 28, 28]);
        let mean = x.mean_all()?.to_scalar::<f32>()?;
        let var = x.sqr()?.mean_all()?.to_scalar::<f32>()? - mean * mean;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.1, "{mean} {var}");
        assert_eq!(y.to_vec1::<u32>()?[..3], [5, 0, 4]);
        Ok(())
    }

    fn cifar_record(label_bytes: &[u8], seed: u8) -> Vec<u8> {
        let mut r = label_bytes.to_vec();
        r.extend((0..3072).map(|j| (j as u8).wrapping_mul(3).wrapping_add(seed)));
        r
    }

    #[test]
    fn cifar10_binary() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&root).unwrap();
        let test = [cifar_record(&[3], 1), cifar_record(&[8], 2)].concat();
        write(&root, "test_batch.bin", &test);
        for i in 1..=5 {
            write(
                &root,
                &format!("data_batch_{i}.bin"),
                &cifar_record(&[i as u8], i as u8),
            );
        }
        let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
        write(&root, "batches.meta.txt", names.as_bytes());
        let set = load_cifar10(dir.path(), Split::Test)?;
        assert_eq!(set.len(), 2);
        assert_eq!(set.shape(), [3, 32, 32]);
        assert_eq!(set.labels, [3, 8]);
        assert_eq!(set.image(0), &cifar_record(&[3], 1)[1..]);
        assert_eq!(set.image(1), &cifar_record(&[8], 2)[1..]);
        assert_eq!(set.classes[set.labels[0] as usize], "cat");
        assert_eq!(set.classes[8], "ship");
        // The batches folder itself works too; train reads the five batches in order.
        let train = load_cifar10(&root, Split::Train)?;
        assert_eq!(train.labels, [1, 2, 3, 4, 5]);
        assert_eq!(train.image(4)[0], 5);
        // Without the names file, classes are numbers.
        std::fs::remove_file(root.join("batches.meta.txt")).unwrap();
        assert_eq!(load_cifar10(dir.path(), Split::Test)?.classes[3], "3");
        // A torn record and a bad label are named errors.
        write(&root, "test_batch.bin", &test[..3073 + 5]);
        let e = err_text(load_cifar10(dir.path(), Split::Test));
        assert!(
            e.contains("test_batch.bin") && e.contains("3078") && e.contains("3073-byte record"),
            "{e}"
        );
        write(&root, "test_batch.bin", &cifar_record(&[10], 0));
        let e = err_text(load_cifar10(dir.path(), Split::Test));
        assert!(
            e.contains("test_batch.bin") && e.contains("record 0 has label 10"),
            "{e}"
        );
        std::fs::remove_file(root.join("data_batch_3.bin")).unwrap();
        let e = err_text(load_cifar10(dir.path(), Split::Train));
        assert!(
            e.contains("data_batch_3.bin") && e.contains("not found"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn cifar100_binary() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cifar-100-binary");
        std::fs::create_dir(&root).unwrap();
        let recs = [cifar_record(&[4, 72], 9), cifar_record(&[19, 99], 10)].concat();
        write(&root, "train.bin", &recs);
        let set = load_cifar100(dir.path(), Split::Train)?;
        assert_eq!(set.labels, [72, 99], "fine labels");
        assert_eq!(set.image(1), &cifar_record(&[19, 99], 10)[2..]);
        assert_eq!(set.num_classes(), 100);
        assert_eq!(set.classes[72], "72");
        let names: String = (0..100).map(|i| format!("class{i}\n")).collect();
        write(&root, "fine_label_names.txt", names.as_bytes());
        assert_eq!(
            load_cifar100(dir.path(), Split::Train)?.classes[72],
            "class72"
        );
        write(&root, "train.bin", &recs[..3073]);
        let e = err_text(load_cifar100(dir.path(), Split::Train));
        assert!(
            e.contains("train.bin") && e.contains("3074-byte record"),
            "{e}"
        );
        write(&root, "train.bin", &cifar_record(&[1, 100], 0));
        assert!(err_text(load_cifar100(dir.path(), Split::Train)).contains("label 100"));
        Ok(())
    }

    fn save_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
            .save(path)
            .unwrap();
    }

    #[test]
    fn image_folder() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for class in ["dog", "cat"] {
            std::fs::create_dir(root.join(class)).unwrap();
        }
        // cat: b.png (red 10), a.png (red 20); dog: c.png (green by x); plus a non-image file.
        save_png(&root.join("cat/b.png"), 6, 4, |_, _| [10, 0, 0]);
        save_png(&root.join("cat/a.png"), 6, 4, |_, _| [20, 0, 0]);
        save_png(&root.join("dog/c.PNG"), 6, 4, |x, y| {
            [0, (x * 10 + y) as u8, 200]
        });
        write(root, "dog/notes.txt", b"not an image");
        let set = load_image_folder(root, None, false)?;
        assert_eq!(set.classes, ["cat", "dog"]);
        assert_eq!(set.labels, [0, 0, 1]);
        assert_eq!(set.shape(), [3, 4, 6]);
        assert_eq!(set.image(0)[0], 20, "files sorted: a.png first");
        assert_eq!(set.image(1)[0], 10);
        // CHW: plane 1 (green) at row y=2, column x=5 is 5·10 + 2; plane 2 (blue) is 200.
        let img = set.image(2);
        assert_eq!(img[24 + 2 * 6 + 5], 52);
        assert_eq!(img[48 + 7], 200);
        assert_eq!(img[3], 0);
        // Greyscale and resizing.
        let g = load_image_folder(root, Some((3, 5)), true)?;
        assert_eq!(g.shape(), [1, 3, 5]);
        assert_eq!(g.images.len(), 3 * 15);
        assert!(g.image(0).iter().all(|&v| v == g.image(0)[0] && v > 0));
        // A differently sized image without a target size is an error naming it.
        save_png(&root.join("dog/d.png"), 7, 4, |_, _| [0, 0, 0]);
        let e = err_text(load_image_folder(root, None, false));
        assert!(e.contains("d.png") && e.contains("7x4"), "{e}");
        assert_eq!(load_image_folder(root, Some((4, 6)), false)?.len(), 4);
        // A corrupt image is an error naming the file.
        write(
            root,
            "dog/e.jpg",
            b"\xff\xd8\xff garbage that is not a jpeg",
        );
        let e = err_text(load_image_folder(root, Some((4, 6)), false));
        assert!(e.contains("e.jpg") && e.contains("cannot decode"), "{e}");
        assert!(load_image_folder(&root.join("missing"), None, false).is_err());
        Ok(())
    }

    fn single_pixel_set(h: usize, w: usize, y: usize, x: usize) -> ImageSet {
        let mut images = vec![0u8; h * w];
        images[y * w + x] = 255;
        ImageSet {
            images,
            labels: vec![0],
            channels: 1,
            height: h,
            width: w,
            classes: vec!["only".into()],
        }
    }

    fn lit_pixels(x: &Tensor) -> Vec<(usize, usize)> {
        let v: Vec<Vec<f32>> = x.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let mut out = Vec::new();
        for (y, row) in v.iter().enumerate() {
            for (xx, &p) in row.iter().enumerate() {
                if p > 0.5 {
                    out.push((y, xx));
                }
            }
        }
        out
    }

    #[test]
    fn jitter_moves_a_pixel_by_the_drawn_shift() -> Result<()> {
        let set = single_pixel_set(9, 9, 4, 4);
        let aug = parse_augment("jitter2")?;
        let norm = Normalize::identity(1);
        let mut rng = Rng::new(11);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let draw = Draw::sample(&aug, &mut rng.clone());
            let (x, _) = set.batch(&[0], &aug, &mut rng, &norm, &Device::Cpu)?;
            assert!(draw.dx.abs() <= 2 && draw.dy.abs() <= 2, "{draw:?}");
            let lit = lit_pixels(&x);
            let expected = ((4 + draw.dy) as usize, (4 + draw.dx) as usize);
            assert_eq!(lit, [expected], "{draw:?}");
            seen.insert((draw.dx, draw.dy));
        }
        assert_eq!(seen.len(), 25, "every shift in [-2, 2]² occurs");
        // A pixel near the border can leave the image (zero fill): all outputs stay 0 or 1.
        let edge = single_pixel_set(5, 5, 0, 0);
        let mut rng = Rng::new(3);
        let mut lost = 0;
        for _ in 0..100 {
            let (x, _) = edge.batch(&[0], &aug, &mut rng, &norm, &Device::Cpu)?;
            let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            assert!(v.iter().all(|&p| p == 0.0 || p == 1.0));
            lost += usize::from(lit_pixels(&x).is_empty());
        }
        assert!(lost > 0);
        Ok(())
    }

    #[test]
    fn batch_draws_are_sequential_and_reproducible() -> Result<()> {
        let set = ImageSet {
            images: (0..40 * 64).map(|i| (i % 256) as u8).collect(),
            labels: (0..40).map(|i| i % 3).collect(),
            channels: 1,
            height: 8,
            width: 8,
            classes: vec!["a".into(), "b".into(), "c".into()],
        };
        let aug = Augment::Jitter { max_shift: 3 };
        let norm = Normalize::identity(1);
        let idx: Vec<usize> = (0..40).rev().collect();
        let mut r1 = Rng::new(5);
        let (a, ya) = set.batch(&idx, &aug, &mut r1, &norm, &Device::Cpu)?;
        let mut r2 = Rng::new(5);
        let (b, _) = set.batch(&idx, &aug, &mut r2, &norm, &Device::Cpu)?;
        assert_eq!(r1, r2, "the generator advanced identically");
        let va: Vec<f32> = a.flatten_all()?.to_vec1()?;
        assert_eq!(va, b.flatten_all()?.to_vec1::<f32>()?);
        // Sample k of the batch equals a batch of one with the k-th draw.
        let mut r3 = Rng::new(5);
        for (k, &i) in idx.iter().enumerate() {
            let (one, _) = set.batch(&[i], &aug, &mut r3, &norm, &Device::Cpu)?;
            assert_eq!(
                one.flatten_all()?.to_vec1::<f32>()?,
                va[k * 64..(k + 1) * 64]
            );
        }
        assert_eq!(r3, r1);
        assert_eq!(
            ya.to_vec1::<u32>()?,
            idx.iter().map(|&i| (i % 3) as u32).collect::<Vec<_>>()
        );
        // No augmentation draws nothing.
        let mut r4 = Rng::new(5);
        set.batch(&idx, &Augment::None, &mut r4, &norm, &Device::Cpu)?;
        assert_eq!(r4, Rng::new(5));
        assert!(set
            .batch(&[40], &aug, &mut r4, &norm, &Device::Cpu)
            .is_err());
        Ok(())
    }

    #[test]
    fn crop_flip() -> Result<()> {
        let (c, h, w) = (3, 32, 32);
        let images: Vec<u8> = (0..2 * c * h * w)
            .map(|i| (i * 7 % 253 + 1) as u8)
            .collect();
        let set = ImageSet {
            images,
            labels: vec![1, 0],
            channels: c,
            height: h,
            width: w,
            classes: vec!["a".into(), "b".into()],
        };
        let aug = parse_augment("crop-flip")?;
        assert_eq!(aug, Augment::CropFlip { padding: 4 });
        let norm = Normalize::identity(3);
        let mut rng = Rng::new(1);
        let mut flips = 0;
        for _ in 0..50 {
            let mut probe = rng.clone();
            let draws: Vec<Draw> = (0..4).map(|_| Draw::sample(&aug, &mut probe)).collect();
            let (x, y) = set.batch(&[0, 1, 1, 0], &aug, &mut rng, &norm, &Device::Cpu)?;
            assert_eq!(x.dims(), [4, 3, 32, 32]);
            assert_eq!(y.to_vec1::<u32>()?, [1, 0, 0, 1]);
            let got: Vec<f32> = x.flatten_all()?.to_vec1()?;
            // Reference: pad 4 with zeros, crop 32x32 at (oy, ox), flip columns if drawn.
            for (k, (&i, d)) in [0usize, 1, 1, 0].iter().zip(&draws).enumerate() {
                let (ox, oy) = (4 - d.dx, 4 - d.dy);
                assert!((0..=8).contains(&ox) && (0..=8).contains(&oy));
                flips += usize::from(d.flip);
                for ch in 0..c {
                    let mut padded = vec![vec![0u8; w + 8]; h + 8];
                    for (yy, row) in padded.iter_mut().enumerate().take(h + 4).skip(4) {
                        for xx in 0..w {
                            row[xx + 4] = set.image(i)[ch * h * w + (yy - 4) * w + xx];
                        }
                    }
                    for yy in 0..h {
                        for xx in 0..w {
                            let cx = if d.flip { w - 1 - xx } else { xx };
                            let e = padded[yy + oy as usize][cx + ox as usize] as f32 / 255.0;
                            let g = got[((k * c + ch) * h + yy) * w + xx];
                            assert!((g - e).abs() < 1e-6, "k{k} c{ch} y{yy} x{xx}: {g} vs {e}");
                        }
                    }
                }
            }
        }
        assert!((60..=140).contains(&flips), "flip p=0.5: {flips}/200");
        Ok(())
    }

    #[test]
    fn normalisation_values() -> Result<()> {
        let set = ImageSet {
            images: vec![0, 255, 128, 51],
            labels: vec![4],
            channels: 1,
            height: 2,
            width: 2,
            classes: (0..5).map(|i| i.to_string()).collect(),
        };
        let (x, y) = set.batch(
            &[0],
            &Augment::None,
            &mut Rng::new(0),
            &Normalize::mnist(),
            &Device::Cpu,
        )?;
        assert_eq!(x.dims(), [1, 1, 2, 2]);
        assert_eq!(x.dtype(), candle_core::DType::F32);
        assert_eq!(y.dtype(), candle_core::DType::U32);
        assert_eq!(y.to_vec1::<u32>()?, [4]);
        let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let expect = [0.0f32, 255.0, 128.0, 51.0].map(|p| (p / 255.0 - 0.1307) / 0.3081);
        for (a, b) in v.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-6, "{v:?} vs {expect:?}");
        }
        assert!((v[0] + 0.424_212_9).abs() < 1e-5 && (v[1] - 2.821_486).abs() < 1e-5);
        // Per-channel statistics on a 2-channel image.
        let two = ImageSet {
            images: vec![255, 0, 255, 255],
            labels: vec![0],
            channels: 2,
            height: 1,
            width: 2,
            classes: vec!["x".into()],
        };
        let norm = Normalize::new(vec![0.5, 1.0], vec![0.5, 2.0]);
        let (x, _) = two.batch(&[0], &Augment::None, &mut Rng::new(0), &norm, &Device::Cpu)?;
        assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, [1.0, -1.0, 0.0, 0.0]);
        let e = err_text(two.batch(
            &[0],
            &Augment::None,
            &mut Rng::new(0),
            &Normalize::mnist(),
            &Device::Cpu,
        ));
        assert!(e.contains("2 channels"), "{e}");
        let stats = Normalize::from_data(&two);
        assert_eq!(stats.mean, [0.5, 1.0]);
        assert_eq!(stats.std, [0.5, 1.0]);
        Ok(())
    }

    #[test]
    fn subset_and_counts() {
        let set = ImageSet {
            images: vec![1, 1, 2, 2, 3, 3],
            labels: vec![0, 1, 1],
            channels: 1,
            height: 1,
            width: 2,
            classes: vec!["a".into(), "b".into()],
        };
        let s = set.subset(&[2, 0, 2]);
        assert_eq!(s.images, [3, 3, 1, 1, 3, 3]);
        assert_eq!(s.labels, [1, 0, 1]);
        assert_eq!(s.classes, set.classes);
        assert_eq!(s.label_counts(), [1, 2]);
        assert!(set.subset(&[]).is_empty());
    }

    #[test]
    fn augment_names() -> Result<()> {
        assert_eq!(parse_augment("none")?, Augment::None);
        assert_eq!(parse_augment("jitter2")?, Augment::Jitter { max_shift: 2 });
        assert_eq!(
            parse_augment("jitter10")?,
            Augment::Jitter { max_shift: 10 }
        );
        assert_eq!(
            parse_augment("crop-flip")?,
            Augment::CropFlip { padding: 4 }
        );
        assert_eq!(
            parse_augment("crop-flip2")?,
            Augment::CropFlip { padding: 2 }
        );
        for bad in ["jitter", "jitter-1", "jitterx", "flip", "crop-flipx", ""] {
            let e = err_text(parse_augment(bad));
            assert!(
                e.contains("augmentation") && e.contains("jitterN"),
                "{bad}: {e}"
            );
        }
        for a in ["none", "jitter2", "crop-flip", "crop-flip2"] {
            assert_eq!(parse_augment(a)?.to_string(), a);
        }
        Ok(())
    }
}
