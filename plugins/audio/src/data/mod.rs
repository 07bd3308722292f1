//! Data: the Free Spoken Digit Dataset (official split and leave-one-speaker-out) and a folder-per-class WAV
//! loader in the Speech Commands layout; features computed once per run and kept in memory.
//!
//! **FSDD** (`<data dir>/fsdd`): `index.tsv` (`file digit speaker index split num_samples`) and
//! `recordings/*.wav`. Official split: repetitions 0-4 are the test set (the `split` column). Leave-one-speaker-
//! out: every recording of one speaker is the test set, the other five speakers' recordings train. In both,
//! the training recordings' repetitions 5-9 ([`FSDD_VALIDATION_REPS`]) are placed last, so
//! `data.validation = <their count>` holds them out as the validation split (every speaker and digit in it).
//!
//! **Folder per class** (Speech Commands): `root/CLASS/*.wav`; folders whose name starts with `_` (e.g.
//! `_background_noise_`) are ignored; `root/testing_list.txt` lists the test clips (`CLASS/file.wav`, one per
//! line) and the optional `root/validation_list.txt` the validation clips, which are placed last in the
//! training set (so `data.validation = <their count>` holds exactly them out). Classes are the folder names,
//! sorted.
//!
//! The readers below it: [`wav`] (WAV decoding and resampling) and [`frontend`] (log-mel / MFCC features and
//! SpecAugment).

pub mod frontend;
pub mod wav;

use std::path::{Path, PathBuf};

use distill_core::{Error, Result};
use rayon::prelude::*;

use frontend::FrontEnd;

/// One labelled recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    /// The WAV file.
    pub path: PathBuf,
    /// Class index.
    pub label: u32,
    /// Speaker, when known.
    pub speaker: Option<String>,
}

/// How FSDD is split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsddSplit {
    /// Repetitions 0-4 test, 5-49 train (the `split` column of `index.tsv`).
    Official,
    /// One speaker's recordings are the test set.
    LeaveOneSpeakerOut(String),
}

/// FSDD's six speakers (`speakers.tsv`), in the order the leave-one-speaker-out recipe runs them.
pub const FSDD_SPEAKERS: &[&str] = &["george", "jackson", "lucas", "nicolas", "theo", "yweweler"];

/// One row of FSDD's `index.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsddEntry {
    /// File name under `recordings/`.
    pub file: String,
    /// Spoken digit.
    pub digit: u32,
    /// Speaker.
    pub speaker: String,
    /// Repetition 0-49.
    pub index: u32,
    /// `train` or `test`.
    pub split: String,
}

