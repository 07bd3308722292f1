//! WAV reading (hound): 8/16/24/32-bit integer and 32-bit float PCM, any channel count (down-mixed to mono
//! by averaging), resampled to the model's rate with a windowed-sinc (band-limited) resampler.
//!
//! Every failure is an [`Error::Data`] naming the file: empty, not a RIFF/WAVE file, truncated sample data,
//! zero channels, a sample rate outside [`MIN_RATE`]..=[`MAX_RATE`], an unsupported sample format, or no
//! samples at all.
//!
//! ```
//! # fn main() -> distill_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("tone.wav");
//! let spec = hound::WavSpec { channels: 2, sample_rate: 16000, bits_per_sample: 16,
//!     sample_format: hound::SampleFormat::Int };
//! let mut w = hound::WavWriter::create(&path, spec).unwrap();
//! for _ in 0..1600 { w.write_sample(16384i16).unwrap(); w.write_sample(0i16).unwrap(); }
//! w.finalize().unwrap();
//! let audio = distill_audio::data::wav::read_wav(&path)?;
//! assert_eq!((audio.sample_rate, audio.samples.len()), (16000, 1600));
//! assert!((audio.samples[10] - 0.25).abs() < 1e-6); // (0.5 + 0) / 2
//! # Ok(()) }
//! ```

use std::path::Path;

use distill_core::{Error, Result};

/// Lowest sample rate accepted (Hz).
pub const MIN_RATE: u32 = 1000;
/// Highest sample rate accepted (Hz).
pub const MAX_RATE: u32 = 384_000;

/// Mono audio in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples, down-mixed to one channel.
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

/// Reads a WAV file and down-mixes it to mono (see the module docs for what is accepted).
pub fn read_wav(path: &Path) -> Result<Audio> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_wav(&bytes, path)
}

/// Decodes WAV bytes; `path` only names the source in errors.
pub fn decode_wav(bytes: &[u8], path: &Path) -> Result<Audio> {
    let bad = |msg: String| Error::data(path, msg);
    if bytes.is_empty() {
        return Err(bad("empty file (0 bytes), expected a WAV file".into()));
    }
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad(
            "not a WAV file (no RIFF/WAVE header in the first 12 bytes)".into(),
        ));
    }
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| {
        bad(match e {
            hound::Error::IoError(io)
                if io.kind() == std::io::ErrorKind::UnexpectedEof
                    || io.to_string().contains("read enough bytes") =>
            {
                "truncated WAV header (the file ends inside its header chunks)".to_string()
            }
            hound::Error::FormatError(m) if m.contains("zero channels") => {
                "the WAV header declares 0 channels".to_string()
            }
            hound::Error::Unsupported => "unsupported WAV encoding (only integer PCM of 8/16/24/32 bits and 32-bit float are read)".into(),
            other => format!("invalid WAV file: {other}"),
        })
    })?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(bad("the WAV header declares 0 channels".into()));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&spec.sample_rate) {
        return Err(bad(format!(
            "sample rate {} Hz is outside the supported range {MIN_RATE}..={MAX_RATE} Hz",
            spec.sample_rate
        )));
    }
    let declared = reader.len() as usize;
    // every sample takes at least one byte of the file: a header that declares more (up to 4 G samples)
    // must not size the buffer, or a 60-byte file reserves 16 GB
    let capacity = declared.min(bytes.len());
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => collect(reader.into_samples::<f32>(), path, declared, capacity)?,
        (hound::SampleFormat::Int, b @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (b - 1)) as f32;
            collect(reader.into_samples::<i32>(), path, declared, capacity)?
                .into_iter()
                .map(|v| v * scale)
                .collect()
        }
        (f, b) => {
            return Err(bad(format!(
                "unsupported sample format {f:?} with {b} bits (supported: integer 8/16/24/32, float 32)"
            )))
        }
    };
    let ch = spec.channels as usize;
    if !interleaved.len().is_multiple_of(ch) {
        return Err(bad(format!(
            "truncated: {} samples is not a whole number of {ch}-channel frames",
            interleaved.len()
        )));
    }
    let frames = interleaved.len() / ch;
    if frames == 0 {
        return Err(bad("the WAV file holds no samples".into()));
    }
    let samples = if ch == 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(ch)
            .map(|f| f.iter().sum::<f32>() / ch as f32)
            .collect()
    };
    Ok(Audio {
        samples,
        sample_rate: spec.sample_rate,
    })
}

fn collect<S, I>(it: I, path: &Path, declared: usize, capacity: usize) -> Result<Vec<f32>>
where
    S: ToF32,
    I: Iterator<Item = hound::Result<S>>,
{
    let mut out = Vec::with_capacity(capacity);
    for (i, s) in it.enumerate() {
        match s {
            Ok(v) => out.push(v.to_f32()),
            Err(e) => {
                return Err(Error::data(
                    path,
                    format!(
                        "truncated or corrupt sample data: the header declares {declared} samples, \
                         reading sample {i} failed ({e})"
                    ),
                ))
            }
        }
    }
    Ok(out)
}

