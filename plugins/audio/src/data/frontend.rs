//! The acoustic front end: framing, Hann window, FFT (rustfft), power spectrogram, mel filterbank (Slaney or
//! HTK mel scale, Slaney area normalisation), dB log, MFCC by orthonormal DCT-II, per-utterance
//! normalisation, pad/crop to a fixed number of frames, and SpecAugment masks for training.
//!
//! The defaults follow librosa's (`center=True` with zero padding, periodic Hann window, `power=2`,
//! `norm="slaney"`, `power_to_db(ref=1.0, amin=1e-10)`), so [`FrontEnd::log_mel`] equals
//! `librosa.power_to_db(librosa.feature.melspectrogram(...))` and [`FrontEnd::mfcc`] equals
//! `librosa.feature.mfcc(...)`; `tests/frontend_librosa.rs` checks both against values librosa produced.
//! All arithmetic is in f64.
//!
//! ```
//! use distill_audio::data::frontend::{FrontEnd, FrontEndConfig};
//! # fn main() -> distill_core::Result<()> {
//! let fe = FrontEnd::new(FrontEndConfig::default())?;
//! let x: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.3).sin()).collect();
//! let m = fe.log_mel(&x);
//! assert_eq!((m.len(), m[0].len()), (40, 32)); // 40 bands x (1 + 8000 / 256) frames
//! # Ok(()) }
//! ```

use std::{f64::consts::PI, sync::Arc};

use distill_core::{Error, Result, Rng};
use rustfft::{num_complex::Complex, Fft, FftPlanner};
use serde::{Deserialize, Serialize};

/// Mel scale variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelScale {
    /// Slaney's Auditory Toolbox scale (linear below 1 kHz, logarithmic above): librosa's default.
    Slaney,
    /// HTK's `2595 log10(1 + f / 700)`.
    Htk,
}

/// Which features the network sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureType {
    /// Log-mel spectrogram in dB, `n_mels` rows.
    Logmel,
    /// MFCC, `n_mfcc` rows.
    Mfcc,
}

/// Front-end settings (a recipe's `[data.options.frontend]`; every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontEndConfig {
    /// Sample rate the audio is resampled to (Hz).
    pub sample_rate: u32,
    /// FFT size.
    pub n_fft: usize,
    /// Window length (≤ `n_fft`; the window is centred in the FFT frame).
    pub win_length: usize,
    /// Hop between frames (samples).
    pub hop_length: usize,
    /// Mel bands.
    pub n_mels: usize,
    /// Lowest filter edge (Hz).
    pub fmin: f64,
    /// Highest filter edge (Hz; default: Nyquist).
    pub fmax: Option<f64>,
    /// Mel scale.
    pub mel_scale: MelScale,
    /// Pad the signal by `n_fft / 2` zeros on each side so frame t is centred at `t * hop`.
    pub center: bool,
    /// Clip dB values to `max - top_db` (none by default).
    pub top_db: Option<f64>,
    /// Which features the network sees.
    pub features: FeatureType,
    /// MFCC coefficients (when `features = "mfcc"`).
    pub n_mfcc: usize,
    /// Frames per example: shorter clips are zero-padded (centred), longer ones centre-cropped.
    pub frames: usize,
    /// Normalise each utterance to zero mean and unit variance (over all its cells, before padding).
    pub normalize: bool,
}

impl Default for FrontEndConfig {
    fn default() -> Self {
        Self {
            sample_rate: 8000,
            n_fft: 512,
            win_length: 512,
            hop_length: 256,
            n_mels: 40,
            fmin: 0.0,
            fmax: None,
            mel_scale: MelScale::Slaney,
            center: true,
            top_db: None,
            features: FeatureType::Logmel,
            n_mfcc: 20,
            frames: 32,
            normalize: true,
        }
    }
}