/// Reads `dir/index.tsv`.
pub fn fsdd_index(dir: &Path) -> Result<Vec<FsddEntry>> {
    let path = dir.join("index.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let want = "file\tdigit\tspeaker\tindex\tsplit";
    if !header.starts_with(want) {
        return Err(Error::data(
            &path,
            format!(
                "line 1: expected the header `{}`, got `{header}`",
                want.replace('\t', " ")
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |m: &str| Error::data(&path, format!("line {}: {m}: `{line}`", i + 2));
        if f.len() < 5 {
            return Err(bad("expected at least 5 tab-separated fields"));
        }
        let digit: u32 = f[1].parse().map_err(|_| bad("digit is not a number"))?;
        if digit > 9 {
            return Err(bad("digit must be 0-9"));
        }
        let index: u32 = f[3].parse().map_err(|_| bad("index is not a number"))?;
        if f[4] != "train" && f[4] != "test" {
            return Err(bad("split must be `train` or `test`"));
        }
        out.push(FsddEntry {
            file: f[0].to_string(),
            digit,
            speaker: f[2].to_string(),
            index,
            split: f[4].to_string(),
        });
    }
    if out.is_empty() {
        return Err(Error::data(&path, "lists no recordings"));
    }
    Ok(out)
}

/// The repetitions of the training recordings that form FSDD's validation split (placed last by
/// [`fsdd_clips`]).
pub const FSDD_VALIDATION_REPS: std::ops::RangeInclusive<u32> = 5..=9;

/// FSDD's (train, test) clips for `split`, and how many of the training clips (the last ones) are
/// repetitions [`FSDD_VALIDATION_REPS`], the validation split.
pub fn fsdd_clips(dir: &Path, split: &FsddSplit) -> Result<(Vec<Clip>, Vec<Clip>, usize)> {
    let entries = fsdd_index(dir)?;
    if let FsddSplit::LeaveOneSpeakerOut(s) = split {
        if !entries.iter().any(|e| &e.speaker == s) {
            let mut known: Vec<&str> = entries.iter().map(|e| e.speaker.as_str()).collect();
            known.sort();
            known.dedup();
            return Err(Error::Unknown {
                what: "FSDD speaker",
                name: s.clone(),
                known: known.join(", "),
            });
        }
    }
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        let is_test = match split {
            FsddSplit::Official => e.split == "test",
            FsddSplit::LeaveOneSpeakerOut(s) => &e.speaker == s,
        };
        let is_val = FSDD_VALIDATION_REPS.contains(&e.index);
        let clip = Clip {
            path: dir.join("recordings").join(&e.file),
            label: e.digit,
            speaker: Some(e.speaker),
        };
        if is_test {
            test.push(clip)
        } else if is_val {
            val.push(clip)
        } else {
            train.push(clip)
        }
    }
    let n_val = val.len();
    train.extend(val);
    Ok((train, test, n_val))
}

/// A folder-per-class data set: (train, test, class names). See the module docs for the layout.
pub fn folder_clips(root: &Path) -> Result<(Vec<Clip>, Vec<Clip>, Vec<String>)> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut classes: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
        .collect();
    classes.sort();
    if classes.len() < 2 {
        return Err(Error::data(
            root,
            format!(
                "needs at least 2 class folders (root/CLASS/*.wav), found {}",
                classes.len()
            ),
        ));
    }
    let read_list = |name: &str, required: bool| -> Result<Vec<String>> {
        let p = root.join(name);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(t
                .lines()
                .map(|l| l.trim().replace('\\', "/"))
                .filter(|l| !l.is_empty())
                .collect()),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&p, e)),
        }
    };
    let testing: std::collections::HashSet<String> =
        read_list("testing_list.txt", true)?.into_iter().collect();
    let validation: std::collections::HashSet<String> = read_list("validation_list.txt", false)?
        .into_iter()
        .collect();
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.to_ascii_lowercase().ends_with(".wav"))
            .collect();
        files.sort();
        for f in files {
            let rel = format!("{class}/{f}");
            let clip = Clip {
                path: dir.join(&f),
                label: label as u32,
                // Speech Commands names files SPEAKER_nohash_N.wav
                speaker: f.split("_nohash_").next().map(str::to_string),
            };
            if testing.contains(&rel) {
                test.push(clip)
            } else if validation.contains(&rel) {
                val.push(clip)
            } else {
                train.push(clip)
            }
        }
    }
    if test.is_empty() {
        return Err(Error::data(
            root.join("testing_list.txt"),
            "names none of the WAV files found under the class folders",
        ));
    }
    train.extend(val);
    Ok((train, test, classes))
}

/// Features of a list of clips, `rows x frames` each, kept as one flat f32 buffer.
#[derive(Debug, Clone, Default)]
pub struct FeatureSet {
    /// `len * rows * frames` values.
    pub features: Vec<f32>,
    /// Class of each clip.
    pub labels: Vec<u32>,
    /// Feature rows (mel bands or MFCCs).
    pub rows: usize,
    /// Frames.
    pub frames: usize,
}

impl FeatureSet {
    /// Number of clips.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The clips at `idx`.
    pub fn subset(&self, idx: &[usize]) -> Self {
        let n = self.rows * self.frames;
        let mut features = Vec::with_capacity(idx.len() * n);
        for &i in idx {
            features.extend_from_slice(&self.features[i * n..(i + 1) * n]);
        }
        Self {
            features,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            rows: self.rows,
            frames: self.frames,
        }
    }
}

/// Files that could not be read, with the reason.
pub type Skipped = Vec<(PathBuf, String)>;