trait ToF32 {
    fn to_f32(self) -> f32;
}
impl ToF32 for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}
impl ToF32 for i32 {
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// Number of zero crossings of the sinc kernel on each side (quality of [`resample`]).
pub const RESAMPLE_ZEROS: usize = 16;

/// Resamples `x` from `from` Hz to `to` Hz with a Hann-windowed sinc low-pass at the lower Nyquist
/// frequency (so downsampling does not alias). Output length: `round(len * to / from)`.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let ratio = to as f64 / from as f64;
    let n_out = ((x.len() as f64) * ratio).round().max(1.0) as usize;
    // cutoff relative to the input rate's Nyquist
    let fc = ratio.min(1.0);
    let half = RESAMPLE_ZEROS as f64 / fc; // kernel half width in input samples
    (0..n_out)
        .map(|n| {
            let t = n as f64 / ratio;
            let lo = (t - half).ceil().max(0.0) as usize;
            let hi = ((t + half).floor() as usize).min(x.len() - 1);
            let mut acc = 0.0f64;
            for (k, &xk) in x.iter().enumerate().take(hi + 1).skip(lo) {
                let u = t - k as f64;
                let arg = fc * u;
                let sinc = if arg.abs() < 1e-12 {
                    1.0
                } else {
                    (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg)
                };
                let w = 0.5 + 0.5 * (std::f64::consts::PI * u / half).cos();
                acc += xk as f64 * fc * sinc * w;
            }
            acc as f32
        })
        .collect()
}

/// Reads a WAV file, down-mixes and resamples it to `rate` Hz.
pub fn load_mono(path: &Path, rate: u32) -> Result<Vec<f32>> {
    let a = read_wav(path)?;
    Ok(resample(&a.samples, a.sample_rate, rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hound::{SampleFormat, WavSpec, WavWriter};

    fn write(path: &Path, channels: u16, rate: u32, bits: u16, fmt: SampleFormat, v: &[f64]) {
        let spec = WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: fmt,
        };
        let mut w = WavWriter::create(path, spec).unwrap();
        for &s in v {
            match fmt {
                SampleFormat::Float => w.write_sample(s as f32).unwrap(),
                SampleFormat::Int => {
                    let m = (1i64 << (bits - 1)) as f64;
                    let q = (s * m).round().clamp(-m, m - 1.0) as i32;
                    match bits {
                        8 => w.write_sample(q as i8).unwrap(),
                        16 => w.write_sample(q as i16).unwrap(),
                        _ => w.write_sample(q).unwrap(),
                    }
                }
            }
        }
        w.finalize().unwrap();
    }

    /// Found while reviewing the fuzz target (fuzz/regressions/wav/huge-declared-data-chunk): a data chunk
    /// that declares 0xFFFFFFF0 bytes sized the sample buffer from the header (8.6 GB reserved for a
    /// 64-byte file). Now the buffer is bounded by the file and the short data is an error.
    #[test]
    fn a_data_chunk_declaring_4_gb_is_an_error_not_a_huge_allocation() {
        let mut b = b"RIFF\xf0\xff\xff\xffWAVEfmt \x10\0\0\0".to_vec();
        b.extend_from_slice(&[1, 0, 1, 0, 0x40, 0x1f, 0, 0, 0x80, 0x3e, 0, 0, 2, 0, 16, 0]);
        b.extend_from_slice(b"data\xf0\xff\xff\xff");
        b.extend_from_slice(&[1, 0].repeat(10));
        let e = decode_wav(&b, Path::new("big.wav"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("big.wav") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn every_supported_format_reads_back_the_written_values() {
        let dir = tempfile::tempdir().unwrap();
        let v = [0.5, -0.25, 0.125, -1.0, 0.0, 0.75];
        for (bits, fmt, tol) in [
            (8u16, SampleFormat::Int, 1.0 / 128.0),
            (16, SampleFormat::Int, 1.0 / 32768.0),
            (24, SampleFormat::Int, 1e-6),
            (32, SampleFormat::Int, 1e-6),
            (32, SampleFormat::Float, 0.0),
        ] {
            let p = dir.path().join(format!("{bits}{fmt:?}.wav"));
            write(&p, 1, 8000, bits, fmt, &v);
            let a = read_wav(&p).unwrap();
            assert_eq!(a.sample_rate, 8000);
            assert_eq!(a.samples.len(), v.len(), "{bits} {fmt:?}");
            for (x, y) in a.samples.iter().zip(v) {
                assert!((*x as f64 - y).abs() <= tol, "{bits} {fmt:?}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn multichannel_is_averaged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("3ch.wav");
        // frames (0.5, 0.25, -0.75) and (0.3, 0.3, 0.3)
        write(
            &p,
            3,
            8000,
            32,
            SampleFormat::Float,
            &[0.5, 0.25, -0.75, 0.3, 0.3, 0.3],
        );
        let a = read_wav(&p).unwrap();
        assert_eq!(a.samples.len(), 2);
        assert!((a.samples[0] - 0.0).abs() < 1e-7);
        assert!((a.samples[1] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn resampling_keeps_an_in_band_sine_and_removes_an_out_of_band_one() {
        let sine = |f: f64, rate: f64, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (2.0 * std::f64::consts::PI * f * i as f64 / rate).sin() as f32)
                .collect()
        };
        // 16 kHz -> 8 kHz: a 440 Hz tone is the same tone sampled at 8 kHz (away from the edges)
        let y = resample(&sine(440.0, 16000.0, 16000), 16000, 8000);
        assert_eq!(y.len(), 8000);
        let expect = sine(440.0, 8000.0, 8000);
        let err = y[200..7800]
            .iter()
            .zip(&expect[200..7800])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-2, "max error {err}");
        // a 6 kHz tone is above the 4 kHz Nyquist of the output: it must be (nearly) removed, not aliased
        let y = resample(&sine(6000.0, 16000.0, 16000), 16000, 8000);
        let rms = (y[200..7800].iter().map(|v| v * v).sum::<f32>() / 7600.0).sqrt();
        assert!(rms < 0.02, "rms {rms}");
        // upsampling 8 kHz -> 16 kHz
        let y = resample(&sine(300.0, 8000.0, 8000), 8000, 16000);
        let expect = sine(300.0, 16000.0, 16000);
        let err = y[400..15600]
            .iter()
            .zip(&expect[400..15600])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-2, "max error {err}");
    }
}
