//! Checks of a file on disk against what a card says of it: size, sha256, md5, or the sha256 of its
//! gunzipped bytes.

use std::{fs, io::Read, path::Path};

use md5::Md5;
use sha2::{Digest, Sha256};

/// What a card pins of one file.
#[derive(Default, Clone, Copy)]
pub struct Expect<'a> {
    /// Bytes.
    pub size: Option<u64>,
    /// sha256 (hex).
    pub sha256: Option<&'a str>,
    /// md5 (hex).
    pub md5: Option<&'a str>,
    /// sha256 of the gunzipped bytes (hex).
    pub uncompressed_sha256: Option<&'a str>,
}

impl<'a> From<&'a crate::card::FileSpec> for Expect<'a> {
    fn from(f: &'a crate::card::FileSpec) -> Self {
        Expect {
            size: f.size,
            sha256: f.sha256.as_deref(),
            md5: f.md5.as_deref(),
            uncompressed_sha256: f.uncompressed_sha256.as_deref(),
        }
    }
}

impl<'a> From<&'a crate::card::Upstream> for Expect<'a> {
    fn from(u: &'a crate::card::Upstream) -> Self {
        Expect {
            size: u.size,
            sha256: u.sha256.as_deref(),
            md5: u.md5.as_deref(),
            uncompressed_sha256: None,
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is wrong with the file at `path`, or `Ok(sha256)` when it matches `want`.
pub fn check_file(path: &Path, want: Expect) -> Result<String, String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Err("not a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("missing".into()),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(size) = want.size {
        if meta.len() != size {
            return Err(format!(
                "wrong size: expected {size} bytes, found {}",
                meta.len()
            ));
        }
    }
    let mut sha = Sha256::new();
    let mut md5 = Md5::new();
    let mut file = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        if want.md5.is_some() {
            md5.update(&buf[..n]);
        }
    }
    let sha = hex(&sha.finalize());
    if let Some(w) = want.sha256 {
        if !sha.eq_ignore_ascii_case(w) {
            return Err(format!("sha256 mismatch: expected {w}, found {sha}"));
        }
    }
    if let Some(w) = want.md5 {
        let got = hex(&md5.finalize());
        if !got.eq_ignore_ascii_case(w) {
            return Err(format!("md5 mismatch: expected {w}, found {got}"));
        }
    }
    if let Some(w) = want.uncompressed_sha256 {
        let file = fs::File::open(path).map_err(|e| e.to_string())?;
        let mut dec = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
        let mut h = Sha256::new();
        loop {
            let n = dec
                .read(&mut buf)
                .map_err(|e| format!("not a valid gzip file: {e}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let got = hex(&h.finalize());
        if !got.eq_ignore_ascii_case(w) {
            return Err(format!(
                "sha256 of the gunzipped bytes mismatch: expected {w}, found {got}"
            ));
        }
    }
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_digests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        // sha256("abc") and md5("abc"), as published in FIPS 180-2 and RFC 1321
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let md5 = "900150983cd24fb0d6963f7d28e17f72";
        let ok = Expect {
            size: Some(3),
            sha256: Some(sha),
            md5: Some(md5),
            uncompressed_sha256: None,
        };
        assert_eq!(check_file(&p, ok).unwrap(), sha);
        let e = check_file(
            &p,
            Expect {
                size: Some(4),
                ..ok
            },
        )
        .unwrap_err();
        assert!(e.contains("expected 4 bytes, found 3"), "{e}");
        let e = check_file(
            &p,
            Expect {
                md5: Some(&"0".repeat(32)),
                ..ok
            },
        )
        .unwrap_err();
        assert!(e.contains("md5 mismatch"), "{e}");
        assert_eq!(
            check_file(&dir.path().join("nope"), ok).unwrap_err(),
            "missing"
        );
    }
}