/// Reads, resamples and featurises `clips` (in parallel). A bad file is an error, or, with `skip_bad_files`,
/// left out and listed in the returned [`Skipped`].
pub fn featurize(
    clips: &[Clip],
    fe: &FrontEnd,
    skip_bad_files: bool,
) -> Result<(FeatureSet, Skipped)> {
    let rate = fe.config().sample_rate;
    let results: Vec<Result<Vec<f32>>> = clips
        .par_iter()
        .map(|c| {
            let x = wav::load_mono(&c.path, rate)?;
            Ok(fe.features(&x))
        })
        .collect();
    let cfg = fe.config();
    let mut set = FeatureSet {
        rows: cfg.rows(),
        frames: cfg.frames,
        ..Default::default()
    };
    let mut skipped = Vec::new();
    for (c, r) in clips.iter().zip(results) {
        match r {
            Ok(f) => {
                set.features.extend_from_slice(&f);
                set.labels.push(c.label);
            }
            Err(e) if skip_bad_files => skipped.push((c.path.clone(), e.to_string())),
            Err(e) => {
                return Err(Error::msg(format!(
                    "{e} (set `skip_bad_files = true` in [data.options] to leave bad files out)"
                )))
            }
        }
    }
    Ok((set, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tone(path: &Path, n: usize) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..n {
            w.write_sample(((i as f32 * 0.2).sin() * 8000.0) as i16)
                .unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn folder_layout_splits_by_the_lists() {
        let d = tempfile::tempdir().unwrap();
        for c in ["yes", "no", "_background_noise_"] {
            std::fs::create_dir(d.path().join(c)).unwrap();
            for f in ["a_nohash_0.wav", "b_nohash_0.wav", "c_nohash_1.wav"] {
                write_tone(&d.path().join(c).join(f), 800);
            }
        }
        std::fs::write(
            d.path().join("testing_list.txt"),
            "yes/a_nohash_0.wav\nno/b_nohash_0.wav\n",
        )
        .unwrap();
        std::fs::write(d.path().join("validation_list.txt"), "yes/c_nohash_1.wav\n").unwrap();
        let (train, test, classes) = folder_clips(d.path()).unwrap();
        assert_eq!(classes, ["no", "yes"]);
        assert_eq!(test.len(), 2);
        assert_eq!(train.len(), 4);
        // the validation clip is last
        assert!(train[3].path.ends_with("yes/c_nohash_1.wav"));
        assert_eq!(train[3].label, 1);
        assert_eq!(train[0].speaker.as_deref(), Some("a"));
        std::fs::remove_file(d.path().join("testing_list.txt")).unwrap();
        let e = folder_clips(d.path()).unwrap_err().to_string();
        assert!(e.contains("testing_list.txt"), "{e}");
    }

    #[test]
    fn fsdd_validation_is_repetitions_5_to_9_of_the_training_recordings_placed_last() {
        let d = tempfile::tempdir().unwrap();
        let mut index = String::from("file\tdigit\tspeaker\tindex\tsplit\tnum_samples\n");
        for speaker in ["a", "b"] {
            for digit in 0..2 {
                for rep in 0..12 {
                    let split = if rep < 5 { "test" } else { "train" };
                    index.push_str(&format!(
                        "{digit}_{speaker}_{rep}.wav\t{digit}\t{speaker}\t{rep}\t{split}\t10\n"
                    ));
                }
            }
        }
        std::fs::write(d.path().join("index.tsv"), index).unwrap();
        let name = |c: &Clip| c.path.file_name().unwrap().to_str().unwrap().to_string();
        let rep = |c: &Clip| {
            name(c)
                .rsplit('_')
                .next()
                .unwrap()
                .trim_end_matches(".wav")
                .parse::<u32>()
                .unwrap()
        };
        // official: reps 0-4 test; of reps 5-11, reps 5-9 (2 speakers x 2 digits x 5 = 20) come last
        let (train, test, n_val) = fsdd_clips(d.path(), &FsddSplit::Official).unwrap();
        assert_eq!((train.len(), test.len(), n_val), (28, 20, 20));
        assert!(
            train[..8].iter().all(|c| rep(c) >= 10),
            "{:?}",
            train.iter().map(name).collect::<Vec<_>>()
        );
        assert!(train[8..].iter().all(|c| (5..=9).contains(&rep(c))));
        assert!(test.iter().all(|c| rep(c) < 5));
        // leave-one-speaker-out: speaker b is the test set; speaker a's reps 5-9 (10 clips) validate
        let split = FsddSplit::LeaveOneSpeakerOut("b".into());
        let (train, test, n_val) = fsdd_clips(d.path(), &split).unwrap();
        assert_eq!((train.len(), test.len(), n_val), (24, 24, 10));
        assert!(train.iter().all(|c| c.speaker.as_deref() == Some("a")));
        assert!(train[14..].iter().all(|c| (5..=9).contains(&rep(c))));
        assert!(train[..14].iter().all(|c| !(5..=9).contains(&rep(c))));
    }

    #[test]
    fn fsdd_index_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("index.tsv"),
            "file\tdigit\tspeaker\tindex\tsplit\tnum_samples\n0_a_0.wav\t0\ta\t0\ttest\t10\n0_a_1.wav\tx\ta\t1\ttrain\t10\n",
        )
        .unwrap();
        let e = fsdd_index(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("index.tsv: line 3: digit is not a number"),
            "{e}"
        );
    }

    #[test]
    fn skip_bad_files_counts_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("good.wav");
        write_tone(&good, 4000);
        let bad = d.path().join("bad.wav");
        std::fs::write(&bad, b"not a wav at all").unwrap();
        let clips = vec![
            Clip {
                path: good.clone(),
                label: 3,
                speaker: None,
            },
            Clip {
                path: bad.clone(),
                label: 1,
                speaker: None,
            },
        ];
        let fe = FrontEnd::new(Default::default()).unwrap();
        let e = featurize(&clips, &fe, false).unwrap_err().to_string();
        assert!(e.contains("bad.wav") && e.contains("skip_bad_files"), "{e}");
        let (set, skipped) = featurize(&clips, &fe, true).unwrap();
        assert_eq!(set.labels, vec![3]);
        assert_eq!(set.features.len(), 40 * 32);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, bad);
    }
}
