//! Importing PyTorch / Hugging Face checkpoints: distill's eval-mode outputs against PyTorch's on the
//! committed fixtures of `tests/fixtures/interop/` (written by `scripts/interop/make_fixtures.py` with torch
//! and transformers: tiny random models, their inputs and PyTorch's outputs in `reference.safetensors`), the
//! strict loader's errors on broken checkpoints, and the same through the `distill` binary.

use std::{collections::BTreeMap, path::PathBuf};

use candle_core::{DType, Device, Tensor};
use distill_core::{
    network::{import_network, varmap_tensors},
    Mode, Network,
};
use distill_tests::*;

/// Eval-mode outputs must equal PyTorch's to this (absolute; every reference output is below 1 in size).
const F32_TOL: f32 = 1e-5;

fn fx(name: &str) -> PathBuf {
    root().join("tests/fixtures/interop").join(name)
}

fn reference() -> (BTreeMap<String, Tensor>, BTreeMap<String, String>) {
    distill_core::checkpoint::read_safetensors_with_metadata(
        &fx("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn vision_net(model: &str, input: [usize; 3]) -> Box<dyn Network> {
    let spec: distill_vision::models::ModelSpec = toml::from_str(model).unwrap();
    // seed 7: every parameter starts far from the file's values
    distill_vision::models::build_model(&spec, input, 10, 7, &Device::Cpu).unwrap()
}

/// Loads `file` strictly into the network `model` and returns its eval-mode logits on `input`.
fn imported_logits(model: &str, shape: [usize; 3], file: &str, input: &Tensor) -> Tensor {
    let net = vision_net(model, shape);
    let report =
        import_network(net.as_ref(), &fx(file), true).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(report.names.is_complete(), "{file}");
    assert!(report.warning().is_none());
    net.forward(input, Mode::Eval).unwrap().logits
}

#[test]
fn vision_logits_equal_pytorch_in_both_formats() {
    let (r, _) = reference();
    let cases = [
        // torchvision's names, its stem (7x7/2, max-pool 3x3/2) and BasicBlocks / Bottlenecks
        (
            "arch = \"resnet18\"\nwidth = 2",
            [3, 32, 32],
            "resnet18-w2.pth",
            "image",
            "resnet18-w2",
        ),
        (
            "arch = \"resnet18\"\nwidth = 2",
            [3, 32, 32],
            "resnet18-w2.safetensors",
            "image",
            "resnet18-w2",
        ),
        (
            "arch = \"resnet50\"\nwidth = 2",
            [3, 32, 32],
            "resnet50-w2.safetensors",
            "image",
            "resnet50-w2",
        ),
        // mdistiller's CIFAR ResNet
        (
            "arch = \"resnet8\"",
            [3, 32, 32],
            "resnet8.pth",
            "image",
            "resnet8",
        ),
        (
            "arch = \"resnet8\"",
            [3, 32, 32],
            "resnet8.safetensors",
            "image",
            "resnet8",
        ),
        // an nn.Sequential MLP: numbered names mapped in order
        (
            "arch = \"mlp\"\nhidden = [32, 16]",
            [1, 8, 8],
            "mlp-seq.pth",
            "mlp.input",
            "mlp",
        ),
        (
            "arch = \"mlp\"\nhidden = [32, 16]",
            [1, 8, 8],
            "mlp-seq.safetensors",
            "mlp.input",
            "mlp",
        ),
        // a training checkpoint: the state dict under `state_dict`, DataParallel's `module.` prefix
        (
            "arch = \"mlp\"\nhidden = [32, 16]",
            [1, 8, 8],
            "mlp-checkpoint.pth",
            "mlp.input",
            "mlp-checkpoint",
        ),
        // bfloat16 weights; the reference ran the same rounded weights in f32
        (
            "arch = \"mlp\"\nhidden = [32, 16]",
            [1, 8, 8],
            "mlp-seq-bf16.pth",
            "mlp.input",
            "mlp-bf16",
        ),
    ];
    for (model, shape, file, input, out) in cases {
        let got = imported_logits(model, shape, file, &r[input]);
        let d = max_diff(&got, &r[&format!("{out}.logits")]);
        eprintln!("{file}: max |distill - pytorch| = {d:.2e}");
        assert!(d <= F32_TOL, "{file}: {d}");
    }
    // bf16 rounding of the weights moves the logits by far more than f32 arithmetic does, but not far
    let got = imported_logits(
        "arch = \"mlp\"\nhidden = [32, 16]",
        [1, 8, 8],
        "mlp-seq-bf16.pth",
        &r["mlp.input"],
    );
    let d = max_diff(&got, &r["mlp.logits"]);
    eprintln!("mlp-seq-bf16.pth against the f32 model: {d:.2e}");
    assert!(d > F32_TOL && d < 2e-2, "{d}");
}

#[test]
fn lenet_loads_the_numbered_names_of_an_nn_sequential() {
    // LeNet's own weights renamed as `nn.Sequential(Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d,
    // Flatten, Linear, ReLU, Linear)` names them: 0, 3, 7, 9
    let a = vision_net("arch = \"lenet5\"", [1, 28, 28]);
    let mut seq = BTreeMap::new();
    for (k, t) in varmap_tensors(a.varmap()).unwrap() {
        let (layer, p) = k.split_once('.').unwrap();
        let n = ["conv1", "conv2", "fc1", "fc2"]
            .iter()
            .position(|l| *l == layer)
            .unwrap();
        seq.insert(format!("{}.{p}", [0, 3, 7, 9][n]), t);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lenet-seq.safetensors");
    distill_core::checkpoint::write_safetensors_atomic(&seq, &p).unwrap();
    let spec: distill_vision::models::ModelSpec = toml::from_str("arch = \"lenet5\"").unwrap();
    let b = distill_vision::models::build_model(&spec, [1, 28, 28], 10, 99, &Device::Cpu).unwrap();
    import_network(b.as_ref(), &p, true).unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 1, 28, 28), &Device::Cpu).unwrap();
    let (ya, yb) = (
        a.forward(&x, Mode::Eval).unwrap().logits,
        b.forward(&x, Mode::Eval).unwrap().logits,
    );
    assert_eq!(max_diff(&ya, &yb), 0.0);
}

fn ids(r: &BTreeMap<String, Tensor>) -> Tensor {
    r["bert.input_ids"].to_dtype(DType::U32).unwrap()
}

fn bert_spec(init: &str) -> distill_text::models::ModelSpec {
    let mut m = toml::Table::new();
    m.insert("arch".into(), "bert".into());
    m.insert("base".into(), "tiny-bert-sst2".into());
    m.insert("init".into(), init.into());
    m.insert("pooling".into(), "pooler".into());
    distill_text::models::ModelSpec::parse(&m).unwrap()
}

fn bert_net(init: &str, models: &std::path::Path) -> distill_text::models::TextNet {
    distill_text::models::build_model(
        &bert_spec(init),
        distill_text::models::Head::Classify(2),
        models,
        3,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn a_hugging_face_classifier_gives_its_own_logits() {
    let (r, meta) = reference();
    let models = fx("");
    // our tokenizer on the sentences gives the ids transformers' run used
    let sentences: Vec<String> = serde_json::from_str(&meta["bert.sentences"]).unwrap();
    let tok =
        distill_text::data::TextTokenizer::from_file(&fx("tiny-bert-sst2/tokenizer.json"), 40)
            .unwrap();
    let want: Vec<Vec<u32>> = ids(&r).to_vec2().unwrap();
    for (s, w) in sentences.iter().zip(&want) {
        let got = tok.encode(s).unwrap();
        assert_eq!(got[..], w[..got.len()], "{s}");
        assert!(w[got.len()..].iter().all(|&i| i == 0), "padding");
    }

    // model.base with init = "pretrained": encoder, pooler and classifier from model.safetensors
    let net = bert_net("pretrained", &models);
    assert!(
        net.describe()
            .contains("with its pooler.dense and classifier"),
        "{}",
        net.describe()
    );
    let out = net.forward(&ids(&r), Mode::Eval).unwrap();
    let d = max_diff(&out.logits, &r["bert.logits"]);
    eprintln!("tiny-bert-sst2 (model.base): max |distill - transformers| = {d:.2e}");
    assert!(d <= F32_TOL, "{d}");
    let d = max_diff(
        &out.feature("pooled").unwrap().tensor,
        &r["bert.pooler_output"],
    );
    assert!(d <= F32_TOL, "pooler output: {d}");

    // a base folder holding only pytorch_model.bin
    let only_bin = tempfile::tempdir().unwrap();
    let b = only_bin.path().join("tiny-bert-sst2");
    std::fs::create_dir(&b).unwrap();
    for f in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(fx("tiny-bert-sst2").join(f), b.join(f)).unwrap();
    }
    let out = bert_net("pretrained", only_bin.path())
        .forward(&ids(&r), Mode::Eval)
        .unwrap();
    assert!(max_diff(&out.logits, &r["bert.logits"]) <= F32_TOL);

    // a copy in BertModel's names (no `bert.` prefix) with old checkpoints' LayerNorm.gamma / .beta, as a
    // base folder's model.safetensors ...
    let plain = tempfile::tempdir().unwrap();
    let old_names = plain.path().join("tiny-bert-sst2");
    std::fs::create_dir(&old_names).unwrap();
    std::fs::copy(
        fx("tiny-bert-sst2/config.json"),
        old_names.join("config.json"),
    )
    .unwrap();
    let no_prefix = old_names.join("model.safetensors");
    let tensors = distill_core::network::read_checkpoint(&fx("tiny-bert-sst2")).unwrap();
    let renamed: BTreeMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let k = k.strip_prefix("bert.").unwrap_or(&k);
            let k = k.replace("LayerNorm.weight", "LayerNorm.gamma");
            (k.replace("LayerNorm.bias", "LayerNorm.beta"), v)
        })
        .collect();
    assert!(renamed.contains_key("encoder.layer.1.output.LayerNorm.gamma"));
    distill_core::checkpoint::write_safetensors_atomic(&renamed, &no_prefix).unwrap();
    let out = bert_net("pretrained", plain.path())
        .forward(&ids(&r), Mode::Eval)
        .unwrap();
    assert!(max_diff(&out.logits, &r["bert.logits"]) <= F32_TOL);
    // ... and through teacher.pretrained on a randomly initialised network, with the folder, each file and
    // the float16 copy
    for (file, logits, tol) in [
        (fx("tiny-bert-sst2"), "bert.logits", F32_TOL),
        (
            fx("tiny-bert-sst2/model.safetensors"),
            "bert.logits",
            F32_TOL,
        ),
        (
            fx("tiny-bert-sst2/pytorch_model.bin"),
            "bert.logits",
            F32_TOL,
        ),
        (no_prefix.clone(), "bert.logits", F32_TOL),
        // f16 weights converted exactly: equal to transformers running the same rounded weights ...
        (
            fx("tiny-bert-sst2-f16.safetensors"),
            "bert-f16.logits",
            F32_TOL,
        ),
        // ... and within f16's rounding of the f32 model
        (fx("tiny-bert-sst2-f16.safetensors"), "bert.logits", 5e-3),
    ] {
        let net = bert_net("random", &models);
        let before = net.forward(&ids(&r), Mode::Eval).unwrap().logits;
        import_network(&net, &file, true).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let got = net.forward(&ids(&r), Mode::Eval).unwrap().logits;
        let d = max_diff(&got, &r[logits]);
        eprintln!("{} vs {logits}: {d:.2e}", file.display());
        assert!(d <= tol, "{}: {d}", file.display());
        assert!(
            max_diff(&before, &r[logits]) > 1e-2,
            "the random start differs"
        );
    }
}