impl FrontEndConfig {
    /// Checks every value, naming the key (`data.options.frontend.KEY`) of the first bad one.
    pub fn validate(&self) -> Result<()> {
        let err = |k: &str, m: String| Err(Error::config(format!("data.options.frontend.{k}"), m));
        if !(super::wav::MIN_RATE..=super::wav::MAX_RATE).contains(&self.sample_rate) {
            return err(
                "sample_rate",
                format!("{} Hz is outside 1000..=384000", self.sample_rate),
            );
        }
        if self.n_fft < 16 {
            return err("n_fft", format!("must be at least 16, got {}", self.n_fft));
        }
        if self.win_length == 0 || self.win_length > self.n_fft {
            return err(
                "win_length",
                format!(
                    "must be in 1..={} (n_fft), got {}",
                    self.n_fft, self.win_length
                ),
            );
        }
        if self.hop_length == 0 {
            return err("hop_length", "must be positive".into());
        }
        if self.n_mels == 0 {
            return err("n_mels", "must be positive".into());
        }
        let nyq = self.sample_rate as f64 / 2.0;
        let fmax = self.fmax.unwrap_or(nyq);
        if !(self.fmin >= 0.0 && self.fmin < fmax && fmax <= nyq) {
            return err(
                "fmin",
                format!(
                    "need 0 <= fmin < fmax <= {nyq} (Nyquist), got fmin {} fmax {fmax}",
                    self.fmin
                ),
            );
        }
        if self.features == FeatureType::Mfcc && (self.n_mfcc == 0 || self.n_mfcc > self.n_mels) {
            return err(
                "n_mfcc",
                format!(
                    "must be in 1..={} (n_mels), got {}",
                    self.n_mels, self.n_mfcc
                ),
            );
        }
        if self.frames == 0 {
            return err("frames", "must be positive".into());
        }
        if let Some(t) = self.top_db {
            if t.is_nan() || t <= 0.0 {
                return err("top_db", format!("must be positive, got {t}"));
            }
        }
        Ok(())
    }

    /// Rows of the feature matrix (`n_mels` or `n_mfcc`).
    pub fn rows(&self) -> usize {
        match self.features {
            FeatureType::Logmel => self.n_mels,
            FeatureType::Mfcc => self.n_mfcc,
        }
    }
}

/// Hz → mel.
pub fn hz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = 6.4f64.ln() / 27.0;
            if f >= min_log_hz {
                min_log_mel + (f / min_log_hz).ln() / logstep
            } else {
                f / f_sp
            }
        }
    }
}

/// Mel → Hz.
pub fn mel_to_hz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = 6.4f64.ln() / 27.0;
            if m >= min_log_mel {
                min_log_hz * (logstep * (m - min_log_mel)).exp()
            } else {
                f_sp * m
            }
        }
    }
}

