//! Log-mel and MFCC against values librosa 0.11.0 produced (`tests/fixtures/make_fixtures.py`, which
//! documents the signal and the librosa calls). Tolerance: 1e-3 on dB-scaled values (the fixture is rounded
//! to 1e-6; both sides compute in float64, the observed error is far below the bound).

use distill_audio::data::frontend::{dct_ortho, power_to_db, FrontEnd, FrontEndConfig, MelScale};

const TOL: f64 = 1e-3;

fn signal(n: usize, sr: f64) -> Vec<f32> {
    // the script's signal, in f64, then f32 (the front end's input type)
    (0..n)
        .map(|i| {
            let t = i as f64 / sr;
            let pi2 = 2.0 * std::f64::consts::PI;
            (0.5 * (pi2 * 440.0 * t).sin()
                + 0.25 * (pi2 * (200.0 * t + 1500.0 * t * t)).sin()
                + 0.1 * (pi2 * 3100.0 * t).sin() * (-3.0 * t).exp()) as f32
        })
        .collect()
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>], what: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: rows");
    let mut m = 0.0f64;
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len(), "{what}: frames");
        for (x, y) in ra.iter().zip(rb) {
            m = m.max((x - y).abs());
        }
    }
    m
}

#[test]
fn logmel_and_mfcc_match_librosa() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/librosa_reference.json"),
    )
    .unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sr = r["sample_rate"].as_u64().unwrap() as u32;
    let x = signal(r["n"].as_u64().unwrap() as usize, sr as f64);
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let p = &case["params"];
        let cfg = FrontEndConfig {
            sample_rate: sr,
            n_fft: p["n_fft"].as_u64().unwrap() as usize,
            win_length: p["win_length"].as_u64().unwrap() as usize,
            hop_length: p["hop_length"].as_u64().unwrap() as usize,
            n_mels: p["n_mels"].as_u64().unwrap() as usize,
            fmin: p["fmin"].as_f64().unwrap_or(0.0),
            fmax: p["fmax"].as_f64(),
            mel_scale: if p["htk"].as_bool().unwrap() {
                MelScale::Htk
            } else {
                MelScale::Slaney
            },
            ..Default::default()
        };
        let name = case["name"].as_str().unwrap();
        let fe = FrontEnd::new(cfg).unwrap();
        let ours = fe.log_mel(&x);
        let want = matrix(&case["logmel_db"]);
        let d = max_abs_diff(&ours, &want, name);
        eprintln!(
            "{name}: log-mel max |diff| = {d:.2e} dB over {}x{}",
            want.len(),
            want[0].len()
        );
        assert!(d <= TOL, "{name}: log-mel differs by {d} dB");

        let top = power_to_db(fe.mel_power(&x), Some(80.0));
        let d = max_abs_diff(&top, &matrix(&case["logmel_db_top80"]), name);
        assert!(d <= TOL, "{name}: top_db=80 log-mel differs by {d} dB");

        let mfcc = dct_ortho(&ours, 13);
        let want = matrix(&case["mfcc13"]);
        let d = max_abs_diff(&mfcc, &want, name);
        eprintln!("{name}: MFCC max |diff| = {d:.2e}");
        assert!(d <= TOL, "{name}: MFCC differs by {d}");
    }
}