#[test]
fn a_pooler_and_classifier_the_network_leaves_out_are_ignored() {
    let (r, _) = reference();
    // mean pooling, sentence-embedding head: the checkpoint's pooler and classifier are not unexpected
    let mut m = toml::Table::new();
    m.insert("arch".into(), "bert".into());
    m.insert("base".into(), "tiny-bert-sst2".into());
    m.insert("init".into(), "random".into());
    let spec = distill_text::models::ModelSpec::parse(&m).unwrap();
    let net = distill_text::models::build_model(
        &spec,
        distill_text::models::Head::Embed,
        &fx(""),
        0,
        &Device::Cpu,
    )
    .unwrap();
    let rep = import_network(&net, &fx("tiny-bert-sst2/pytorch_model.bin"), true).unwrap();
    let mut ignored = rep.names.ignored.clone();
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "bert.pooler.dense.bias",
            "bert.pooler.dense.weight",
            "classifier.bias",
            "classifier.weight"
        ]
    );
    // the encoder is the checkpoint's: with pooling = "pooler" on the same weights, its [CLS] state gives
    // the pooler output transformers computed
    let with_pooler = bert_net("pretrained", &fx(""));
    let a = net.forward(&ids(&r), Mode::Eval).unwrap();
    let b = with_pooler.forward(&ids(&r), Mode::Eval).unwrap();
    assert_eq!(
        max_diff(
            &a.feature("cls.2").unwrap().tensor,
            &b.feature("cls.2").unwrap().tensor
        ),
        0.0
    );
}

