//! The divergence guard: a NaN/Inf loss or a gradient norm above `divergence.max_grad_norm` stops the phase
//! with a message naming the epoch and step, or, with `divergence.retries`, replays the epoch from its start
//! at a lower learning rate.

use distill_tests::{run_in, stderr, tiny_recipe, write_synthetic_mnist};

fn setup(teacher_extra: &str, lr: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 600, 200);
    let recipe = tiny_recipe(2)
        .replace(
            "optimizer = { kind = \"sgd\", lr = 0.05, momentum = 0.9 }",
            &format!(
                "optimizer = {{ kind = \"sgd\", lr = {lr}, momentum = 0.9 }}\n{teacher_extra}"
            ),
        )
        .replace("augment = \"jitter1\"\n", "");
    std::fs::write(tmp.path().join("r.toml"), recipe).unwrap();
    tmp
}

#[test]
fn a_nan_loss_stops_the_phase_naming_the_step() {
    let tmp = setup("", "1e6");
    let o = run_in(tmp.path());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("training failed: [teacher s0] the loss is "),
        "{err}"
    );
    assert!(err.contains(" at epoch 1 step "), "{err}");
    assert!(
        err.contains("the last good checkpoint (after epoch 0)"),
        "{err}"
    );
    assert!(err.contains("divergence.retries"), "{err}");
}

#[test]
fn a_gradient_norm_above_the_limit_stops_the_phase() {
    let tmp = setup("divergence = { max_grad_norm = 1e-6 }", "0.05");
    let o = run_in(tmp.path());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("above divergence.max_grad_norm = 0.000001 at epoch 1 step 1;"),
        "{err}"
    );
}

#[test]
fn retries_back_off_the_learning_rate_and_finish() {
    let tmp = setup(
        "divergence = { max_grad_norm = 1e3, retries = 10, backoff = 0.1 }",
        "1e6",
    );
    let o = run_in(tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("out/seed-0/teacher/result.json")).unwrap(),
    )
    .unwrap();
    let backoffs: Vec<&str> = result["divergence_backoffs"]
        .as_array()
        .expect("back-offs recorded")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // lr 1e6 needs several factors of 10 before SGD stops diverging on this set; each back-off multiplies
    // the previous factor by 0.1
    assert!(backoffs.len() >= 3 && backoffs.len() <= 10, "{backoffs:?}");
    for (k, line) in backoffs.iter().enumerate() {
        let factor = format!("x{:.4e}", 0.1f64.powi(k as i32 + 1));
        assert!(line.contains(&factor), "{line} should carry {factor}");
        assert!(line.contains("replayed the epoch"), "{line}");
    }
    assert_eq!(result["epochs"], 2);
    // the replayed teacher learned the synthetic classes (chance is 0.1)
    assert!(result["metric"].as_f64().unwrap() > 0.5, "{result}");
}

#[test]
fn divergence_settings_are_checked() {
    let tmp = setup("divergence = { retries = 1, backoff = 1.5 }", "0.05");
    let o = run_in(tmp.path());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`teacher.divergence.backoff` must be in (0, 1), got 1.5"),
        "{err}"
    );
}
