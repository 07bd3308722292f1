//! Bad WAV inputs: each gives an error that names the file and says what is wrong (never a panic).

use std::path::Path;

use distill_audio::data::wav::{decode_wav, read_wav};

/// A PCM WAV header + data with the given fields (sizes as declared, data as given).
fn wav(
    format: u16,
    channels: u16,
    rate: u32,
    bits: u16,
    declared_data: u32,
    data: &[u8],
) -> Vec<u8> {
    let block = channels.max(1) * bits / 8;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + declared_data).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * block as u32).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&declared_data.to_le_bytes());
    b.extend_from_slice(data);
    b
}

fn err(bytes: &[u8]) -> String {
    decode_wav(bytes, Path::new("clips/x.wav"))
        .unwrap_err()
        .to_string()
}

#[test]
fn a_good_header_decodes() {
    let a = decode_wav(
        &wav(1, 1, 8000, 16, 4, &[0, 64, 0, 192]),
        Path::new("ok.wav"),
    )
    .unwrap();
    assert_eq!(a.samples, vec![0.5, -0.5]);
}

#[test]
fn empty_file() {
    let e = err(&[]);
    assert!(
        e.starts_with("clips/x.wav: ") && e.contains("empty file"),
        "{e}"
    );
}

#[test]
fn not_a_wav() {
    let e = err(b"ID3\x03\x00 this is an mp3, honest");
    assert!(
        e.starts_with("clips/x.wav: ") && e.contains("not a WAV file"),
        "{e}"
    );
    let e = err(b"RIFF");
    assert!(e.contains("not a WAV file"), "{e}");
}

#[test]
fn truncated_header() {
    let full = wav(1, 1, 8000, 16, 4, &[0, 64, 0, 192]);
    let e = err(&full[..30]);
    assert!(
        e.starts_with("clips/x.wav: ") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn truncated_data() {
    // declares 1000 bytes (500 samples), holds 6
    let e = err(&wav(1, 1, 8000, 16, 1000, &[0, 1, 0, 2, 0, 3]));
    assert!(
        e.starts_with("clips/x.wav: ") && e.contains("truncated"),
        "{e}"
    );
    assert!(e.contains("500 samples"), "{e}");
}

#[test]
fn zero_channels() {
    let e = err(&wav(1, 0, 8000, 16, 4, &[0, 0, 0, 0]));
    assert!(
        e.starts_with("clips/x.wav: ") && e.contains("0 channels"),
        "{e}"
    );
}

#[test]
fn absurd_sample_rates() {
    for rate in [0u32, 7, 10_000_000] {
        let e = err(&wav(1, 1, rate, 16, 4, &[0, 0, 0, 0]));
        assert!(e.starts_with("clips/x.wav: "), "{e}");
        assert!(
            e.contains("sample rate") || e.contains("invalid WAV"),
            "rate {rate}: {e}"
        );
    }
    let e = err(&wav(1, 1, 10_000_000, 16, 4, &[0, 0, 0, 0]));
    assert!(
        e.contains("10000000 Hz is outside the supported range"),
        "{e}"
    );
}

#[test]
fn unsupported_encoding() {
    // format 6 = A-law
    let e = err(&wav(6, 1, 8000, 8, 2, &[1, 2]));
    assert!(e.starts_with("clips/x.wav: "), "{e}");
    assert!(
        e.contains("unsupported") || e.contains("invalid WAV"),
        "{e}"
    );
}

#[test]
fn no_samples() {
    let e = err(&wav(1, 1, 8000, 16, 0, &[]));
    assert!(e.contains("no samples"), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let e = read_wav(Path::new("/nonexistent/dir/a.wav"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/dir/a.wav"), "{e}");
}
