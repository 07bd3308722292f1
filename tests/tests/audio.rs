//! The audio plugin end to end through the CLI: a synthetic folder-per-class data set (two tones, one class
//! recorded at 16 kHz stereo so resampling and down-mixing run) with bad files mixed in. The shipped FSDD
//! recipe on the real data set is checked in tests/bench.rs, on the quick suite's run of it.

use std::path::Path;

use distill_tests::*;

/// A 16-bit PCM WAV of a sine at `freq` Hz (interleaved identical channels).
fn tone_wav(path: &Path, freq: f64, rate: u32, channels: u16, n: usize, phase: f64) {
    let mut data = Vec::with_capacity(n * 2 * channels as usize);
    for i in 0..n {
        let v = (0.4
            * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64 + phase).sin()
            * 32767.0) as i16;
        for _ in 0..channels {
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    let block = 2 * channels;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * block as u32).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(path, b).unwrap();
}

/// `data/tones/{low,high}/*.wav` + testing_list.txt, and two bad files in the training part.
fn write_tones(dir: &Path) {
    let root = dir.join("data/tones");
    let mut testing = String::new();
    for (class, freq, rate, ch) in [("low", 300.0, 8000, 1), ("high", 2500.0, 16000, 2)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..24 {
            let name = format!("spk{}_nohash_{i}.wav", i % 3);
            let n = rate as usize / 4 + 97 * i;
            tone_wav(
                &root.join(class).join(&name),
                freq + 7.0 * i as f64,
                rate,
                ch,
                n,
                i as f64,
            );
            if i % 4 == 0 {
                testing.push_str(&format!("{class}/{name}\n"));
            }
        }
    }
    std::fs::write(root.join("testing_list.txt"), testing).unwrap();
    std::fs::write(root.join("low/broken.wav"), b"RIFF\x10\x00\x00\x00WAVEjunk").unwrap();
    std::fs::write(root.join("high/empty.wav"), b"").unwrap();
}

fn recipe(skip: bool) -> String {
    format!(
        r#"
name = "tones"
plugin = "audio-classification"
dataset = "audio-folder"
[data]
batch_size = 16
eval_batch_size = 64
[data.options]
root = "tones"
skip_bad_files = {skip}
frontend = {{ n_mels = 20, frames = 12 }}
[teacher]
model = {{ arch = "res-cnn", widths = [8, 8, 8, 8] }}
epochs = 3
optimizer = {{ kind = "adamw", lr = 0.01 }}
[student]
model = {{ arch = "ds-cnn", width = 8, blocks = 1 }}
epochs = 3
augment = "specaugment:1:2:1:2"
optimizer = {{ kind = "adamw", lr = 0.01 }}
[distill]
losses = [{{ name = "kd", temperature = 4.0, weight = 0.9 }}, {{ name = "ce", weight = 0.1 }},
          {{ name = "hint", student_feature = "block1", teacher_feature = "layer1", weight = 1.0 }}]
"#
    )
}

#[test]
fn bad_files_stop_the_run_or_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    write_tones(tmp.path());
    std::fs::write(tmp.path().join("r.toml"), recipe(false)).unwrap();
    let o = run_in(tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("broken.wav") || e.contains("empty.wav"), "{e}");
    assert!(e.contains("skip_bad_files"), "{e}");
    assert!(!e.contains("panicked"), "{e}");

    std::fs::write(tmp.path().join("r.toml"), recipe(true)).unwrap();
    let o = run_in(tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    let run = &r["runs"][0];
    let notes = &run["notes"];
    assert_eq!(notes["skipped_files"], 2, "{notes}");
    // 48 good clips: 12 in testing_list.txt, 36 train
    assert_eq!(notes["test_clips"], 12);
    assert_eq!(notes["train_clips"], 36);
    assert_eq!(notes["classes"], serde_json::json!(["high", "low"]));
    let skipped = notes["skipped"].to_string();
    assert!(
        skipped.contains("broken.wav") && skipped.contains("empty.wav"),
        "{skipped}"
    );
    let md = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    assert!(md.contains("skipped_files: 2"), "{md}");
    // parameter counts: res-cnn 8-8-8-8 and ds-cnn 8x1 (BN buffers included), from the layer shapes
    let bn = |c: usize| 4 * c;
    // BasicBlock: conv3x3 + bn + conv3x3 + bn, plus a 1x1 conv + bn shortcut when it downsamples
    let block = |c: usize, ds: bool| 18 * c * c + 2 * bn(c) + if ds { c * c + bn(c) } else { 0 };
    // stem (stride 2), layer1 (stride 1: identity shortcut), layer2 and layer3 (stride 2), fc
    let teacher = 9 * 8 + bn(8) + block(8, false) + 2 * block(8, true) + 8 * 2 + 2;
    let student = 9 * 8 + bn(8) + (9 * 8 + bn(8) + 8 * 8 + bn(8)) + 8 * 2 + 2;
    assert_eq!(run["teacher"]["params"], teacher);
    assert_eq!(run["scratch"]["params"], student);
    for p in ["teacher", "scratch", "distilled"] {
        let acc = run[p]["metric"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{p}: {acc}");
    }
}

/// FSDD's validation split is fixed (repetitions 5-9 of the training recordings): a recipe asking for another
/// number of validation clips is refused with the number to use, before any training.
#[test]
fn fsdd_validation_must_be_the_repetitions_5_to_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data/fsdd");
    std::fs::create_dir_all(dir.join("recordings")).unwrap();
    let mut index = String::from("file\tdigit\tspeaker\tindex\tsplit\tnum_samples\n");
    for digit in 0..2u32 {
        for rep in 0..12u32 {
            let file = format!("{digit}_a_{rep}.wav");
            tone_wav(
                &dir.join("recordings").join(&file),
                300.0 + 900.0 * digit as f64,
                8000,
                1,
                2000,
                rep as f64,
            );
            let split = if rep < 5 { "test" } else { "train" };
            index.push_str(&format!("{file}\t{digit}\ta\t{rep}\t{split}\t2000\n"));
        }
    }
    std::fs::write(dir.join("index.tsv"), index).unwrap();
    let recipe = |validation: usize| {
        recipe(false)
            .replace("dataset = \"audio-folder\"", "dataset = \"fsdd\"")
            .replace("root = \"tones\"", "split = \"official\"")
            .replace(
                "eval_batch_size = 64",
                &format!("eval_batch_size = 64\nvalidation = {validation}"),
            )
    };
    std::fs::write(tmp.path().join("r.toml"), recipe(3)).unwrap();
    let o = run_in(tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("data.validation") && e.contains("set data.validation to 10 (or 0)"),
        "{e}"
    );
    // 2 digits x reps 5-9 = 10 validation clips; reps 10 and 11 (4 clips) train
    std::fs::write(tmp.path().join("r.toml"), recipe(10)).unwrap();
    let o = run_in(tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    let notes = &r["runs"][0]["notes"];
    assert_eq!(notes["validation_clips"], 10, "{notes}");
    assert_eq!(notes["train_clips"], 4, "{notes}");
    assert_eq!(notes["test_clips"], 10, "{notes}");
}
