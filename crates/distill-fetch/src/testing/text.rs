//! SST-2 and STS-B upstream copies: SentEval's header-less SST files and the original STS-B CSVs, both
//! byte-identical to the real upstream files (the prepared files add only a header, or keep `raw/` as is).

use std::{fs, path::Path};

use anyhow::{anyhow, Context, Result};

/// SST-2: `sentiment-{train,dev,test}` = the prepared TSVs without their header line.
pub fn write_sst2(prepared: &Path, mirror: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(mirror)?;
    for (from, to) in [
        ("train.tsv", "sentiment-train"),
        ("dev.tsv", "sentiment-dev"),
        ("test_labeled.tsv", "sentiment-test"),
    ] {
        let path = prepared.join(from);
        let text = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let body = text
            .strip_prefix("sentence\tlabel\n")
            .ok_or_else(|| anyhow!("{}: no `sentence\\tlabel` header", path.display()))?;
        fs::write(mirror.join(to), body)?;
    }
    Ok(Vec::new())
}

/// STS-B: the original files in `raw/`, copied.
pub fn write_stsb(prepared: &Path, mirror: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(mirror.join("raw"))?;
    for f in [
        "sts-train.csv",
        "sts-dev.csv",
        "sts-test.csv",
        "readme.txt",
        "LICENSE.txt",
    ] {
        let from = prepared.join("raw").join(f);
        fs::copy(&from, mirror.join("raw").join(f)).with_context(|| from.display().to_string())?;
    }
    Ok(Vec::new())
}
