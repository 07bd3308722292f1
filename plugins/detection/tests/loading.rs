//! COCO loading end to end: letterboxing, bad inputs (each a clear error naming the file and the image or
//! annotation id, never a panic), and the real coco128 photos when `DISTILL_DATA` is set.

use std::path::Path;

use distill_detection::data::{load_coco_split, PAD_VALUE};

fn write_png(path: &Path, w: u32, h: u32, v: u8) {
    image::GrayImage::from_pixel(w, h, image::Luma([v]))
        .save(path)
        .unwrap();
}

const CATS: &str = r#""categories": [{"id": 1, "name": "a"}, {"id": 4, "name": "b"}]"#;

fn ann_file(dir: &Path, images: &str, anns: &str) -> std::path::PathBuf {
    let p = dir.join("ann.json");
    std::fs::write(
        &p,
        format!("{{\"images\": [{images}],\n\"annotations\": [{anns}],\n{CATS}}}"),
    )
    .unwrap();
    p
}

#[test]
fn letterbox_keeps_aspect_and_maps_boxes() {
    let tmp = tempfile::tempdir().unwrap();
    write_png(&tmp.path().join("wide.png"), 40, 20, 200);
    let p = ann_file(
        tmp.path(),
        r#"{"id": 5, "file_name": "wide.png", "width": 40, "height": 20}"#,
        r#"{"id": 1, "image_id": 5, "category_id": 4, "bbox": [10, 5, 20, 10]}"#,
    );
    let set = load_coco_split(&p, tmp.path(), 16, 1, None, None).unwrap();
    let im = &set.images[0];
    // 40x20 → 16x8, centred vertically: rows 0..4 and 12..16 are padding
    assert_eq!(im.scale, (0.4, 0.4));
    assert_eq!(im.pad, (0.0, 4.0));
    assert_eq!(im.pixels[0], PAD_VALUE);
    assert_eq!(im.pixels[8 * 16 + 8], 200);
    assert_eq!(im.boxes, vec![([4.0, 6.0, 8.0, 4.0], 1)]);
    assert_eq!(set.category_ids, vec![1, 4]);
    assert_eq!(set.ground_truth[0].bbox, [10.0, 5.0, 20.0, 10.0]);
}

fn load_err(dir: &Path, images: &str, anns: &str) -> String {
    let p = ann_file(dir, images, anns);
    load_coco_split(&p, dir, 16, 3, None, None)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_png(&d.join("ok.png"), 20, 20, 10);
    std::fs::write(d.join("corrupt.png"), b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let ok = r#"{"id": 1, "file_name": "ok.png", "width": 20, "height": 20}"#;
    // a corrupt image: the file, its image id
    let e = load_err(
        d,
        r#"{"id": 3, "file_name": "corrupt.png", "width": 20, "height": 20}"#,
        "",
    );
    assert!(
        e.contains("corrupt.png") && e.contains("cannot decode image id 3"),
        "{e}"
    );
    // a missing image
    let e = load_err(
        d,
        r#"{"id": 3, "file_name": "absent.png", "width": 20, "height": 20}"#,
        "",
    );
    assert!(e.contains("absent.png"), "{e}");
    // an image whose size disagrees with the file
    let e = load_err(
        d,
        r#"{"id": 2, "file_name": "ok.png", "width": 30, "height": 20}"#,
        "",
    );
    assert!(
        e.contains("is 20x20 pixels") && e.contains("image id 2 is 30x20"),
        "{e}"
    );
    // a box outside its image: the annotation id
    let e = load_err(
        d,
        ok,
        r#"{"id": 17, "image_id": 1, "category_id": 1, "bbox": [15, 2, 10, 5]}"#,
    );
    assert!(
        e.contains("ann.json") && e.contains("annotation id 17") && e.contains("outside its image"),
        "{e}"
    );
    // an unknown category id
    let e = load_err(
        d,
        ok,
        r#"{"id": 18, "image_id": 1, "category_id": 2, "bbox": [1, 2, 10, 5]}"#,
    );
    assert!(
        e.contains("annotation id 18") && e.contains("unknown category_id 2"),
        "{e}"
    );
    // empty and malformed annotation files: the file and line
    std::fs::write(d.join("empty.json"), "").unwrap();
    let e = load_coco_split(&d.join("empty.json"), d, 16, 3, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.json: is empty"), "{e}");
    std::fs::write(
        d.join("bad.json"),
        "{\"images\": [],\n\"annotations\": [\n{\"id\": 1, \"image_id\": \"one\"}]}",
    )
    .unwrap();
    let e = load_coco_split(&d.join("bad.json"), d, 16, 3, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.json: line 3"), "{e}");
    // a file with no images
    let e = load_err(d, "", "");
    assert!(e.contains("has no images"), "{e}");
}

#[test]
fn coco128_loads_real_photos() {
    let Some(data) =
        distill_data::testing::required_dir("DISTILL_DATA", Some("coco128"), "coco128")
    else {
        return;
    };
    let root = Path::new(&data).join("coco128");
    let set = load_coco_split(
        &root.join("annotations/instances_train2017.json"),
        &root,
        64,
        3,
        None,
        None,
    )
    .unwrap();
    // the card: 128 images, 929 boxes, all 80 categories listed, 2 images without boxes
    assert_eq!(set.len(), 128);
    assert_eq!(set.ground_truth.len(), 929);
    assert_eq!(set.category_ids.len(), 80);
    assert_eq!(set.images.iter().filter(|i| i.boxes.is_empty()).count(), 2);
    for im in &set.images {
        assert_eq!(im.pixels.len(), 3 * 64 * 64);
        for (b, c) in &im.boxes {
            assert!(*c < 80);
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[0] + b[2] <= 64.001 && b[1] + b[3] <= 64.001,
                "{b:?}"
            );
        }
    }
}
