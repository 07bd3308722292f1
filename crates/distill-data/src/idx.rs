//! The IDX format of MNIST and its relatives: a 4-byte magic number (`0x0000_08_nd` for unsigned bytes
//! with `nd` dimensions), `nd` big-endian `u32` dimensions, then the payload, row-major. Every check names
//! the file: wrong magic (with a hint when the file is gzip without a `.gz` name), truncated header or
//! payload (with the decompressed size when the gzip stream ends early), trailing bytes.

use std::path::Path;

use distill_nn::{Error, Result};

use crate::files::{read_raw_or_gz, FileBytes};

/// The magic number of an IDX file of unsigned bytes with 3 dimensions (images: count, rows, columns).
pub const IDX_IMAGES_MAGIC: u32 = 2051;
/// The magic number of an IDX file of unsigned bytes with 1 dimension (labels: count).
pub const IDX_LABELS_MAGIC: u32 = 2049;

/// Reads the IDX file `dir/name` (or `dir/name.gz`) of the data set `dataset` and parses it with
/// [`parse_idx`].
pub fn read_idx_file(
    dir: &Path,
    name: &str,
    dataset: &str,
    magic: u32,
    ndims: usize,
) -> Result<(Vec<usize>, Vec<u8>)> {
    parse_idx(read_raw_or_gz(dir, name, dataset)?, magic, ndims)
}

/// Parses an IDX file with `ndims` dimensions and the given magic number: returns the dimensions and the
/// payload, checking that the payload is exactly as long as the header says.
pub fn parse_idx(file: FileBytes, magic: u32, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let FileBytes {
        path,
        mut bytes,
        gz_error,
    } = file;
    let gz_note = if gz_error.is_some() {
        " (after decompression: the gzip stream ends early)"
    } else {
        ""
    };
    let header = 4 + 4 * ndims;
    let u32_at = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if bytes.len() < 4 {
        return Err(Error::data(
            &path,
            format!(
                "truncated: expected at least {header} header bytes, found {}{gz_note}",
                bytes.len()
            ),
        ));
    }
    let found_magic = u32_at(&bytes, 0);
    if found_magic != magic {
        let kind = if magic == IDX_IMAGES_MAGIC {
            "images (idx3-ubyte)"
        } else {
            "labels (idx1-ubyte)"
        };
        let mut msg = format!(
            "bad magic number {found_magic} (0x{found_magic:08x}); an IDX {kind} file starts with {magic}"
        );
        if bytes[..2] == [0x1f, 0x8b] {
            msg.push_str("; the file looks gzip-compressed: name it with a .gz suffix");
        }
        return Err(Error::data(&path, msg));
    }
    if bytes.len() < header {
        return Err(Error::data(
            &path,
            format!(
                "truncated: expected at least {header} header bytes, found {}{gz_note}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| u32_at(&bytes, 4 + 4 * d) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|p| p.checked_add(header))
        .unwrap_or(usize::MAX);
    if bytes.len() < expected {
        return Err(Error::data(
            &path,
            format!(
                "truncated: expected {expected} bytes, found {}{gz_note} (the header gives dimensions {dims:?})",
                bytes.len()
            ),
        ));
    }
    if bytes.len() > expected {
        return Err(Error::data(
            &path,
            format!(
                "{} unexpected trailing bytes: expected {expected} bytes (header {dims:?}), found {}",
                bytes.len() - expected,
                bytes.len()
            ),
        ));
    }
    if let Some(e) = gz_error {
        return Err(Error::data(
            &path,
            format!("truncated or corrupt gzip stream: {e}"),
        ));
    }
    bytes.drain(..header);
    Ok((dims, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(name: &str, bytes: Vec<u8>) -> FileBytes {
        FileBytes::new(PathBuf::from(name), bytes)
    }

    fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
        std::iter::once(magic)
            .chain(dims.iter().copied())
            .flat_map(u32::to_be_bytes)
            .collect()
    }

    #[test]
    fn dims_and_payload() -> Result<()> {
        let mut b = header(IDX_IMAGES_MAGIC, &[2, 1, 3]);
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let (dims, data) = parse_idx(file("x-idx3-ubyte", b), IDX_IMAGES_MAGIC, 3)?;
        assert_eq!(dims, [2, 1, 3]);
        assert_eq!(data, [1, 2, 3, 4, 5, 6]);
        Ok(())
    }

    #[test]
    fn short_and_huge_headers_are_errors_not_panics() {
        for (bytes, what) in [
            (vec![], "found 0"),
            (vec![0, 0, 8], "found 3"),
            (
                header(IDX_IMAGES_MAGIC, &[1]),
                "expected at least 16 header bytes, found 8",
            ),
            (vec![0x1f, 0x8b, 8, 3], "looks gzip-compressed"),
        ] {
            let e = parse_idx(file("short-file", bytes), IDX_IMAGES_MAGIC, 3)
                .unwrap_err()
                .to_string();
            assert!(e.contains("short-file") && e.contains(what), "{e}");
        }
        // dimensions whose product overflows: reported as truncated, never allocated
        let b = header(IDX_IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX]);
        let e = parse_idx(file("big", b), IDX_IMAGES_MAGIC, 3).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
