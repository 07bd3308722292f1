//! COCO mAP against pycocotools: each case in tests/fixtures/cocoeval holds a ground-truth file, detections
//! and the 12 numbers pycocotools' `COCOeval(iouType="bbox").summarize()` printed for them, made by
//! `tests/fixtures/make_cocoeval_fixtures.py` (its docstring lists what each case exercises: images without
//! ground truth, images without detections, crowd regions, the 100-detection cut, an unannotated category,
//! `area` differing from w·h, score ties).

use std::path::PathBuf;

use distill_core::stats::{average_precision, ExampleScores};
use distill_detection::{
    data::coco::load_coco,
    metrics::{coco_eval, matched_images, Detection},
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
    resamples_agree_with_coco_eval(name, &gt, &dets);
}

/// The matched images the KD-gain bootstrap resamples give the headline AP over all images, and over a
/// resample (images repeated, some left out) the AP that `coco_eval` gives on that resample built as a data
/// set of its own (each draw a new image).
fn resamples_agree_with_coco_eval(
    name: &str,
    gt: &distill_detection::data::coco::CocoFile,
    dets: &[Detection],
) {
    let (ids, cats, truth) = (gt.image_ids(), gt.category_ids(), gt.ground_truth());
    let images = matched_images(&ids, &cats, &truth, dets);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(images.len(), sorted.len());
    let all: Vec<usize> = (0..images.len()).collect();
    let want = coco_eval(&ids, &cats, &truth, dets).unwrap().ap;
    // equal up to the order of the sums
    let got = average_precision(&images, &all);
    assert!((got - want).abs() < 1e-12, "{name}: {got} vs {want}");
    let e = ExampleScores::Detections {
        images: images.clone(),
    };
    assert!((e.metric() - want).abs() < 1e-12, "{name}");
    // draw k of the resample becomes image 1000 + k
    let n = images.len();
    for idx in [
        vec![0, 0, n - 1],
        vec![n - 1, 1.min(n - 1), 1.min(n - 1), 0],
        vec![n / 2; 3],
    ] {
        let new_ids: Vec<u64> = (0..idx.len() as u64).map(|k| 1000 + k).collect();
        let (mut t2, mut d2) = (Vec::new(), Vec::new());
        for (k, &i) in idx.iter().enumerate() {
            let img = sorted[i];
            for g in truth.iter().filter(|g| g.image_id == img) {
                let mut g = g.clone();
                g.image_id = new_ids[k];
                t2.push(g);
            }
            for d in dets.iter().filter(|d| d.image_id == img) {
                let mut d = d.clone();
                d.image_id = new_ids[k];
                d2.push(d);
            }
        }
        let want = coco_eval(&new_ids, &cats, &t2, &d2).unwrap().ap;
        let got = average_precision(&images, &idx);
        assert!(
            (got - want).abs() < 1e-12,
            "{name} {idx:?}: {got} vs coco_eval {want}"
        );
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
