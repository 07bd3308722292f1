//! MNIST: the images and labels of a split read from the four IDX files, raw or gzipped, with every
//! check of the format and of the labels (0-9, as many as images) naming the file.

use std::path::Path;

use distill_nn::{Error, Result};

use crate::files::{check_dir, read_raw_or_gz, FileBytes};
use crate::idx::{parse_idx, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};

/// One MNIST split as bytes: `count` images of `rows x cols` pixels, row-major, one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnistSet {
    /// `count * rows * cols` pixel values, 0-255.
    pub pixels: Vec<u8>,
    /// `count` labels, each 0-9.
    pub labels: Vec<u32>,
    /// The number of images.
    pub count: usize,
    /// Pixel rows per image (28 for MNIST).
    pub rows: usize,
    /// Pixel columns per image (28 for MNIST).
    pub cols: usize,
}

/// Loads the training (`train`) or test split of MNIST from `dir`, which holds `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or gzipped
/// (`.gz`; the raw file wins when both exist).
pub fn load_mnist(dir: &Path, train: bool) -> Result<MnistSet> {
    check_dir(dir, "mnist")?;
    let prefix = if train { "train" } else { "t10k" };
    let images = read_raw_or_gz(dir, &format!("{prefix}-images-idx3-ubyte"), "mnist")?;
    let labels = read_raw_or_gz(dir, &format!("{prefix}-labels-idx1-ubyte"), "mnist")?;
    mnist_from_files(images, labels)
}

/// Decodes an MNIST images file and its labels file from their bytes (the parser of [`load_mnist`], also
/// the entry point of the fuzz target `idx`). A path ending in `.gz` is decompressed first; the paths
/// otherwise only name the files in errors.
pub fn decode_mnist(
    images_path: &Path,
    images: Vec<u8>,
    labels_path: &Path,
    labels: Vec<u8>,
) -> Result<MnistSet> {
    mnist_from_files(
        FileBytes::new(images_path.to_path_buf(), images),
        FileBytes::new(labels_path.to_path_buf(), labels),
    )
}

