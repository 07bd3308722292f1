//! FSDD upstream copy: the recordings (byte-identical, they are the upstream files) and a `metadata.py`
//! written from `speakers.tsv` (same dictionary, not the upstream file's exact whitespace).

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

/// Writes `recordings/*.wav` and `metadata.py` into `mirror`.
pub fn write_upstream(prepared: &Path, mirror: &Path) -> Result<Vec<String>> {
    let rec = mirror.join("recordings");
    fs::create_dir_all(&rec)?;
    for e in fs::read_dir(prepared.join("recordings"))? {
        let e = e?;
        fs::copy(e.path(), rec.join(e.file_name()))
            .with_context(|| e.path().display().to_string())?;
    }
    let speakers = fs::read_to_string(prepared.join("speakers.tsv"))?;
    let mut py = String::from(
        "\"\"\"A python dictionary to store meta-data about the speakers.\"\"\"\n\nmetadata = {\n",
    );
    for line in speakers.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, gender, accent, language] = f.as_slice() else {
            bail!("speakers.tsv: `{line}` does not have 4 fields");
        };
        py.push_str(&format!(
            "    '{name}': {{\n        'gender': '{gender}',\n        'accent': '{accent}',\n        'language': '{language}'\n    }},\n"
        ));
    }
    py.push_str("}\n");
    fs::write(mirror.join("metadata.py"), py)?;
    Ok(vec!["metadata.py".into()])
}