/// The MNIST-shaped MLP (784-4-4-10, distill's names) the broken fixtures were cut from.
fn mnist_mlp() -> Box<dyn Network> {
    vision_net("arch = \"mlp\"\nhidden = [4, 4]", [1, 28, 28])
}

#[test]
fn broken_checkpoints_list_what_does_not_fit() {
    let cases = [
        (
            "mlp-missing.safetensors",
            vec!["1 missing key", "`fc3.bias` [10]"],
        ),
        (
            "mlp-extra.pth",
            vec!["1 unexpected key", "`fc4.weight` [10, 10]"],
        ),
        (
            "mlp-shape.pth",
            vec![
                "2 shape mismatches",
                "`fc3.weight`: the model expects [10, 4], the file has [9, 4]",
                "`fc3.bias`: the model expects [10], the file has [9]",
            ],
        ),
    ];
    for (file, needles) in cases {
        let net = mnist_mlp();
        let before = varmap_tensors(net.varmap()).unwrap();
        let e = import_network(net.as_ref(), &fx(file), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(file) && e.contains("strict = false"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        for n in needles {
            assert!(e.contains(n), "{file}: `{n}` not in: {e}");
        }
        // a strict failure loads nothing
        let after = varmap_tensors(net.varmap()).unwrap();
        for (k, t) in &before {
            assert_eq!(max_diff(t, &after[k]), 0.0, "{file}: {k}");
        }
        // not strict: what fits is loaded, the rest keeps its initial values, and a warning says what
        let rep = import_network(net.as_ref(), &fx(file), false).unwrap();
        let w = rep.warning().unwrap();
        assert!(w.contains(file), "{w}");
        let file_tensors = distill_core::network::read_checkpoint(&fx(file)).unwrap();
        let after = varmap_tensors(net.varmap()).unwrap();
        for (ours, key) in &rep.names.pairs {
            assert_eq!(max_diff(&after[ours], &file_tensors[key]), 0.0);
        }
        for (k, _) in &rep.names.missing {
            assert_eq!(max_diff(&after[k], &before[k]), 0.0);
        }
        let loaded = match file {
            "mlp-missing.safetensors" => 5,
            "mlp-extra.pth" => 6,
            _ => 4,
        };
        assert_eq!(rep.names.pairs.len(), loaded, "{file}");
    }
}

fn mnist_recipe(teacher: &str, student: &str) -> String {
    format!(
        r#"name = "import"
plugin = "image-classification"
dataset = "mnist"
[data]
batch_size = 50
[teacher]
model = {{ arch = "mlp", hidden = [4, 4] }}
epochs = 0
optimizer = {{ kind = "sgd", lr = 0.1 }}
{teacher}
[student]
model = {{ arch = "mlp", hidden = [4, 4] }}
epochs = 1
optimizer = {{ kind = "sgd", lr = 1e-12 }}
{student}
[distill]
losses = [{{ name = "kd", temperature = 4.0 }}]
"#
    )
}

fn pretrained(file: &str) -> String {
    format!("pretrained = {:?}", fx(file).display().to_string())
}

#[test]
fn the_cli_exits_2_on_a_checkpoint_that_does_not_fit_and_warns_when_not_strict() {
    let tmp = tempfile::tempdir().unwrap();
    for (key, file, needle) in [
        ("teacher", "mlp-missing.safetensors", "`fc3.bias` [10]"),
        ("teacher", "mlp-extra.pth", "`fc4.weight` [10, 10]"),
        ("student", "mlp-shape.pth", "the file has [9, 4]"),
    ] {
        let (t, s) = if key == "teacher" {
            (pretrained(file), String::new())
        } else {
            (pretrained("mlp-mnist-seq.pth"), pretrained(file))
        };
        std::fs::write(tmp.path().join("r.toml"), mnist_recipe(&t, &s)).unwrap();
        let o = distill(tmp.path(), &["check", "r.toml"]);
        assert_eq!(o.status.code(), Some(2), "{file}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("`{key}.pretrained`")) && e.contains(file) && e.contains(needle),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        // `strict = false`: loaded with a warning naming what was left out
        let loose = format!("{}\nstrict = false", if key == "teacher" { &t } else { &s });
        let r = if key == "teacher" {
            mnist_recipe(&loose, "")
        } else {
            mnist_recipe(&t, &loose)
        };
        std::fs::write(tmp.path().join("r.toml"), r).unwrap();
        let o = distill(tmp.path(), &["check", "r.toml"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("warning:") && e.contains(needle), "{e}");
    }
    // a file not there yet: `check` notes it, `run` refuses before training anything
    std::fs::write(
        tmp.path().join("r.toml"),
        mnist_recipe("pretrained = \"not-there.pth\"", ""),
    )
    .unwrap();
    let o = distill(tmp.path(), &["check", "r.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not-there.pth"), "{}", stderr(&o));
    write_synthetic_mnist(&tmp.path().join("data"), 200, 100);
    let o = distill(
        tmp.path(),
        &[
            "run",
            "r.toml",
            "--data-dir",
            "data",
            "--models-dir",
            "m",
            "--out",
            "out",
            "--quiet",
            "--no-cache",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not-there.pth") && stderr(&o).contains("not found"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("out/seed-0/teacher").exists());
}

#[test]
fn a_run_uses_a_pytorch_teacher_as_is_and_starts_students_from_their_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_mnist(&tmp.path().join("data"), 300, 100);
    let p = pretrained("mlp-mnist-seq.pth");
    std::fs::write(tmp.path().join("r.toml"), mnist_recipe(&p, &p)).unwrap();
    let o = run_in(tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["runs"][0]["teacher"]["headline"], "pretrained");
    // the teacher's saved weights are the file's, renamed; the students (lr 1e-12) barely moved from them
    let torch = distill_core::network::read_checkpoint(&fx("mlp-mnist-seq.pth")).unwrap();
    for (phase, tol) in [("teacher", 0.0), ("scratch", 1e-6), ("distilled", 1e-6)] {
        let saved = distill_core::checkpoint::read_safetensors(
            &tmp.path()
                .join(format!("out/seed-0/{phase}/model.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        for (ours, theirs) in [("fc1", "1"), ("fc2", "3"), ("fc3", "5")] {
            for p in ["weight", "bias"] {
                let d = max_diff(
                    &saved[&format!("{ours}.{p}")],
                    &torch[&format!("{theirs}.{p}")],
                );
                assert!(d <= tol, "{phase} {ours}.{p}: {d}");
            }
        }
    }
}

#[test]
fn the_text_recipe_shape_checks_with_a_hugging_face_teacher_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = fx("tiny-bert-sst2").display().to_string();
    let recipe = format!(
        r#"name = "hf-teacher"
plugin = "text"
dataset = "sst2"
[data]
options = {{ model = {folder:?}, max_len = 16 }}
[teacher]
model = {{ arch = "bert", base = {folder:?}, init = "random", pooling = "pooler" }}
epochs = 0
optimizer = {{ kind = "adamw", lr = 1e-4 }}
pretrained = {folder:?}
[student]
model = {{ arch = "bert", base = {folder:?}, layers = 1, pooling = "pooler" }}
epochs = 1
optimizer = {{ kind = "adamw", lr = 1e-4 }}
[distill]
losses = [{{ name = "kd", temperature = 2.0 }}]
"#
    );
    std::fs::write(tmp.path().join("r.toml"), &recipe).unwrap();
    let o = distill(tmp.path(), &["check", "r.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("bert 2L-32H-2A-64I"), "{}", stdout(&o));
    // the same checkpoint into a 3-class head: the classifier does not fit, exit 2
    let three = recipe.replace("dataset = \"sst2\"", "dataset = \"tsv-classification\"");
    let three = three.replace(
        "max_len = 16 }",
        "max_len = 16, root = \"x\", num_classes = 3 }",
    );
    std::fs::write(tmp.path().join("r.toml"), three).unwrap();
    let o = distill(tmp.path(), &["check", "r.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`classifier.weight`: the model expects [3, 32], the file has [2, 32]"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn recipes_take_pretrained_weights_for_either_network_and_strict_only_with_them() {
    use distill_core::recipe::Recipe;
    let with = |teacher: &str, student: &str| {
        Recipe::parse(&mnist_recipe(teacher, student), "r.toml", false)
    };
    let r = with(
        "pretrained = \"t.pth\"",
        "pretrained = \"s.pth\"\nstrict = false",
    )
    .unwrap();
    assert_eq!(r.student.pretrained, Some(PathBuf::from("s.pth")));
    assert_eq!((r.teacher.strict, r.student.strict), (None, Some(false)));
    assert_eq!(
        r.distilled_phase().strict,
        Some(false),
        "the distilled student starts alike"
    );
    let e = with("pretrained = \"t.pth\"", "strict = true")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`student.strict` only applies to `student.pretrained`"),
        "{e}"
    );
    // a teacher skips training only when it is loaded; a student always trains
    let e = with("", "").unwrap_err().to_string();
    assert!(e.contains("`teacher.epochs` must be > 0"), "{e}");
    let zero = mnist_recipe("pretrained = \"t.pth\"", "pretrained = \"s.pth\"")
        .replace("epochs = 1", "epochs = 0");
    let e = Recipe::parse(&zero, "r.toml", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`student.epochs` must be > 0"), "{e}");
    // a recipe without the key serialises as before (run records and teacher-cache keys do not change)
    let toml = with("pretrained = \"t.pth\"", "")
        .unwrap()
        .report_toml()
        .unwrap();
    assert!(!toml.contains("strict"), "{toml}");
}