fn mnist_from_files(images: FileBytes, labels: FileBytes) -> Result<MnistSet> {
    let images_path = images.path.clone();
    let (idims, pixels) = parse_idx(images, IDX_IMAGES_MAGIC, 3)?;
    let labels_path = labels.path.clone();
    let (ldims, label_bytes) = parse_idx(labels, IDX_LABELS_MAGIC, 1)?;
    let (count, rows, cols) = (idims[0], idims[1], idims[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::data(
            &images_path,
            format!("header gives empty {rows}x{cols} images"),
        ));
    }
    if ldims[0] != count {
        return Err(Error::data(
            &labels_path,
            format!(
                "has {} labels but {} has {count} images",
                ldims[0],
                images_path.display()
            ),
        ));
    }
    if let Some((i, &v)) = label_bytes.iter().enumerate().find(|(_, &v)| v >= 10) {
        return Err(Error::data(
            &labels_path,
            format!("label {v} at index {i} is out of range (MNIST labels are 0-9)"),
        ));
    }
    Ok(MnistSet {
        pixels,
        labels: label_bytes.into_iter().map(u32::from).collect(),
        count,
        rows,
        cols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_images(pixels: &[Vec<u8>], rows: usize, cols: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [2051u32, pixels.len() as u32, rows as u32, cols as u32] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for p in pixels {
            assert_eq!(p.len(), rows * cols);
            b.extend_from_slice(p);
        }
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [2049u32, labels.len() as u32] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(labels);
        b
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Three 4x5 images whose pixel j of image i is `10·i + j`, labels 7 0 9.
    fn mnist_fixture() -> (Vec<Vec<u8>>, Vec<u8>) {
        let imgs = (0..3)
            .map(|i| (0..20).map(|j| (10 * i + j) as u8).collect())
            .collect();
        (imgs, vec![7, 0, 9])
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn idx_raw_and_gz() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (imgs, labels) = mnist_fixture();
        // train: raw files; test: gzipped
        write(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx_images(&imgs, 4, 5),
        );
        write(dir.path(), "train-labels-idx1-ubyte", &idx_labels(&labels));
        write(
            dir.path(),
            "t10k-images-idx3-ubyte.gz",
            &gzip(&idx_images(&imgs[..2], 4, 5)),
        );
        write(
            dir.path(),
            "t10k-labels-idx1-ubyte.gz",
            &gzip(&idx_labels(&labels[..2])),
        );
        let train = load_mnist(dir.path(), true)?;
        assert_eq!((train.count, train.rows, train.cols), (3, 4, 5));
        assert_eq!(train.labels, [7, 0, 9]);
        assert_eq!(train.pixels, imgs.concat());
        let test = load_mnist(dir.path(), false)?;
        assert_eq!(test.count, 2);
        assert_eq!(test.labels, [7, 0]);
        assert_eq!(test.pixels, imgs[..2].concat());
        // When both exist, the raw file is read.
        write(dir.path(), "t10k-labels-idx1-ubyte", &idx_labels(&[1, 2]));
        assert_eq!(load_mnist(dir.path(), false)?.labels, [1, 2]);
        Ok(())
    }

    #[test]
    fn idx_truncated_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (imgs, labels) = mnist_fixture();
        let full = idx_images(&imgs, 4, 5); // 16 + 60 bytes
        write(
            dir.path(),
            "train-images-idx3-ubyte",
            &full[..full.len() - 3],
        );
        write(dir.path(), "train-labels-idx1-ubyte", &idx_labels(&labels));
        let e = err_text(load_mnist(dir.path(), true));
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
        assert!(e.contains("truncated: expected 76 bytes, found 73"), "{e}");
        // Truncated header.
        write(dir.path(), "train-images-idx3-ubyte", &full[..10]);
        let e = err_text(load_mnist(dir.path(), true));
        assert!(
            e.contains("truncated: expected at least 16 header bytes, found 10"),
            "{e}"
        );
        // Trailing bytes.
        let mut long = full.clone();
        long.push(0);
        write(dir.path(), "train-images-idx3-ubyte", &long);
        let e = err_text(load_mnist(dir.path(), true));
        assert!(e.contains("1 unexpected trailing bytes"), "{e}");

        // A truncated gzip stream: the decompressed size is reported.
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<Vec<u8>> = (0..50)
            .map(|i| (0..400).map(|j| ((i * 7 + j * 13) % 251) as u8).collect())
            .collect();
        let labels: Vec<u8> = (0..50).map(|i| (i % 10) as u8).collect();
        let gz = gzip(&idx_images(&big, 20, 20));
        write(dir.path(), "t10k-images-idx3-ubyte.gz", &gz[..gz.len() / 2]);
        write(
            dir.path(),
            "t10k-labels-idx1-ubyte.gz",
            &gzip(&idx_labels(&labels)),
        );
        let e = err_text(load_mnist(dir.path(), false));
        assert!(e.contains("t10k-images-idx3-ubyte.gz"), "{e}");
        assert!(e.contains("truncated: expected 20016 bytes"), "{e}");
        assert!(
            e.contains("found") && e.contains("gzip stream ends early"),
            "{e}"
        );
        // Only the gzip trailer (CRC, size) missing: all bytes decode, the stream is still reported.
        write(dir.path(), "t10k-images-idx3-ubyte.gz", &gz[..gz.len() - 4]);
        let e = err_text(load_mnist(dir.path(), false));
        assert!(
            e.contains("t10k-images-idx3-ubyte.gz") && e.contains("truncated"),
            "{e}"
        );
        write(dir.path(), "t10k-images-idx3-ubyte.gz", &gz);
        assert_eq!(load_mnist(dir.path(), false).unwrap().count, 50);
    }

    #[test]
    fn idx_bad_magic_labels_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (imgs, labels) = mnist_fixture();
        // labels file where the images file should be
        write(dir.path(), "train-images-idx3-ubyte", &idx_labels(&labels));
        write(dir.path(), "train-labels-idx1-ubyte", &idx_labels(&labels));
        let e = err_text(load_mnist(dir.path(), true));
        assert!(
            e.contains("train-images-idx3-ubyte") && e.contains("bad magic number 2049"),
            "{e}"
        );
        // a gzip file without the .gz suffix
        write(
            dir.path(),
            "train-images-idx3-ubyte",
            &gzip(&idx_images(&imgs, 4, 5)),
        );
        let e = err_text(load_mnist(dir.path(), true));
        assert!(e.contains("bad magic") && e.contains("gzip"), "{e}");
        write(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx_images(&imgs, 4, 5),
        );
        write(
            dir.path(),
            "train-labels-idx1-ubyte",
            &idx_images(&imgs, 4, 5),
        );
        let e = err_text(load_mnist(dir.path(), true));
        assert!(
            e.contains("train-labels-idx1-ubyte") && e.contains("bad magic number 2051"),
            "{e}"
        );
        write(
            dir.path(),
            "train-labels-idx1-ubyte",
            &idx_labels(&[1, 10, 2]),
        );
        let e = err_text(load_mnist(dir.path(), true));
        assert!(e.contains("label 10 at index 1"), "{e}");
        write(dir.path(), "train-labels-idx1-ubyte", &idx_labels(&[1, 2]));
        let e = err_text(load_mnist(dir.path(), true));
        assert!(
            e.contains("has 2 labels but") && e.contains("3 images"),
            "{e}"
        );
    }

    #[test]
    fn missing_data_suggests_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = err_text(load_mnist(&missing, true));
        assert!(e.contains("nope"), "{e}");
        assert!(
            e.contains("distill data fetch mnist") && e.contains("DISTILL_DATA"),
            "{e}"
        );
        let e = err_text(load_mnist(dir.path(), true));
        assert!(
            e.contains("train-images-idx3-ubyte") && e.contains("not found"),
            "{e}"
        );
        assert!(e.contains("distill data fetch mnist"), "{e}");
    }

    #[test]
    fn decode_names_the_given_paths() {
        let (imgs, labels) = mnist_fixture();
        let set = decode_mnist(
            Path::new("i.gz"),
            gzip(&idx_images(&imgs, 4, 5)),
            Path::new("l"),
            idx_labels(&labels),
        )
        .unwrap();
        assert_eq!((set.count, set.labels.as_slice()), (3, &[7, 0, 9][..]));
        let e = err_text(decode_mnist(
            Path::new("i"),
            idx_images(&imgs, 4, 5),
            Path::new("labels-file"),
            idx_labels(&labels[..1]),
        ));
        assert!(
            e.contains("labels-file") && e.contains("has 1 labels"),
            "{e}"
        );
    }
}