/// Triangular mel filters `[n_mels][n_fft / 2 + 1]` with Slaney area normalisation (librosa's `mel()` with
/// `norm="slaney"`).
pub fn mel_filterbank(
    sr: f64,
    n_fft: usize,
    n_mels: usize,
    fmin: f64,
    fmax: f64,
    scale: MelScale,
) -> Vec<Vec<f64>> {
    let n_bins = n_fft / 2 + 1;
    let fft_f: Vec<f64> = (0..n_bins).map(|k| k as f64 * sr / n_fft as f64).collect();
    let (mlo, mhi) = (hz_to_mel(fmin, scale), hz_to_mel(fmax, scale));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(mlo + (mhi - mlo) * i as f64 / (n_mels + 1) as f64, scale))
        .collect();
    (0..n_mels)
        .map(|i| {
            let (l, c, u) = (mel_f[i], mel_f[i + 1], mel_f[i + 2]);
            let enorm = 2.0 / (u - l);
            fft_f
                .iter()
                .map(|&f| {
                    let lower = (f - l) / (c - l);
                    let upper = (u - f) / (u - c);
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// A front end with its window, filterbank and FFT plan prepared once.
pub struct FrontEnd {
    cfg: FrontEndConfig,
    window: Vec<f64>,
    filters: Vec<Vec<f64>>,
    fft: Arc<dyn Fft<f64>>,
}

impl std::fmt::Debug for FrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontEnd").field("cfg", &self.cfg).finish()
    }
}

impl FrontEnd {
    /// Validates `cfg` and prepares the window, filters and FFT plan.
    pub fn new(cfg: FrontEndConfig) -> Result<Self> {
        cfg.validate()?;
        // periodic Hann of win_length, centred in n_fft (librosa/scipy get_window(fftbins=True) + pad_center)
        let mut window = vec![0.0; cfg.n_fft];
        let off = (cfg.n_fft - cfg.win_length) / 2;
        for i in 0..cfg.win_length {
            window[off + i] = 0.5 - 0.5 * (2.0 * PI * i as f64 / cfg.win_length as f64).cos();
        }
        let sr = cfg.sample_rate as f64;
        let fmax = cfg.fmax.unwrap_or(sr / 2.0);
        let filters = mel_filterbank(sr, cfg.n_fft, cfg.n_mels, cfg.fmin, fmax, cfg.mel_scale);
        let fft = FftPlanner::new().plan_fft_forward(cfg.n_fft);
        Ok(Self {
            cfg,
            window,
            filters,
            fft,
        })
    }

    /// The settings.
    pub fn config(&self) -> &FrontEndConfig {
        &self.cfg
    }

    /// Power spectrogram `[n_fft / 2 + 1][frames]`: `|FFT(window * frame)|²`.
    pub fn power_spectrogram(&self, x: &[f32]) -> Vec<Vec<f64>> {
        let n_fft = self.cfg.n_fft;
        let hop = self.cfg.hop_length;
        let pad = if self.cfg.center { n_fft / 2 } else { 0 };
        let mut padded = vec![0.0f64; x.len() + 2 * pad];
        for (d, s) in padded[pad..].iter_mut().zip(x) {
            *d = *s as f64;
        }
        let n_frames = if padded.len() >= n_fft {
            1 + (padded.len() - n_fft) / hop
        } else {
            0
        };
        let n_bins = n_fft / 2 + 1;
        let mut out = vec![vec![0.0; n_frames]; n_bins];
        let mut buf = vec![Complex::new(0.0, 0.0); n_fft];
        for t in 0..n_frames {
            let frame = &padded[t * hop..t * hop + n_fft];
            for ((b, &v), &w) in buf.iter_mut().zip(frame).zip(&self.window) {
                *b = Complex::new(v * w, 0.0);
            }
            self.fft.process(&mut buf);
            for (k, row) in out.iter_mut().enumerate() {
                row[t] = buf[k].norm_sqr();
            }
        }
        out
    }

    /// Mel power spectrogram `[n_mels][frames]`.
    pub fn mel_power(&self, x: &[f32]) -> Vec<Vec<f64>> {
        let spec = self.power_spectrogram(x);
        let frames = spec.first().map_or(0, |r| r.len());
        self.filters
            .iter()
            .map(|w| {
                (0..frames)
                    .map(|t| w.iter().zip(&spec).map(|(a, row)| a * row[t]).sum())
                    .collect()
            })
            .collect()
    }

    /// Log-mel spectrogram in dB `[n_mels][frames]`.
    pub fn log_mel(&self, x: &[f32]) -> Vec<Vec<f64>> {
        power_to_db(self.mel_power(x), self.cfg.top_db)
    }

    /// MFCC `[n_mfcc][frames]`: orthonormal DCT-II of the log-mel columns.
    pub fn mfcc(&self, x: &[f32]) -> Vec<Vec<f64>> {
        dct_ortho(&self.log_mel(x), self.cfg.n_mfcc)
    }

    /// The network's input for one clip, `rows x frames` row-major f32: the configured features,
    /// normalised per utterance (optional), centre-padded with zeros or centre-cropped to `frames`.
    pub fn features(&self, x: &[f32]) -> Vec<f32> {
        let mut m = match self.cfg.features {
            FeatureType::Logmel => self.log_mel(x),
            FeatureType::Mfcc => self.mfcc(x),
        };
        if self.cfg.normalize {
            normalize_utterance(&mut m);
        }
        fix_length(&m, self.cfg.frames)
    }
}

/// `10 log10(max(S, 1e-10))`, clipped to `max - top_db` when given (librosa's `power_to_db` with `ref=1.0`).
pub fn power_to_db(s: Vec<Vec<f64>>, top_db: Option<f64>) -> Vec<Vec<f64>> {
    let mut db: Vec<Vec<f64>> = s
        .into_iter()
        .map(|r| r.into_iter().map(|v| 10.0 * v.max(1e-10).log10()).collect())
        .collect();
    if let Some(top) = top_db {
        let max = db
            .iter()
            .flatten()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        for v in db.iter_mut().flatten() {
            *v = v.max(max - top);
        }
    }
    db
}

/// Orthonormal DCT-II over the rows of `m` (`[n][frames]`), keeping the first `k` coefficients
/// (scipy's `dct(type=2, norm="ortho", axis=0)`).
pub fn dct_ortho(m: &[Vec<f64>], k: usize) -> Vec<Vec<f64>> {
    let n = m.len();
    let frames = m.first().map_or(0, |r| r.len());
    (0..k)
        .map(|q| {
            let scale = if q == 0 {
                (1.0 / n as f64).sqrt()
            } else {
                (2.0 / n as f64).sqrt()
            };
            let basis: Vec<f64> = (0..n)
                .map(|i| scale * (PI * q as f64 * (2 * i + 1) as f64 / (2 * n) as f64).cos())
                .collect();
            (0..frames)
                .map(|t| basis.iter().zip(m).map(|(b, r)| b * r[t]).sum())
                .collect()
        })
        .collect()
}

/// Zero mean, unit variance over all cells of `m` (a constant matrix becomes all zeros).
pub fn normalize_utterance(m: &mut [Vec<f64>]) {
    let n = m.iter().map(|r| r.len()).sum::<usize>();
    if n == 0 {
        return;
    }
    let mean = m.iter().flatten().sum::<f64>() / n as f64;
    let var = m.iter().flatten().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    let inv = if var > 1e-12 { 1.0 / var.sqrt() } else { 0.0 };
    for v in m.iter_mut().flatten() {
        *v = (*v - mean) * inv;
    }
}

/// `[rows][t]` → row-major `rows x frames` f32: centred zero padding when `t < frames`, a centre crop when longer.
pub fn fix_length(m: &[Vec<f64>], frames: usize) -> Vec<f32> {
    let rows = m.len();
    let mut out = vec![0.0f32; rows * frames];
    for (r, row) in m.iter().enumerate() {
        let t = row.len();
        if t <= frames {
            let off = (frames - t) / 2;
            for (i, v) in row.iter().enumerate() {
                out[r * frames + off + i] = *v as f32;
            }
        } else {
            let off = (t - frames) / 2;
            for i in 0..frames {
                out[r * frames + i] = row[off + i] as f32;
            }
        }
    }
    out
}

/// SpecAugment (Park et al. 2019) masks without time warping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecAugment {
    /// Frequency masks per example.
    pub freq_masks: usize,
    /// Largest frequency mask width F (bands; the width is drawn from 0..=F).
    pub freq_width: usize,
    /// Time masks per example.
    pub time_masks: usize,
    /// Largest time mask width T (frames).
    pub time_width: usize,
}

impl SpecAugment {
    /// Parses `specaugment` (2 frequency masks ≤ 5 bands, 2 time masks ≤ 4 frames) or
    /// `specaugment:NF:F:NT:T`.
    pub fn parse(name: &str) -> Result<Self> {
        let bad = || Error::Unknown {
            what: "augmentation",
            name: name.to_string(),
            known: "none, specaugment, specaugment:NF:F:NT:T (e.g. specaugment:2:5:2:4)".into(),
        };
        if name == "specaugment" {
            return Ok(Self {
                freq_masks: 2,
                freq_width: 5,
                time_masks: 2,
                time_width: 4,
            });
        }
        let rest = name.strip_prefix("specaugment:").ok_or_else(bad)?;
        let v: Vec<usize> = rest
            .split(':')
            .map(|s| s.parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad())?;
        match v[..] {
            [nf, f, nt, t] => Ok(Self {
                freq_masks: nf,
                freq_width: f,
                time_masks: nt,
                time_width: t,
            }),
            _ => Err(bad()),
        }
    }

    /// Masks (sets to 0, the utterance mean after normalisation) bands and frames of one `rows x frames`
    /// row-major example in place.
    pub fn apply(&self, x: &mut [f32], rows: usize, frames: usize, rng: &mut Rng) {
        for _ in 0..self.freq_masks {
            let w = rng.below(self.freq_width.min(rows) + 1);
            let f0 = rng.below(rows - w + 1);
            for r in f0..f0 + w {
                x[r * frames..(r + 1) * frames].fill(0.0);
            }
        }
        for _ in 0..self.time_masks {
            let w = rng.below(self.time_width.min(frames) + 1);
            let t0 = rng.below(frames - w + 1);
            for r in 0..rows {
                x[r * frames + t0..r * frames + t0 + w].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scales_round_trip_and_match_known_points() {
        // HTK: 1000 Hz = 2595 log10(1 + 1000/700) = 999.98553713962 mel (librosa.hz_to_mel(1000, htk=True)); Slaney: 1000 Hz = 15 mel exactly.
        assert!((hz_to_mel(1000.0, MelScale::Htk) - 999.985_537_139_6).abs() < 1e-9);
        assert!((hz_to_mel(1000.0, MelScale::Slaney) - 15.0).abs() < 1e-12);
        for s in [MelScale::Htk, MelScale::Slaney] {
            for f in [0.0, 123.0, 999.0, 1000.0, 3999.0] {
                assert!((mel_to_hz(hz_to_mel(f, s), s) - f).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn dct_of_a_constant_is_only_c0() {
        let m = vec![vec![2.0; 3]; 8];
        let c = dct_ortho(&m, 4);
        // ortho DCT-II of a constant a over N: c0 = a sqrt(N), others 0
        assert!((c[0][0] - 2.0 * 8f64.sqrt()).abs() < 1e-12);
        for row in &c[1..] {
            assert!(row.iter().all(|v| v.abs() < 1e-12));
        }
    }

    #[test]
    fn fix_length_pads_centred_and_crops_centred() {
        let m = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        assert_eq!(
            fix_length(&m, 4),
            vec![0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0]
        );
        let m = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0]];
        assert_eq!(fix_length(&m, 2), vec![2.0, 3.0]);
    }

    #[test]
    fn normalisation_gives_zero_mean_unit_variance() {
        let mut m = vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]];
        normalize_utterance(&mut m);
        let v: Vec<f64> = m.concat();
        let mean = v.iter().sum::<f64>() / 6.0;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 6.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
        // (1 - 3.5) / sqrt(35/12)
        assert!((m[0][0] + 2.5 / (35.0f64 / 12.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn specaugment_masks_whole_bands_and_frames_within_limits() {
        let aug = SpecAugment::parse("specaugment:1:3:1:2").unwrap();
        assert_eq!(aug.freq_width, 3);
        let (rows, frames) = (10, 12);
        for seed in 0..50 {
            let mut x = vec![1.0f32; rows * frames];
            aug.apply(&mut x, rows, frames, &mut Rng::new(seed));
            let zero_rows = (0..rows)
                .filter(|r| x[r * frames..(r + 1) * frames].iter().all(|v| *v == 0.0))
                .count();
            let zero_cols = (0..frames)
                .filter(|t| (0..rows).all(|r| x[r * frames + t] == 0.0))
                .count();
            assert!(zero_rows <= 3 && zero_cols <= 2, "seed {seed}");
            let zeros = x.iter().filter(|v| **v == 0.0).count();
            assert_eq!(
                zeros,
                zero_rows * frames + zero_cols * rows - zero_rows * zero_cols
            );
        }
        assert!(SpecAugment::parse("specaugment:1:2").is_err());
        assert!(SpecAugment::parse("jitter2").is_err());
    }

    #[test]
    fn bad_config_names_the_key() {
        let cfg = FrontEndConfig {
            win_length: 1024,
            ..Default::default()
        };
        let e = FrontEnd::new(cfg).unwrap_err().to_string();
        assert!(e.contains("data.options.frontend.win_length"), "{e}");
        let cfg = FrontEndConfig {
            fmax: Some(5000.0),
            ..Default::default()
        };
        assert!(FrontEnd::new(cfg)
            .unwrap_err()
            .to_string()
            .contains("Nyquist"));
    }
}
