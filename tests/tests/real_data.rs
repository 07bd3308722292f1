//! The shipped MNIST recipe on the real data set (`DISTILL_DATA`), with `--quick` settings.
//! Skipped, with a note on stderr, when `DISTILL_DATA` is not set.

use distill_tests::*;

#[test]
fn hinton_mnist_quick_distilled_beats_scratch() {
    let Some(data) = std::env::var_os("DISTILL_DATA") else {
        eprintln!("DISTILL_DATA is not set: skipping the real-data run");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = root().join("plugins/vision/recipes/hinton-mnist.toml");
    let out = tmp.path().join("out");
    let o = distill(
        tmp.path(),
        &[
            "run",
            recipe.to_str().unwrap(),
            "--quick",
            "--quiet",
            "--no-cache",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let run = &r["runs"][0];
    let acc = |p: &str| run[p]["metric"]["mean"].as_f64().unwrap();
    let errors = |p: &str| run[p]["extra"]["errors"]["mean"].as_f64().unwrap();
    eprintln!(
        "hinton-mnist --quick: test errors teacher {} scratch {} distilled {}",
        errors("teacher"),
        errors("scratch"),
        errors("distilled")
    );
    assert_eq!(
        run["teacher"]["params"],
        784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    );
    assert!(acc("teacher") > 0.97, "teacher accuracy {}", acc("teacher"));
    assert!(
        acc("distilled") > acc("scratch"),
        "distilled {} vs scratch {}",
        acc("distilled"),
        acc("scratch")
    );
}
