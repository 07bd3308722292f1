//! Every user mistake gives one line naming the file and the problem, exit code 2, and no panic.

use distill_tests::*;

fn expect_error(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

fn setup(recipe: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 200, 50);
    std::fs::write(tmp.path().join("r.toml"), recipe).unwrap();
    tmp
}

#[test]
fn unknown_recipe_key() {
    let tmp = setup(&tiny_recipe(1).replace(
        "epochs = 1\naugment",
        "epochs = 1\nepoch_count = 3\naugment",
    ));
    expect_error(
        &run_in(tmp.path()),
        &["r.toml:13:1", "unknown field `epoch_count`"],
    );
    expect_error(
        &distill(tmp.path(), &["check", "r.toml"]),
        &["r.toml:13:1", "unknown field `epoch_count`"],
    );
}

#[test]
fn wrong_value_type() {
    let tmp = setup(&tiny_recipe(1).replace("batch_size = 64", "batch_size = \"sixty-four\""));
    expect_error(&run_in(tmp.path()), &["r.toml:7:14", "invalid type"]);
}

#[test]
fn unknown_loss_name() {
    let tmp = setup(&tiny_recipe(1).replace("name = \"kd\"", "name = \"kdd\""));
    expect_error(
        &run_in(tmp.path()),
        &["distill.losses[0]", "unknown loss `kdd`", "kd, ce"],
    );
    expect_error(
        &distill(tmp.path(), &["check", "r.toml"]),
        &["r.toml", "unknown loss `kdd`"],
    );
}

#[test]
fn unknown_model_arch() {
    let tmp =
        setup(&tiny_recipe(1).replace("arch = \"mlp\", hidden = [16]", "arch = \"resnet9000\""));
    expect_error(
        &distill(tmp.path(), &["check", "r.toml"]),
        &["r.toml", "student.model", "resnet9000"],
    );
}

#[test]
fn truncated_idx_file() {
    let tmp = setup(&tiny_recipe(1));
    let p = tmp.path().join("data/mnist/t10k-images-idx3-ubyte.gz");
    std::fs::remove_file(&p).unwrap();
    // a raw (uncompressed) file whose payload stops short of its header's count
    write_idx(
        &tmp.path().join("data/mnist/t10k-images-idx3-ubyte"),
        2051,
        &[50, 28, 28],
        &vec![0u8; 784 * 20],
        false,
    );
    expect_error(
        &run_in(tmp.path()),
        &["t10k-images-idx3-ubyte", "truncated"],
    );
}

#[test]
fn missing_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("r.toml"), tiny_recipe(1)).unwrap();
    let o = distill(
        tmp.path(),
        &["run", "r.toml", "--data-dir", "nowhere", "--quiet"],
    );
    expect_error(&o, &["nowhere", "does not exist"]);
}

#[test]
fn missing_dataset_files() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    std::fs::write(tmp.path().join("r.toml"), tiny_recipe(1)).unwrap();
    expect_error(&run_in(tmp.path()), &["mnist"]);
}

#[test]
fn missing_recipe_file() {
    let tmp = tempfile::tempdir().unwrap();
    expect_error(
        &distill(tmp.path(), &["check", "absent.toml"]),
        &["absent.toml"],
    );
}

#[test]
fn bad_temperature_and_device() {
    let tmp = setup(&tiny_recipe(1).replace("temperature = 4.0", "temperature = 0.0"));
    expect_error(
        &run_in(tmp.path()),
        &["r.toml", "distill.losses[0].temperature", "must be > 0"],
    );
    let tmp = setup(&tiny_recipe(1));
    let o = distill(
        tmp.path(),
        &["run", "r.toml", "--data-dir", "data", "--device", "tpu"],
    );
    expect_error(&o, &["--device tpu"]);
}

#[test]
fn corrupt_checkpoint_for_eval() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), b"not a checkpoint").unwrap();
    expect_error(
        &distill(tmp.path(), &["eval", "model.safetensors"]),
        &["card.json"],
    );
}

#[test]
fn mistakes_in_the_quick_tables_fail_check_without_quick() {
    // a misspelt key inside [quick.student]
    let tmp = setup(&format!("{}\n[quick.student]\nepoch = 1\n", tiny_recipe(1)));
    expect_error(
        &distill(tmp.path(), &["check", "r.toml"]),
        &["r.toml [quick]", "unknown field `epoch`"],
    );
    // a model the plugin does not know, only in the quick overrides
    let tmp = setup(&format!(
        "{}\n[quick.student]\nmodel = {{ arch = \"mlpx\" }}\n",
        tiny_recipe(1)
    ));
    expect_error(
        &distill(tmp.path(), &["check", "r.toml"]),
        &["r.toml [quick]", "student.model", "mlpx"],
    );
}
