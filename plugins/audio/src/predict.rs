//! `distill predict` on WAV files and what `distill export` records for it: each file read, down-mixed and
//! resampled ([`crate::data::wav`]) and turned into features by the recipe's front end, through the same
//! [`featurize`] the data pipeline uses.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use distill_core::{Error, Result};

use crate::data::{featurize, frontend::FrontEnd, Clip};

/// WAV files as one `[N, 1, rows, frames]` feature batch.
pub fn wav_batch(files: &[String], fe: &FrontEnd, device: &Device) -> Result<Tensor> {
    let clips: Vec<Clip> = files
        .iter()
        .map(|f| Clip {
            path: PathBuf::from(f),
            label: 0,
            speaker: None,
        })
        .collect();
    let (set, _) = featurize(&clips, fe, false).map_err(|e| {
        // featurize's hint about `skip_bad_files` is about training data, not these files
        Error::msg(
            e.to_string()
                .split(" (set `skip_bad_files")
                .next()
                .unwrap_or("")
                .to_string(),
        )
    })?;
    Ok(Tensor::from_vec(
        set.features,
        (files.len(), 1, set.rows, set.frames),
        device,
    )?)
}

/// The preprocessing an export's card describes: the front end's settings.
pub fn preprocessing(fe: &FrontEnd) -> serde_json::Value {
    serde_json::json!({
        "input": "WAV files (integer PCM 8/16/24/32-bit or 32-bit float, any channels, any rate)",
        "audio": "channels averaged, resampled (windowed sinc) to frontend.sample_rate",
        "frontend": fe.config(),
        "layout": "[batch, 1, rows, frames] f32",
    })
}
