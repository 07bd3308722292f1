//! MNIST IDX files through the plugin's public API: a tiny synthetic split written raw and gzipped into a
//! temporary folder reads back as the pixels and labels written ([`load_mnist`] and [`decode_mnist`]), and a
//! truncated file is an error that names it.

use std::{io::Write, path::Path};

use distill_vision::data::{decode_mnist, load_mnist, ImageSet, Split};

/// An IDX3 images file (magic 2051) of `pixels.len()` images of `rows x cols`.
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

/// An IDX1 labels file (magic 2049).
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
fn fixture() -> (Vec<Vec<u8>>, Vec<u8>) {
    let imgs = (0..3)
        .map(|i| (0..20).map(|j| (10 * i + j) as u8).collect())
        .collect();
    (imgs, vec![7, 0, 9])
}

/// The set holds exactly the fixture: one channel of 4x5, the pixels in order, labels 7 0 9, classes 0-9.
fn assert_is_fixture(set: &ImageSet) {
    let (imgs, labels) = fixture();
    assert_eq!(set.len(), 3);
    assert_eq!(set.shape(), [1, 4, 5]);
    assert_eq!(set.images, imgs.concat());
    assert_eq!(
        set.labels,
        labels.iter().map(|&l| l as u32).collect::<Vec<_>>()
    );
    assert_eq!(set.num_classes(), 10);
    assert_eq!(set.classes[7], "7");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
fn raw_idx_files_load_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (imgs, labels) = fixture();
    write(
        dir.path(),
        "train-images-idx3-ubyte",
        &idx_images(&imgs, 4, 5),
    );
    write(dir.path(), "train-labels-idx1-ubyte", &idx_labels(&labels));
    assert_is_fixture(&load_mnist(dir.path(), Split::Train).unwrap());
}

#[test]
fn gzipped_idx_files_load_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (imgs, labels) = fixture();
    write(
        dir.path(),
        "t10k-images-idx3-ubyte.gz",
        &gzip(&idx_images(&imgs, 4, 5)),
    );
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte.gz",
        &gzip(&idx_labels(&labels)),
    );
    assert_is_fixture(&load_mnist(dir.path(), Split::Test).unwrap());
}

#[test]
fn decode_reads_raw_and_gzipped_bytes() {
    let (imgs, labels) = fixture();
    let (images, label_bytes) = (idx_images(&imgs, 4, 5), idx_labels(&labels));
    let raw = decode_mnist(
        Path::new("images-idx3-ubyte"),
        images.clone(),
        Path::new("labels-idx1-ubyte"),
        label_bytes.clone(),
    )
    .unwrap();
    assert_is_fixture(&raw);
    let gz = decode_mnist(
        Path::new("images-idx3-ubyte.gz"),
        gzip(&images),
        Path::new("labels-idx1-ubyte.gz"),
        gzip(&label_bytes),
    )
    .unwrap();
    assert_eq!(gz, raw);
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (imgs, labels) = fixture();
    let images = idx_images(&imgs, 4, 5);
    // the last image loses its last 7 pixels
    write(
        dir.path(),
        "train-images-idx3-ubyte",
        &images[..images.len() - 7],
    );
    write(dir.path(), "train-labels-idx1-ubyte", &idx_labels(&labels));
    let err = load_mnist(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");

    // a truncated labels file, through decode_mnist: the error names the labels file, not the images one
    let labels_short = idx_labels(&labels);
    let err = decode_mnist(
        Path::new("imgs.idx"),
        images,
        Path::new("short-labels.idx"),
        labels_short[..labels_short.len() - 1].to_vec(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("short-labels.idx"), "{err}");
}
