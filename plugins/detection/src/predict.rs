//! `distill predict` on image files: each letterboxed as the data pipeline does ([`letterbox`], the inputs
//! scaled as [`crate::data::make_batch`] scales them), the outputs decoded into boxes by the evaluation's
//! post-processing ([`decode`]) and mapped back to the file's pixels as the evaluation maps them.

use std::path::Path;

use candle_core::{Device, Tensor};
use distill_core::{
    deploy::{Prediction, Scored},
    Error, Outputs, Result,
};

use crate::{
    data::{letterbox, PAD_VALUE},
    models::{
        postprocess::{decode, PostProcess},
        STRIDE,
    },
};

fn open(file: &str) -> Result<image::DynamicImage> {
    let path = Path::new(file);
    image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::data(path, format!("cannot decode image: {e}")))
}

/// Image files as one `[N, C, S, S]` batch: letterboxed to `S x S`, `(v / 255 - 0.5) / 0.25`.
pub fn image_batch(
    files: &[String],
    channels: usize,
    size: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut x = Vec::with_capacity(files.len() * channels * size * size);
    for f in files {
        let (pixels, _, _) = letterbox(&open(f)?, size, channels);
        x.extend(pixels.iter().map(|&v| (v as f32 / 255.0 - 0.5) / 0.25));
    }
    Ok(Tensor::from_vec(
        x,
        (files.len(), channels, size, size),
        device,
    )?)
}

/// The boxes of each file (`[x, y, width, height]` in its own pixels, clipped to it), best first.
pub fn boxes(
    files: &[String],
    outputs: &Outputs,
    (channels, size): (usize, usize),
    pp: &PostProcess,
    label: impl Fn(usize) -> String,
) -> Result<Vec<Prediction>> {
    let decoded = decode(outputs, STRIDE, pp)?;
    if decoded.len() != files.len() {
        return Err(Error::Shape(format!(
            "{} images gave outputs for {}",
            files.len(),
            decoded.len()
        )));
    }
    files
        .iter()
        .zip(decoded)
        .map(|(f, found)| {
            let img = open(f)?;
            let (_, scale, pad) = letterbox(&img, size, channels);
            let (iw, ih) = (img.width() as f64, img.height() as f64);
            let boxes = found
                .into_iter()
                .map(|b| {
                    let x0 = ((b.bbox[0] - pad.0) / scale.0).clamp(0.0, iw);
                    let y0 = ((b.bbox[1] - pad.1) / scale.1).clamp(0.0, ih);
                    let x1 = ((b.bbox[0] + b.bbox[2] - pad.0) / scale.0).clamp(0.0, iw);
                    let y1 = ((b.bbox[1] + b.bbox[3] - pad.1) / scale.1).clamp(0.0, ih);
                    let bbox = [x0, y0, x1 - x0, y1 - y0].map(|v| v as f32);
                    Scored {
                        class: b.class,
                        label: label(b.class),
                        score: b.score as f32,
                        bbox: Some(bbox),
                    }
                })
                .collect();
            Ok(Prediction::Boxes {
                input: f.clone(),
                boxes,
            })
        })
        .collect()
}

/// The preprocessing an export's card describes.
pub fn preprocessing(channels: usize, size: usize, pp: &PostProcess) -> serde_json::Value {
    serde_json::json!({
        "input": "image files (PNG, JPEG)",
        "color": if channels == 1 { "grey (luma)" } else { "RGB" },
        "letterbox": format!("scaled (triangle filter) so the longer side is {size}, centred on a {size}x{size} canvas filled with grey {PAD_VALUE}"),
        "normalise": "(x / 255 - 0.5) / 0.25",
        "layout": "[batch, channels, size, size] f32",
        "outputs": format!("logits = class heatmap logits [batch, classes, {s}, {s}]; size and offset [batch, 2, {s}, {s}] in cells of {STRIDE} pixels", s = size / STRIDE),
        "postprocess": pp,
    })
}
