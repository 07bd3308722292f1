//! Data files read raw or else gzipped, and the checks that name a missing data set with the way to get it.

use std::io::Read;
use std::path::{Path, PathBuf};

use distill_nn::{Error, Result};

/// How to get the data set `dataset`: the hint every "not found" error carries.
pub fn fetch_hint(dataset: &str) -> String {
    format!("download it with `distill data fetch {dataset}`, or set DISTILL_DATA to the folder that holds it")
}

/// Checks that `dir`, the folder of the data set `dataset`, exists; the error says how to get it.
pub fn check_dir(dir: &Path, dataset: &str) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::data(
            dir,
            format!(
                "{dataset} data directory not found; {}",
                fetch_hint(dataset)
            ),
        ));
    }
    Ok(())
}

/// A file's bytes, decompressed when it is gzip. A decompression error does not lose what was decoded
/// before it: the bytes read so far come back with the error, so a truncated stream can be reported by size.
#[derive(Debug)]
pub struct FileBytes {
    /// The file the bytes come from (named in errors).
    pub path: PathBuf,
    /// The bytes, decompressed when `path` ends in `.gz`.
    pub bytes: Vec<u8>,
    /// The error that ended decompression early, if any.
    pub gz_error: Option<std::io::Error>,
}

impl FileBytes {
    /// A file's bytes as read from `path`: decompressed when the name ends in `.gz`.
    pub fn new(path: PathBuf, bytes: Vec<u8>) -> FileBytes {
        if path.extension().is_some_and(|e| e == "gz") {
            let mut out = Vec::with_capacity(bytes.len().saturating_mul(5));
            let mut dec = flate2::read::GzDecoder::new(bytes.as_slice());
            let gz_error = dec.read_to_end(&mut out).err();
            FileBytes {
                path,
                bytes: out,
                gz_error,
            }
        } else {
            FileBytes {
                path,
                bytes,
                gz_error: None,
            }
        }
    }
}

/// Reads `dir/name`, or else `dir/name.gz` decompressed (the raw file wins when both exist). When neither
/// exists the error names the missing folder or file of the data set `dataset` and how to fetch it.
pub fn read_raw_or_gz(dir: &Path, name: &str, dataset: &str) -> Result<FileBytes> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    for path in [raw.clone(), gz] {
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            return Ok(FileBytes::new(path, bytes));
        }
    }
    check_dir(dir, dataset)?;
    Err(Error::data(
        &raw,
        format!(
            "not found (nor {}.gz); {}",
            raw.file_name().unwrap_or_default().to_string_lossy(),
            fetch_hint(dataset)
        ),
    ))
}
