//! COCO mAP against pycocotools: each case in tests/fixtures/cocoeval holds a ground-truth file, detections
//! and the 12 numbers pycocotools' `COCOeval(iouType="bbox").summarize()` printed for them, made by
//! `tests/fixtures/make_cocoeval_fixtures.py` (its docstring lists what each case exercises: images without
//! ground truth, images without detections, crowd regions, the 100-detection cut, an unannotated category,
//! `area` differing from w·h, score ties).

use std::path::PathBuf;

use distill_detection::{
    data::coco::load_coco,
    metrics::{coco_eval, Detection},
};

fn case(name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cocoeval")
        .join(name);
    let gt = load_coco(&dir.join("gt.json")).unwrap();
    let dets: Vec<Detection> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dets.json")).unwrap()).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let got = coco_eval(
        &gt.image_ids(),
        &gt.category_ids(),
        &gt.ground_truth(),
        &dets,
    )
    .unwrap();
    for (k, v) in got.named() {
        let w = want[k].as_f64().unwrap();
        assert!((v - w).abs() < 1e-4, "{name}: {k} = {v}, pycocotools {w}");
        // in fact they agree to rounding error
        assert!((v - w).abs() < 1e-9, "{name}: {k} = {v}, pycocotools {w}");
    }
}

#[test]
fn basic_matches_pycocotools() {
    case("basic");
}

#[test]
fn crowd_matches_pycocotools() {
    case("crowd");
}

#[test]
fn maxdets_matches_pycocotools() {
    case("maxdets");
}

#[test]
fn fixtures_hold_the_edge_cases_they_claim() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cocoeval/basic");
    let gt = load_coco(&dir.join("gt.json")).unwrap();
    let dets: Vec<Detection> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dets.json")).unwrap()).unwrap();
    let with_gt: std::collections::BTreeSet<u64> =
        gt.annotations.iter().map(|a| a.image_id).collect();
    let with_dt: std::collections::BTreeSet<u64> = dets.iter().map(|d| d.image_id).collect();
    assert!(gt
        .image_ids()
        .iter()
        .any(|i| !with_gt.contains(i) && with_dt.contains(i)));
    assert!(gt
        .image_ids()
        .iter()
        .any(|i| with_gt.contains(i) && !with_dt.contains(i)));
    assert!(gt
        .image_ids()
        .iter()
        .any(|i| !with_gt.contains(i) && !with_dt.contains(i)));
}
