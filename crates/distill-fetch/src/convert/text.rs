//! SST-2 and STS-B from their upstream text files.
//!
//! * SST-2: SentEval's copy of the binary SST (GitHub PrincetonML/SIF, `data/sentiment-{train,dev,test}`,
//!   `<sentence> \t<label>` lines) gets GLUE's header line `sentence\tlabel`: `train.tsv`, `dev.tsv` and
//!   `test_labeled.tsv` (the bodies of train and dev are byte-identical to GLUE's SST-2).
//! * STS-B: the original `sts-{train,dev,test}.csv` (tab-separated `genre, file, year, id, score, sentence1,
//!   sentence2[, license, source]`, no quoting), downloaded into `raw/`, become `score\tsentence1\tsentence2`
//!   with a header, each sentence stripped of outer whitespace.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

/// Reads a UTF-8 text file, naming it in errors.
fn read(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| path.display().to_string())?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", path.display()))
}

/// SST-2: `sentence\tlabel` + each SentEval file, after checking its lines.
pub fn convert_sst2(sources: &Path, out: &Path) -> Result<()> {
    for (from, to) in [
        ("sentiment-train", "train.tsv"),
        ("sentiment-dev", "dev.tsv"),
        ("sentiment-test", "test_labeled.tsv"),
    ] {
        let path = sources.join(from);
        let body = read(&path)?;
        for (i, line) in body.lines().enumerate() {
            let ok = line
                .rsplit_once('\t')
                .is_some_and(|(s, l)| !s.is_empty() && (l == "0" || l == "1"));
            if !ok {
                bail!(
                    "{}:{}: expected `<sentence>\\t<0 or 1>`, found `{}`",
                    path.display(),
                    i + 1,
                    line.chars().take(80).collect::<String>()
                );
            }
        }
        let mut text = String::with_capacity(body.len() + 16);
        text.push_str("sentence\tlabel\n");
        text.push_str(&body);
        let dest = out.join(to);
        fs::write(&dest, text).with_context(|| dest.display().to_string())?;
    }
    Ok(())
}

/// STS-B: `raw/sts-*.csv` (already in `out/raw/`) to `{train,dev,test}.tsv`.
pub fn convert_stsb(_sources: &Path, out: &Path) -> Result<()> {
    for (from, to) in [
        ("raw/sts-train.csv", "train.tsv"),
        ("raw/sts-dev.csv", "dev.tsv"),
        ("raw/sts-test.csv", "test.tsv"),
    ] {
        let path = out.join(from);
        let raw = read(&path)?;
        let mut text = String::from("score\tsentence1\tsentence2\n");
        for (i, line) in raw.lines().enumerate() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 7 && f.len() != 9 {
                bail!(
                    "{}:{}: expected 7 tab-separated fields (or 9 with license and source), found {}",
                    path.display(),
                    i + 1,
                    f.len()
                );
            }
            let score = f[4];
            let ok = score.parse::<f64>().is_ok_and(|s| (0.0..=5.0).contains(&s));
            if !ok {
                bail!(
                    "{}:{}: score `{score}` is not a number from 0 to 5",
                    path.display(),
                    i + 1
                );
            }
            text.push_str(&format!("{score}\t{}\t{}\n", f[5].trim(), f[6].trim()));
        }
        let dest = out.join(to);
        fs::write(&dest, text).with_context(|| dest.display().to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sst2_gets_a_header_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("s"), dir.path().join("o"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&out).unwrap();
        for f in ["sentiment-train", "sentiment-dev", "sentiment-test"] {
            fs::write(src.join(f), "good . \t1\nbad . \t0\n").unwrap();
        }
        convert_sst2(&src, &out).unwrap();
        assert_eq!(
            fs::read_to_string(out.join("dev.tsv")).unwrap(),
            "sentence\tlabel\ngood . \t1\nbad . \t0\n"
        );
        fs::write(src.join("sentiment-dev"), "good . \t1\nno label here\n").unwrap();
        let e = convert_sst2(&src, &out).unwrap_err().to_string();
        assert!(
            e.contains("sentiment-dev:2") && e.contains("no label here"),
            "{e}"
        );
    }

    #[test]
    fn stsb_keeps_score_and_stripped_sentences() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        fs::create_dir_all(out.join("raw")).unwrap();
        let line =
            "main-news\theadlines\t2013\t0001\t3.800\t A man runs. \tA man is running.\tCC\tsrc\n";
        for f in ["sts-train.csv", "sts-dev.csv", "sts-test.csv"] {
            fs::write(out.join("raw").join(f), line).unwrap();
        }
        convert_stsb(out, out).unwrap();
        assert_eq!(
            fs::read_to_string(out.join("test.tsv")).unwrap(),
            "score\tsentence1\tsentence2\n3.800\tA man runs.\tA man is running.\n"
        );
        fs::write(out.join("raw/sts-dev.csv"), "a\tb\tc\n").unwrap();
        let e = convert_stsb(out, out).unwrap_err().to_string();
        assert!(e.contains("sts-dev.csv:1") && e.contains("found 3"), "{e}");
        fs::write(out.join("raw/sts-dev.csv"), "a\tb\tc\td\t9.1\tx\ty\n").unwrap();
        let e = convert_stsb(out, out).unwrap_err().to_string();
        assert!(e.contains("`9.1`"), "{e}");
    }
}
