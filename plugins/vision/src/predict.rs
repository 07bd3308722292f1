//! `distill predict` on image files and what `distill export` records for it: files decoded and resized
//! ([`crate::data::decode_image`]) and normalised by the data pipeline's own code ([`ImageSet::batch`]), so
//! an image of the training size gives exactly the tensor training and evaluation saw.

use std::path::Path;

use candle_core::{Device, Tensor};
use distill_core::{Error, Result, Rng};

use crate::data::{decode_image, Augment, ImageSet, Normalize};

/// CIFAR-10's class names, by label.
pub const CIFAR10_CLASSES: &[&str] = &[
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Image files as one normalised `[N, C, H, W]` batch for a network of input shape `shape`: each decoded
/// grey (C = 1) or RGB (C = 3), resized to `H x W` (bilinear) when it has another size.
pub fn image_batch(
    files: &[String],
    shape: &[usize],
    norm: &Normalize,
    device: &Device,
) -> Result<Tensor> {
    let &[channels, height, width] = shape else {
        return Err(Error::Shape(format!(
            "image inputs need a [C, H, W] input shape, the network has {shape:?}"
        )));
    };
    let mut images = Vec::with_capacity(files.len() * channels * height * width);
    for f in files {
        let (_, _, pixels) = decode_image(Path::new(f), Some((height, width)), channels == 1)?;
        images.extend_from_slice(&pixels);
    }
    let set = ImageSet {
        images,
        labels: vec![0; files.len()],
        channels,
        height,
        width,
        classes: vec![String::new()],
    };
    let all: Vec<usize> = (0..files.len()).collect();
    let (x, _) = set.batch(&all, &Augment::None, &mut Rng::new(0), norm, device)?;
    Ok(x)
}

/// Class names of a data set: MNIST's digits, CIFAR-10's names, an image folder's class folders (sorted,
/// as the loader labels them); empty when unknown (CIFAR-100, a folder not on disk).
pub fn class_names(dataset: &str, folder_train: Option<&Path>) -> Vec<String> {
    match (dataset, folder_train) {
        ("mnist", _) => (0..10).map(|d| d.to_string()).collect(),
        ("cifar10", _) => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        (_, Some(train)) => {
            let mut names: Vec<String> = std::fs::read_dir(train)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            names
        }
        _ => Vec::new(),
    }
}

/// The preprocessing an export's card describes.
pub fn preprocessing(shape: &[usize], norm: &Normalize) -> serde_json::Value {
    serde_json::json!({
        "input": "image files (PNG, JPEG)",
        "color": if shape.first() == Some(&1) { "grey (luma)" } else { "RGB" },
        "resize": format!("bilinear (triangle filter) to {}x{} (height x width) when the size differs", shape.get(1).unwrap_or(&0), shape.get(2).unwrap_or(&0)),
        "normalise": "x / 255, then (x - mean[c]) / std[c]",
        "mean": norm.mean,
        "std": norm.std,
        "layout": "[batch, channels, height, width] f32",
    })
}
