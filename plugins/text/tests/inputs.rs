//! Text inputs: the TSV readers' errors (each names the file and line), length grouping, and model-spec
//! mistakes. No data or model files needed.

use std::path::PathBuf;

use distill_core::Rng;
use distill_text::data::{group_by_length, read_labelled_tsv, read_pairs_tsv};

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err_labelled(bytes: &[u8]) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = write(&d, "train.tsv", bytes);
    let e = read_labelled_tsv(&p, 2).unwrap_err().to_string();
    assert!(e.contains("train.tsv"), "no file name in: {e}");
    e
}

#[test]
fn a_good_sst2_file_reads_with_line_numbers() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "t.tsv",
        b"sentence\tlabel\nit 's good . \t1\r\nbad \t0\n",
    );
    let r = read_labelled_tsv(&p, 2).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].line, r[0].text.as_str(), r[0].label),
        (2, "it 's good .", 1)
    );
    assert_eq!((r[1].line, r[1].text.as_str(), r[1].label), (3, "bad", 0));
}

#[test]
fn malformed_labelled_lines_are_errors_with_their_line() {
    let cases: &[(&[u8], &[&str])] = &[
        (b"", &["is empty"]),
        (b"text\tlabel\nx\t1\n", &["line 1", "header"]),
        (b"sentence\tlabel\n", &["no sentences"]),
        (
            b"sentence\tlabel\ngood\t1\n\nbad\t0\n",
            &["line 3", "empty line"],
        ),
        (b"sentence\tlabel\ngood 1\n", &["line 2", "no tab"]),
        (b"sentence\tlabel\n \t1\n", &["line 2", "empty sentence"]),
        (
            b"sentence\tlabel\ngood\tpositive\n",
            &["line 2", "`positive`", "not a class number"],
        ),
        (
            b"sentence\tlabel\ngood\t1\nbad\t2\n",
            &["line 3", "label 2", "2 classes"],
        ),
        (
            b"sentence\tlabel\ngood\t1\nbad \xff\xfe\t0\n",
            &["line 3", "UTF-8"],
        ),
    ];
    for (bytes, needles) in cases {
        let e = err_labelled(bytes);
        for n in *needles {
            assert!(e.contains(n), "`{n}` not in: {e}");
        }
    }
}

#[test]
fn malformed_pairs_are_errors_with_their_line() {
    let d = tempfile::tempdir().unwrap();
    let head = "score\tsentence1\tsentence2\n";
    let good = read_pairs_tsv(&write(
        &d,
        "ok.tsv",
        format!("{head}4.750\tA b.\tA c.\n").as_bytes(),
    ))
    .unwrap();
    assert_eq!(good[0].score, 4.75);
    assert_eq!(
        (good[0].a.as_str(), good[0].b.as_str(), good[0].line),
        ("A b.", "A c.", 2)
    );
    for (body, needles) in [
        (
            "5.000\tonly one\n",
            vec!["line 2", "2 tab-separated fields"],
        ),
        ("high\ta\tb\n", vec!["line 2", "`high`", "not a number"]),
        ("1.0\ta\tb\n7.5\ta\tb\n", vec!["line 3", "outside 0-5"]),
        ("1.0\ta\t \n", vec!["line 2", "empty sentence"]),
    ] {
        let p = write(&d, "bad.tsv", format!("{head}{body}").as_bytes());
        let e = read_pairs_tsv(&p).unwrap_err().to_string();
        assert!(e.contains("bad.tsv"), "{e}");
        for n in needles {
            assert!(e.contains(n), "`{n}` not in: {e}");
        }
    }
    let e = read_pairs_tsv(&write(&d, "h.tsv", b"a\tb\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("header"), "{e}");
    let e = read_pairs_tsv(&d.path().join("missing.tsv"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.tsv"), "{e}");
}

#[test]
fn length_grouping_is_a_permutation_with_little_padding() {
    let lens: Vec<usize> = (0..1000).map(|i| 3 + (i * 7919) % 60).collect();
    let perm = Rng::new(1).permutation(lens.len());
    let grouped = group_by_length(perm.clone(), |i| lens[i], 32, &mut Rng::new(2));
    let mut sorted = grouped.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    let padded = |order: &[usize]| -> usize {
        order
            .chunks(32)
            .map(|c| c.iter().map(|&i| lens[i]).max().unwrap() * c.len())
            .sum()
    };
    let real: usize = lens.iter().sum();
    // random batches pad to ~the longest of 32 (about 2x the real tokens); grouped ones to within a few %
    assert!(padded(&perm) as f64 > 1.6 * real as f64);
    assert!(
        (padded(&grouped) as f64) < 1.1 * real as f64,
        "{} vs {real}",
        padded(&grouped)
    );
    // same seed, same order (a resumed run regroups identically)
    assert_eq!(
        group_by_length(perm, |i| lens[i], 32, &mut Rng::new(2)),
        grouped
    );
}

#[test]
fn model_spec_mistakes_are_clear() {
    use distill_text::models::ModelSpec;
    let parse = |s: &str| {
        ModelSpec::parse(&toml::from_str::<toml::Table>(s).unwrap())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(parse("arch = \"gpt\"").contains("unknown text architecture `gpt`"));
    assert!(parse("arch = \"bert\"\ninit = \"zeros\"")
        .contains("`zeros` is not one of: pretrained, random"));
    assert!(parse("arch = \"bert\"\npooling = \"max\"").contains("model.pooling"));
    assert!(
        parse("arch = \"bert\"\ninit = \"random\"\nfreeze_embeddings = true")
            .contains("freeze_embeddings")
    );
    assert!(parse("arch = \"bert\"\nlayer = 3").contains("unknown field `layer`"));
}
