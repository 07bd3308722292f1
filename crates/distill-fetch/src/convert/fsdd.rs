//! FSDD: `index.tsv` and `speakers.tsv` from the recordings and the repository's `metadata.py`.
//!
//! * `index.tsv` (`file, digit, speaker, index, split, num_samples`): one row per `recordings/D_SPEAKER_I.wav`,
//!   ordered by speaker name, digit, then index; `split` is the repository's own (index 0–4 test, the rest
//!   train); `num_samples` is the WAV data chunk's length in frames (the RIFF header is checked: PCM).
//! * `speakers.tsv` (`speaker, gender, accent, language`): `metadata.py`'s dictionary in its order, read by a
//!   small parser of Python string/dict literals (nothing is executed).

use std::{fs, path::Path};

use anyhow::{anyhow, bail, Context, Result};

/// Writes `index.tsv` and `speakers.tsv` into `out` (whose `recordings/` is in place).
pub fn convert(sources: &Path, out: &Path) -> Result<()> {
    let meta_path = sources.join("metadata.py");
    let meta = fs::read_to_string(&meta_path).with_context(|| meta_path.display().to_string())?;
    let speakers = parse_metadata(&meta).map_err(|e| anyhow!("{}: {e}", meta_path.display()))?;
    let mut tsv = String::from("speaker\tgender\taccent\tlanguage\n");
    for (name, fields) in &speakers {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| anyhow!("{}: speaker `{name}` has no `{k}`", meta_path.display()))
        };
        tsv.push_str(&format!(
            "{name}\t{}\t{}\t{}\n",
            get("gender")?,
            get("accent")?,
            get("language")?
        ));
    }
    fs::write(out.join("speakers.tsv"), tsv).context("writing speakers.tsv")?;

    let rec = out.join("recordings");
    let mut rows = Vec::new();
    for e in fs::read_dir(&rec).with_context(|| rec.display().to_string())? {
        let e = e.with_context(|| rec.display().to_string())?;
        let file = e.file_name().to_string_lossy().to_string();
        if !file.ends_with(".wav") {
            continue;
        }
        let (digit, speaker, index) = parse_name(&file).ok_or_else(|| {
            anyhow!(
                "{}: expected DIGIT_SPEAKER_INDEX.wav",
                rec.join(&file).display()
            )
        })?;
        if !speakers.iter().any(|(s, _)| *s == speaker) {
            bail!(
                "{}: speaker `{speaker}` is not in metadata.py",
                rec.join(&file).display()
            );
        }
        let bytes = fs::read(e.path()).with_context(|| e.path().display().to_string())?;
        let frames = wav_frames(&bytes).map_err(|m| anyhow!("{}: {m}", e.path().display()))?;
        rows.push((digit, speaker, index, file, frames));
    }
    if rows.is_empty() {
        bail!("{}: no recordings", rec.display());
    }
    rows.sort_by(|a, b| (&a.1, a.0, a.2).cmp(&(&b.1, b.0, b.2)));
    let mut index = String::from("file\tdigit\tspeaker\tindex\tsplit\tnum_samples\n");
    for (digit, speaker, i, file, frames) in rows {
        let split = if i < 5 { "test" } else { "train" };
        index.push_str(&format!(
            "{file}\t{digit}\t{speaker}\t{i}\t{split}\t{frames}\n"
        ));
    }
    fs::write(out.join("index.tsv"), index).context("writing index.tsv")?;
    Ok(())
}

/// `7_theo_42.wav` -> (7, "theo", 42).
fn parse_name(file: &str) -> Option<(u32, String, u32)> {
    let stem = file.strip_suffix(".wav")?;
    let mut parts = stem.split('_');
    let digit = parts.next()?.parse().ok()?;
    let speaker = parts.next()?.to_string();
    let index = parts.next()?.parse().ok()?;
    (parts.next().is_none() && digit < 10 && !speaker.is_empty()).then_some((digit, speaker, index))
}

/// The number of frames of a PCM WAV file (data chunk bytes / block align).
pub fn wav_frames(b: &[u8]) -> std::result::Result<u64, String> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut pos = 12usize;
    let mut block_align = None;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body = pos + 8;
        match id {
            b"fmt " => {
                let f = b.get(body..body + 16).ok_or("the fmt chunk is cut short")?;
                let format = u16::from_le_bytes([f[0], f[1]]);
                if format != 1 && format != 0xfffe {
                    return Err(format!("format {format} is not PCM"));
                }
                let align = u16::from_le_bytes([f[12], f[13]]);
                if align == 0 {
                    return Err("block align 0".into());
                }
                block_align = Some(align as u64);
            }
            b"data" => {
                let align = block_align.ok_or("a data chunk before the fmt chunk")?;
                let avail = (b.len() - body) as u64;
                if (len as u64) > avail {
                    return Err(format!(
                        "the data chunk says {len} bytes, the file has {avail}"
                    ));
                }
                return Ok(len as u64 / align);
            }
            _ => {}
        }
        pos = body
            .checked_add(len + (len & 1))
            .ok_or("a chunk length overflows")?;
    }
    Err("no data chunk".into())
}

/// A speaker's fields, in order.
type Fields = Vec<(String, String)>;

/// The `metadata = { 'name': { 'key': 'value', ... }, ... }` dictionary of FSDD's metadata.py.
fn parse_metadata(text: &str) -> std::result::Result<Vec<(String, Fields)>, String> {
    let start = text
        .find("metadata")
        .and_then(|i| text[i..].find('{').map(|j| i + j))
        .ok_or("no `metadata = {` dictionary")?;
    let toks = tokens(&text[start..])?;
    let mut t = toks.iter().peekable();
    let expect = |want: &Tok, t: &mut std::iter::Peekable<std::slice::Iter<Tok>>| match t.next() {
        Some(x) if x == want => Ok(()),
        other => Err(format!("expected {want:?}, found {other:?}")),
    };
    expect(&Tok::Open, &mut t)?;
    let mut out = Vec::new();
    loop {
        match t.next() {
            Some(Tok::Close) => break,
            Some(Tok::Str(name)) => {
                expect(&Tok::Colon, &mut t)?;
                expect(&Tok::Open, &mut t)?;
                let mut fields = Vec::new();
                loop {
                    match t.next() {
                        Some(Tok::Close) => break,
                        Some(Tok::Str(k)) => {
                            expect(&Tok::Colon, &mut t)?;
                            match t.next() {
                                Some(Tok::Str(v)) => fields.push((k.clone(), v.clone())),
                                other => {
                                    return Err(format!(
                                        "`{k}`: expected a string, found {other:?}"
                                    ))
                                }
                            }
                            if t.peek() == Some(&&Tok::Comma) {
                                t.next();
                            }
                        }
                        other => return Err(format!("in `{name}`: unexpected {other:?}")),
                    }
                }
                out.push((name.clone(), fields));
                if t.peek() == Some(&&Tok::Comma) {
                    t.next();
                }
            }
            other => return Err(format!("unexpected {other:?} in the dictionary")),
        }
    }
    if out.is_empty() {
        return Err("the metadata dictionary is empty".into());
    }
    Ok(out)
}

#[derive(Debug, PartialEq)]
enum Tok {
    Open,
    Close,
    Colon,
    Comma,
    Str(String),
}

/// Tokens of a Python dict literal of plain strings, up to its closing brace.
fn tokens(s: &str) -> std::result::Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                depth += 1;
                out.push(Tok::Open)
            }
            '}' => {
                out.push(Tok::Close);
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(out);
                }
            }
            ':' => out.push(Tok::Colon),
            ',' => out.push(Tok::Comma),
            '\'' | '"' => {
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') | Some('\n') | None => {
                            return Err(
                                "a string with an escape or without its closing quote".into()
                            )
                        }
                        Some(ch) => v.push(ch),
                    }
                }
                out.push(Tok::Str(v));
            }
            '#' => {
                for ch in chars.by_ref() {
                    if ch == '\n' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() => {}
            other => return Err(format!("unexpected `{other}` in the dictionary")),
        }
    }
    Err("the dictionary is not closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(frames: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + frames * 2).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&[1, 0, 1, 0]);
        b.extend_from_slice(&8000u32.to_le_bytes());
        b.extend_from_slice(&16000u32.to_le_bytes());
        b.extend_from_slice(&[2, 0, 16, 0]);
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(frames * 2).to_le_bytes());
        b.resize(b.len() + frames as usize * 2, 0);
        b
    }

    #[test]
    fn index_and_speakers_from_names_headers_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("s"), dir.path().join("o"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(out.join("recordings")).unwrap();
        fs::write(
            src.join("metadata.py"),
            "\"\"\"doc\"\"\"\n\nmetadata = {\n    'zed': {\n\t'gender': 'male', 'accent': 'X/y',\n\t'language': 'english'\n    },\n    \"amy\": {'gender': 'female', 'accent': 'Z', 'language': 'english'},\n}\n",
        )
        .unwrap();
        for (name, n) in [
            ("1_zed_10.wav", 7),
            ("1_zed_2.wav", 5),
            ("0_zed_0.wav", 3),
            ("1_amy_0.wav", 4),
        ] {
            fs::write(out.join("recordings").join(name), wav(n)).unwrap();
        }
        convert(&src, &out).unwrap();
        assert_eq!(
            fs::read_to_string(out.join("speakers.tsv")).unwrap(),
            "speaker\tgender\taccent\tlanguage\nzed\tmale\tX/y\tenglish\namy\tfemale\tZ\tenglish\n"
        );
        assert_eq!(
            fs::read_to_string(out.join("index.tsv")).unwrap(),
            "file\tdigit\tspeaker\tindex\tsplit\tnum_samples\n1_amy_0.wav\t1\tamy\t0\ttest\t4\n0_zed_0.wav\t0\tzed\t0\ttest\t3\n1_zed_2.wav\t1\tzed\t2\ttest\t5\n1_zed_10.wav\t1\tzed\t10\ttrain\t7\n"
        );
        fs::write(out.join("recordings/2_bob_0.wav"), wav(1)).unwrap();
        let e = convert(&src, &out).unwrap_err().to_string();
        assert!(e.contains("2_bob_0.wav") && e.contains("`bob`"), "{e}");
        fs::remove_file(out.join("recordings/2_bob_0.wav")).unwrap();
        fs::write(out.join("recordings/2_amy_0.wav"), &wav(4)[..30]).unwrap();
        let e = convert(&src, &out).unwrap_err().to_string();
        assert!(
            e.contains("2_amy_0.wav") && e.contains("fmt chunk is cut short"),
            "{e}"
        );
    }

    #[test]
    fn bad_metadata_is_an_error_not_a_panic() {
        for bad in [
            "x = 1",
            "metadata = {'a': {'g': 1}}",
            "metadata = {'a': {'g': 'm'",
            "metadata = {}",
        ] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }
    }
}
