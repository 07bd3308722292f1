//! `distill export` (safetensors, ONNX, Hugging Face; atomic) and `distill predict` end to end, on tiny runs
//! over synthetic data. Predictions are checked against the network inside distill on the data pipeline's own
//! batches (the test split of the run's task): same top-1, probabilities within 1e-5.
//!
//! With `DISTILL_INTEROP_OUT=DIR`, the text test also leaves its Hugging Face exports and distill's logits in
//! DIR for `scripts/interop/check_hf.py` (transformers), which is never run by CI.

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};
use distill_core::{
    checkpoint::read_safetensors, network::load_network, recipe::Recipe, BuildContext, Domain,
    Mode, Rng, RunContext, Split, Task,
};
use distill_tests::*;

fn value(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn read_value(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// The saved network of `run/seed-0/distilled` built by `plugin` from the run's own card (its model table,
/// the models dir), evaluated on `x`: probabilities per row.
fn reference(plugin: &dyn Domain, run: &Path, models_dir: &Path, x: &Tensor) -> Vec<Vec<f64>> {
    let dir = run.join("seed-0/distilled");
    let card = read_value(&dir.join("card.json"));
    let recipe = Recipe::parse(card["recipe_toml"].as_str().unwrap(), "card", false).unwrap();
    let model: toml::Table = toml::from_str(card["model"].as_str().unwrap()).unwrap();
    let info = plugin.task_info(&recipe).unwrap();
    let mut ctx = RunContext::new("unused", "unused");
    ctx.models_dir = models_dir.to_path_buf();
    let net = plugin
        .build_network(&model, &BuildContext::new(&info, 0, &ctx, None))
        .unwrap();
    load_network(net.as_ref(), &dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = net
        .forward(x, Mode::Eval)
        .unwrap()
        .logits
        .to_vec2()
        .unwrap();
    logits.iter().map(|r| softmax(r)).collect()
}

/// The first `n` test samples of the run's task, batched by the task itself.
fn test_batch(plugin: &dyn Domain, run: &Path, data: &Path, models: &Path, n: usize) -> Tensor {
    let card = read_value(&run.join("seed-0/distilled/card.json"));
    let recipe = Recipe::parse(card["recipe_toml"].as_str().unwrap(), "card", false).unwrap();
    let mut ctx = RunContext::new(data, "unused");
    ctx.models_dir = models.to_path_buf();
    let task: Box<dyn Task> = plugin.load_task(&recipe, &ctx).unwrap();
    let idx: Vec<usize> = (0..n).collect();
    task.batch(Split::Test, &idx, None, &mut Rng::new(0))
        .unwrap()
        .inputs
}

/// Checks `predict --json` output against reference probabilities: one prediction per input in order, the
/// same top-1, every reported class's probability within `tol`, classes by decreasing probability.
fn check_predictions(
    doc: &serde_json::Value,
    inputs: &[String],
    probs: &[Vec<f64>],
    k: usize,
    tol: f64,
) {
    let preds = doc["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), inputs.len(), "{doc}");
    for ((p, input), want) in preds.iter().zip(inputs).zip(probs) {
        assert_eq!(p["kind"], "classes");
        assert_eq!(p["input"].as_str().unwrap(), input);
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), k.min(want.len()));
        let argmax = (0..want.len())
            .max_by(|&a, &b| want[a].total_cmp(&want[b]))
            .unwrap();
        assert_eq!(top[0]["class"].as_u64().unwrap() as usize, argmax, "{p}");
        let mut last = f64::INFINITY;
        for s in top {
            let (c, score) = (
                s["class"].as_u64().unwrap() as usize,
                s["score"].as_f64().unwrap(),
            );
            assert!(
                (score - want[c]).abs() < tol,
                "{input}: class {c}: {score} vs {}",
                want[c]
            );
            assert!(score <= last + 1e-12);
            last = score;
        }
    }
}

fn no_leftovers(dir: &Path, name: &str) {
    assert!(!dir.join(name).exists(), "{name} was written");
    let partial: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.")))
        .collect();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}

/// A finished tiny MNIST-format run in `tmp/out`.
fn vision_run(tmp: &Path) {
    write_synthetic_mnist(&tmp.join("data"), 600, 100);
    std::fs::write(tmp.join("r.toml"), tiny_recipe(2)).unwrap();
    let o = run_in(tmp);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The first `n` test images of the synthetic MNIST as PNG files in `tmp`; their names.
fn mnist_pngs(tmp: &Path, n: usize) -> Vec<String> {
    let set = distill_vision::data::load_mnist(
        &tmp.join("data/mnist"),
        distill_vision::data::Split::Test,
    )
    .unwrap();
    (0..n)
        .map(|i| {
            let name = format!("digit{i}.png");
            image::GrayImage::from_raw(28, 28, set.image(i).to_vec())
                .unwrap()
                .save(tmp.join(&name))
                .unwrap();
            name
        })
        .collect()
}

#[test]
fn export_leaves_nothing_behind_on_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    vision_run(t);
    let card = t.join("out/seed-0/distilled/card.json");
    let fails = |args: &[&str], what: &str, name: &str| {
        let o = distill(t, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        no_leftovers(t, name);
    };
    // a run dir without the card `distill run` writes when it finishes
    std::fs::rename(&card, t.join("card.bak")).unwrap();
    fails(&["export", "out", "--to", "ex"], "card.json", "ex");
    std::fs::rename(t.join("card.bak"), &card).unwrap();
    fails(&["export", "nowhere", "--to", "ex"], "nowhere", "ex");
    fails(
        &["export", "out", "--to", "ex", "--phase", "best"],
        "--phase best",
        "ex",
    );
    fails(
        &["export", "out", "--to", "ex", "--seed", "3"],
        "seed-3",
        "ex",
    );
    fails(
        &["export", "out", "--to", "ex", "--format", "tflite"],
        "--format tflite",
        "ex",
    );
    // the plugin refuses after the export has started: the temporary folder goes too
    fails(
        &["export", "out", "--to", "ex", "--format", "hf"],
        "text (BERT)",
        "ex",
    );
    // a corrupt card
    let good = std::fs::read_to_string(&card).unwrap();
    std::fs::write(&card, good.replace("\"plugin\"", "\"plugn\"")).unwrap();
    fails(&["export", "out", "--to", "ex"], "card.json", "ex");
    std::fs::write(&card, &good).unwrap();

    // an existing export is kept unless --force
    let ok = distill(t, &["export", "out", "--to", "ex"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    std::fs::write(t.join("ex/mine.txt"), "keep").unwrap();
    let o = distill(t, &["export", "out", "--to", "ex"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(t.join("ex/mine.txt").exists());
    let o = distill(
        t,
        &[
            "export", "out", "--to", "ex", "--force", "--phase", "teacher",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!t.join("ex/mine.txt").exists());
    assert_eq!(read_value(&t.join("ex/card.json"))["phase"], "teacher");
    no_leftovers(t, "nothing");
}

#[test]
fn a_graph_student_exports_but_predict_says_it_cannot() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write_graph_folder(&t.join("data/g"), 60);
    std::fs::write(t.join("r.toml"), tiny_graph_recipe(2)).unwrap();
    assert!(run_in(t).status.success());
    let o = distill(t, &["export", "out", "--to", "ex"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = distill(t, &["predict", "ex", "12"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not supported for graph tasks"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn vision_export_predicts_as_the_network_on_the_test_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    vision_run(t);
    let ex = distill(
        t,
        &["export", "out", "--to", "ex", "--format", "safetensors"],
    );
    assert!(ex.status.success(), "{}", stderr(&ex));
    // distill's weights as they are, and a card that says how to feed them
    assert_eq!(
        std::fs::read(t.join("ex/model.safetensors")).unwrap(),
        std::fs::read(t.join("out/seed-0/distilled/model.safetensors")).unwrap()
    );
    let card = read_value(&t.join("ex/card.json"));
    assert_eq!(card["format"], "safetensors");
    assert_eq!(card["task"]["input_shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(card["labels"][7], "7");
    assert_eq!(
        card["preprocessing"]["mean"],
        serde_json::json!([0.1307f32])
    );
    assert_eq!(
        card["files"],
        serde_json::json!(["model.safetensors", "card.json"])
    );
    // an old-style card (run dir) is still read by eval
    let ev = distill(t, &["eval", "ex/model.safetensors", "--data-dir", "data"]);
    assert!(ev.status.success(), "{}", stderr(&ev));

    let files = mnist_pngs(t, 6);
    let mut args = vec!["predict", "ex", "--json", "--top-k", "3"];
    args.extend(files.iter().map(String::as_str));
    let doc = value(&distill(t, &args));
    assert_eq!(doc["format"], "safetensors");
    let x = test_batch(
        &distill_vision::VisionPlugin,
        &t.join("out"),
        &t.join("data"),
        t,
        6,
    );
    let probs = reference(&distill_vision::VisionPlugin, &t.join("out"), t, &x);
    check_predictions(&doc, &files, &probs, 3, 1e-5);

    // lines: `INPUT: label (p), ...`
    let o = distill(t, &["predict", "ex", &files[0], "--top-k", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let top = doc["predictions"][0]["top"][0]["label"]
        .as_str()
        .unwrap()
        .to_string();
    let line = stdout(&o);
    assert!(
        line.starts_with(&format!("{}: {top} (", files[0])),
        "{line}"
    );
    assert_eq!(line.trim().matches('(').count(), 2, "{line}");

    // a bigger colour image is resized and made grey, as the image-folder loader does
    image::RgbImage::from_pixel(56, 40, image::Rgb([200, 10, 10]))
        .save(t.join("big.png"))
        .unwrap();
    let o = distill(t, &["predict", "ex", "big.png", "--json"]);
    assert_eq!(
        value(&o)["predictions"][0]["top"].as_array().unwrap().len(),
        5
    );

    // mistakes name what and where
    std::fs::write(t.join("bad.png"), b"\x89PNG not really").unwrap();
    for (args, what) in [
        (vec!["predict", "ex", "bad.png"], "bad.png"),
        (vec!["predict", "ex", "absent.png"], "absent.png"),
        (vec!["predict", "out", "x.png"], "card.json"),
        (
            vec!["predict", "ex", &files[0], "--format", "onnx"],
            "model.onnx",
        ),
        (vec!["predict", "ex", &files[0], "--top-k", "0"], "--top-k"),
    ] {
        let o = distill(t, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn onnx_export_runs_in_predict_with_the_same_top1() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    vision_run(t);
    let ex = distill(t, &["export", "out", "--to", "ex", "--format", "onnx"]);
    assert!(ex.status.success(), "{}", stderr(&ex));
    assert!(t.join("ex/model.onnx").is_file());
    assert!(!t.join("ex/model.safetensors").exists());
    assert_eq!(read_value(&t.join("ex/card.json"))["format"], "onnx");
    let files = mnist_pngs(t, 6);
    let mut args = vec!["predict", "ex", "--json"];
    args.extend(files.iter().map(String::as_str));
    let doc = value(&distill(t, &args));
    assert_eq!(doc["format"], "onnx");
    let x = test_batch(
        &distill_vision::VisionPlugin,
        &t.join("out"),
        &t.join("data"),
        t,
        6,
    );
    let probs = reference(&distill_vision::VisionPlugin, &t.join("out"), t, &x);
    check_predictions(&doc, &files, &probs, 5, 1e-4);
}

#[test]
fn audio_export_predicts_wav_files_as_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("data/tones");
    let mut testing = String::new();
    for (class, freq) in [("high", 2500.0), ("low", 300.0)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..12 {
            let name = format!("s{i:02}.wav");
            mono_tone_wav(
                &root.join(class).join(&name),
                freq + 11.0 * i as f64,
                8000,
                2000 + 90 * i,
            );
            if i.is_multiple_of(4) {
                testing.push_str(&format!("{class}/{name}\n"));
            }
        }
    }
    std::fs::write(root.join("testing_list.txt"), testing).unwrap();
    let recipe = r#"
name = "tones"
plugin = "audio-classification"
dataset = "audio-folder"
seeds = [0]
[data]
batch_size = 8
eval_batch_size = 64
options = { root = "tones", frontend = { n_mels = 16, frames = 10 } }
[teacher]
model = { arch = "res-cnn", widths = [4, 4, 4, 4] }
epochs = 2
optimizer = { kind = "adamw", lr = 0.01 }
[student]
model = { arch = "ds-cnn", width = 4, blocks = 1 }
epochs = 2
optimizer = { kind = "adamw", lr = 0.01 }
[distill]
losses = [{ name = "kd", temperature = 4.0, weight = 0.9 }, { name = "ce", weight = 0.1 }]
"#;
    std::fs::write(t.join("r.toml"), recipe).unwrap();
    let o = run_in(t);
    assert!(o.status.success(), "{}", stderr(&o));
    let ex = distill(t, &["export", "out", "--to", "ex", "--data-dir", "data"]);
    assert!(ex.status.success(), "{}", stderr(&ex));
    let card = read_value(&t.join("ex/card.json"));
    assert_eq!(card["labels"], serde_json::json!(["high", "low"]));
    assert_eq!(card["preprocessing"]["frontend"]["n_mels"], 16);

    // the task's test clips, in its order
    let (_, test, _) = distill_audio::data::folder_clips(&root).unwrap();
    let files: Vec<String> = test.iter().map(|c| c.path.display().to_string()).collect();
    let mut args = vec!["predict", "ex", "--json", "--top-k", "2"];
    args.extend(files.iter().map(String::as_str));
    let doc = value(&distill(t, &args));
    let x = test_batch(
        &distill_audio::AudioPlugin,
        &t.join("out"),
        &t.join("data"),
        t,
        files.len(),
    );
    let probs = reference(&distill_audio::AudioPlugin, &t.join("out"), t, &x);
    check_predictions(&doc, &files, &probs, 2, 1e-5);
    let labels: Vec<&str> = doc["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["top"][0]["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.iter().all(|l| *l == "high" || *l == "low"),
        "{labels:?}"
    );

    std::fs::write(t.join("broken.wav"), b"RIFF\x10\x00\x00\x00WAVEjunk").unwrap();
    let o = distill(t, &["predict", "ex", "broken.wav"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("broken.wav") && !stderr(&o).contains("skip_bad_files"),
        "{}",
        stderr(&o)
    );
}

const TEXT_RECIPE: &str = r#"
name = "tiny-text"
plugin = "text"
dataset = "tsv-classification"
seeds = [0]
[data]
batch_size = 16
eval_batch_size = 64
options = { root = "tsv", num_classes = 2, model = "tiny", max_len = 12 }
[teacher]
model = { arch = "bert", base = "tiny", init = "random", pooling = "mean" }
epochs = 2
optimizer = { kind = "adamw", lr = 0.003 }
[student]
model = { arch = "bert", base = "tiny", init = "random", layers = 1, intermediate = 16, pooling = "cls" }
epochs = 2
optimizer = { kind = "adamw", lr = 0.003 }
[distill]
losses = [{ name = "kd", temperature = 2.0, weight = 0.9 }, { name = "ce", weight = 0.1 }]
"#;

/// Hugging Face's `BertModel` state-dict names for `layers` layers.
fn hf_bert_names(layers: usize) -> Vec<String> {
    let mut names: Vec<String> = [
        "word_embeddings.weight",
        "position_embeddings.weight",
        "token_type_embeddings.weight",
        "LayerNorm.weight",
        "LayerNorm.bias",
    ]
    .iter()
    .map(|n| format!("embeddings.{n}"))
    .collect();
    for l in 0..layers {
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ] {
            for p in ["weight", "bias"] {
                names.push(format!("encoder.layer.{l}.{m}.{p}"));
            }
        }
    }
    names.sort();
    names
}

/// A finished tiny text run in `t/out` (models in `t/models`, sentences in `t/data/tsv`); the models dir.
fn text_run(t: &Path) -> PathBuf {
    let models = t.join("models");
    write_tiny_bert(&models);
    write_sentences(&t.join("data"));
    std::fs::write(t.join("r.toml"), TEXT_RECIPE).unwrap();
    let o = run_command(t)
        .env("DISTILL_MODELS", &models)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    models
}

/// `distill predict DIR - --json ARGS` with `lines` on stdin and a models dir that does not exist.
fn predict_lines(t: &Path, dir: &str, lines: &[String], args: &[&str]) -> serde_json::Value {
    let mut child = distill_command(t)
        .args(["predict", dir, "-", "--json"])
        .args(args)
        .env("DISTILL_MODELS", t.join("nowhere"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all((lines.join("\r\n") + "\n\n").as_bytes())
            .unwrap();
    }
    value(&child.wait_with_output().unwrap())
}

#[test]
fn text_exports_hf_and_predicts_lines_as_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let models = text_run(t);
    let export = |phase: &str, format: &str, to: &str| {
        let o = distill_command(t)
            .args([
                "export", "out", "--phase", phase, "--format", format, "--to", to,
            ])
            .env("DISTILL_MODELS", &models)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    export("distilled", "hf", "hf-student");
    export("teacher", "hf", "hf-teacher");
    export("distilled", "safetensors", "ex");

    // Hugging Face's layout: config.json with the student's shape, HF names, the tokenizer files
    let hf = t.join("hf-student");
    let cfg = read_value(&hf.join("config.json"));
    assert_eq!(cfg["architectures"], serde_json::json!(["BertModel"]));
    assert_eq!(cfg["model_type"], "bert");
    assert_eq!(cfg["num_hidden_layers"], 1);
    assert_eq!(cfg["intermediate_size"], 16);
    assert_eq!(cfg["hidden_size"], 16);
    assert_eq!(cfg["vocab_size"], 40);
    assert_eq!(cfg["id2label"], serde_json::json!({"0": "0", "1": "1"}));
    assert_eq!(cfg["distill_pooling"], "cls");
    let ours = read_safetensors(
        &t.join("out/seed-0/distilled/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let encoder = read_safetensors(&hf.join("model.safetensors"), &Device::Cpu).unwrap();
    let head = read_safetensors(&hf.join("classifier.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        encoder.keys().cloned().collect::<Vec<_>>(),
        hf_bert_names(1)
    );
    assert_eq!(
        head.keys().cloned().collect::<Vec<_>>(),
        ["classifier.bias", "classifier.weight"]
    );
    for (name, t) in encoder.iter().chain(&head) {
        let diff = (t - &ours[name]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    let meta = std::fs::read(hf.join("model.safetensors")).unwrap();
    assert!(String::from_utf8_lossy(&meta[..400]).contains(r#""format":"pt""#));
    for f in [
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "README.md",
    ] {
        assert!(hf.join(f).is_file(), "{f}");
    }
    assert!(std::fs::read_to_string(hf.join("README.md"))
        .unwrap()
        .contains("hidden[:, 0]"));
    assert_eq!(
        read_value(&t.join("hf-teacher/config.json"))["num_hidden_layers"],
        2
    );
    // predict runs distill's formats, not Hugging Face's
    let o = distill(t, &["predict", "hf-student", "good film"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("transformers"), "{}", stderr(&o));

    // predict: the export alone (no models dir), lines from stdin, against the network on the task's batch
    let test: Vec<String> = (96..104).map(|i| sentence(i).0).collect();
    let doc = predict_lines(t, "ex", &test, &["--top-k", "2"]);
    let x = test_batch(
        &distill_text::TextPlugin,
        &t.join("out"),
        &t.join("data"),
        &models,
        8,
    );
    let probs = reference(&distill_text::TextPlugin, &t.join("out"), &models, &x);
    check_predictions(&doc, &test, &probs, 2, 1e-5);

    // distill's logits and token ids for scripts/interop/check_hf.py
    if let Some(out) = std::env::var_os("DISTILL_INTEROP_OUT").map(PathBuf::from) {
        let mut cases = Vec::new();
        for (phase, dir) in [("distilled", "hf-student"), ("teacher", "hf-teacher")] {
            let tok = distill_text::data::TextTokenizer::from_file(&hf.join("tokenizer.json"), 12)
                .unwrap();
            let ids: Vec<Vec<u32>> = test.iter().map(|s| tok.encode(s).unwrap()).collect();
            let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            let x = distill_text::data::pad_batch(&rows, &Device::Cpu).unwrap();
            let logits = phase_logits(&t.join("out"), phase, &models, &x);
            copy_dir(&t.join(dir), &out.join(dir));
            cases.push(serde_json::json!({"export": dir, "sentences": test, "input_ids": ids, "logits": logits}));
        }
        let doc =
            serde_json::json!({ "written_by": "tests/tests/export_predict.rs", "cases": cases });
        std::fs::write(
            out.join("reference.json"),
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn text_onnx_export_predicts_as_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let models = text_run(t);
    let o = distill_command(t)
        .args(["export", "out", "--format", "onnx", "--to", "ex"])
        .env("DISTILL_MODELS", &models)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // input_ids + attention_mask fed by predict's ONNX runner, the tokenizer from the export
    let test: Vec<String> = (96..112).map(|i| sentence(i).0).collect();
    let doc = predict_lines(t, "ex", &test, &["--top-k", "2"]);
    assert_eq!(doc["format"], "onnx");
    let x = test_batch(
        &distill_text::TextPlugin,
        &t.join("out"),
        &t.join("data"),
        &models,
        16,
    );
    let probs = reference(&distill_text::TextPlugin, &t.join("out"), &models, &x);
    check_predictions(&doc, &test, &probs, 2, 1e-4);
}

/// Logits of `run/seed-0/PHASE`'s text network on `x`.
fn phase_logits(run: &Path, phase: &str, models: &Path, x: &Tensor) -> Vec<Vec<f32>> {
    let dir = run.join("seed-0").join(phase);
    let card = read_value(&dir.join("card.json"));
    let recipe = Recipe::parse(card["recipe_toml"].as_str().unwrap(), "card", false).unwrap();
    let model: toml::Table = toml::from_str(card["model"].as_str().unwrap()).unwrap();
    let p = distill_text::TextPlugin;
    let info = p.task_info(&recipe).unwrap();
    let mut ctx = RunContext::new("unused", "unused");
    ctx.models_dir = models.to_path_buf();
    let net = p
        .build_network(&model, &BuildContext::new(&info, 0, &ctx, None))
        .unwrap();
    load_network(net.as_ref(), &dir.join("model.safetensors"), &Device::Cpu).unwrap();
    net.forward(x, Mode::Eval)
        .unwrap()
        .logits
        .to_vec2()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn detection_predict_gives_the_evaluation_boxes_in_file_pixels() {
    detection_case("safetensors", 1e-5);
}

#[test]
fn detection_onnx_export_gives_the_same_boxes() {
    // the ONNX model's `size` and `offset` outputs reach the same post-processing
    detection_case("onnx", 1e-4);
}

/// An untrained CenterNet saved as a run's student, exported in `format`: `distill predict` on the test
/// canvases gives the evaluation's detections (scores within `tol`, boxes within 1e-3 px).
fn detection_case(format: &str, tol: f64) {
    use distill_detection::{data, task::DetExamples, DetectionPlugin};
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write_synthetic_mnist(&t.join("data"), 300, 60);
    // 40-pixel canvases letterboxed to 48: the boxes are mapped back through the scale
    let recipe_toml = r#"
name = "tiny-det"
plugin = "object-detection"
dataset = "digits-canvas"
seeds = [0]
[data]
batch_size = 8
eval_batch_size = 8
options = { size = 48, digits = { seed = 1, canvas = 40, train = 8, test = 6, max_digits = 2 }, postprocess = { score_threshold = 0.2 } }
[teacher]
model = { arch = "centernet", width = 4, depth = 1 }
epochs = 1
optimizer = { kind = "adamw", lr = 0.01 }
[student]
model = { arch = "centernet", width = 4, depth = 1 }
epochs = 1
optimizer = { kind = "adamw", lr = 0.01 }
[distill]
losses = [{ name = "heatmap-kd", temperature = 2.0, weight = 1.0 }]
"#;
    let recipe = Recipe::parse(recipe_toml, "r.toml", false).unwrap();
    let plugin = DetectionPlugin;
    let info = plugin.task_info(&recipe).unwrap();
    // an untrained student (seeded weights), saved as a finished run would save it
    let ctx = RunContext::new(t.join("data"), t.join("out"));
    let net = plugin
        .build_network(
            &recipe.student.model,
            &BuildContext::new(&info, 3, &ctx, None),
        )
        .unwrap();
    let dir = t.join("out/seed-0/distilled");
    distill_core::network::save_network(net.as_ref(), &dir.join("model.safetensors")).unwrap();
    let card = serde_json::json!({
        "plugin": "object-detection", "recipe": "tiny-det", "dataset": "digits-canvas", "phase": "distilled",
        "seed": 0, "model": toml::to_string(&recipe.student.model).unwrap(), "metric": {},
        "recipe_toml": recipe_toml,
    });
    std::fs::write(dir.join("card.json"), card.to_string()).unwrap();
    let o = distill(
        t,
        &[
            "export",
            "out",
            "--to",
            "ex",
            "--data-dir",
            "data",
            "--format",
            format,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_value(&t.join("ex/card.json"))["labels"][3], "3");

    // the evaluation's detections on the test canvases (original pixels)
    let cfg: data::digits::DigitsConfig =
        toml::from_str("seed = 1\ncanvas = 40\ntrain = 8\ntest = 6\nmax_digits = 2").unwrap();
    let root = data::digits::ensure_generated(&t.join("data"), &cfg).unwrap();
    let ann = root.join("annotations/instances_test.json");
    let set = data::load_coco_split(&ann, &root, 48, 1, None, None).unwrap();
    let coco = data::coco::load_coco(&ann).unwrap();
    let pp = distill_detection::models::postprocess::PostProcess {
        score_threshold: 0.2,
        ..Default::default()
    };
    let ex = DetExamples::new(
        info,
        set.clone(),
        set.clone(),
        pp,
        Default::default(),
        Device::Cpu,
    );
    let idx: Vec<usize> = (0..set.len()).collect();
    let dets = ex.detect(net.as_ref(), &set, &idx, 8).unwrap();
    assert!(
        !dets.is_empty(),
        "an untrained detector above 0.2 finds something on 6 canvases"
    );
    let files: Vec<String> = set
        .image_ids()
        .iter()
        .map(|id| {
            let im = coco.images.iter().find(|i| i.id == *id).unwrap();
            root.join(&im.file_name).display().to_string()
        })
        .collect();
    let mut args = vec!["predict", "ex", "--json"];
    args.extend(files.iter().map(String::as_str));
    let doc = value(&distill(t, &args));
    assert_eq!(doc["format"], format);
    let preds = doc["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), files.len());
    let mut n = 0;
    for (p, id) in preds.iter().zip(set.image_ids()) {
        assert_eq!(p["kind"], "boxes");
        let want: Vec<_> = dets.iter().filter(|d| d.image_id == id).collect();
        let got = p["boxes"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "image {id}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["class"].as_u64().unwrap() + 1, w.category_id);
            assert!((g["score"].as_f64().unwrap() - w.score).abs() < tol);
            for k in 0..4 {
                let v = g["bbox"][k].as_f64().unwrap();
                assert!(
                    (v - w.bbox[k]).abs() < 1e-3,
                    "image {id}: {g} vs {:?}",
                    w.bbox
                );
            }
            n += 1;
        }
    }
    assert_eq!(n, dets.len());
}

/// Copies `tests/fixtures/interop/e2e` (made by `scripts/interop/make_e2e_fixture.py`): a synthetic sentiment
/// set and a `BertForSequenceClassification` fine-tuned on it with transformers.
fn e2e_fixture(t: &Path) -> PathBuf {
    let fx = root().join("tests/fixtures/interop/e2e");
    copy_dir(&fx.join("data"), &t.join("data/toy"));
    copy_dir(&fx.join("tiny-bert-clf"), &t.join("models/tiny-bert-clf"));
    t.join("models")
}

const E2E_RECIPE: &str = r#"
name = "e2e-hf-teacher"
plugin = "text"
dataset = "tsv-classification"
seeds = [0]

[data]
batch_size = 16
eval_batch_size = 64
validation = 40
options = { root = "toy", num_classes = 2, model = "tiny-bert-clf", max_len = 32 }

[teacher]
model = { arch = "bert", base = "tiny-bert-clf", init = "random", pooling = "pooler" }
epochs = 0
optimizer = { kind = "adamw", lr = 1e-3 }
pretrained = "tiny-bert-clf"

[student]
model = { arch = "bert", base = "tiny-bert-clf", init = "random", layers = 1, hidden = 16, heads = 2, intermediate = 32, pooling = "pooler" }
epochs = 3
optimizer = { kind = "adamw", lr = 3e-3 }

[distill]
losses = [{ name = "kd", temperature = 2.0, weight = 0.5 }, { name = "task", weight = 0.5 }]
"#;

/// The issue's end-to-end path: a classifier fine-tuned with transformers is the teacher as it is (no teacher
/// training), `distill run` distils it, the student is exported to ONNX, and `distill predict` on the ONNX file
/// gives the top-1 of the student inside distill on every test sentence.
#[test]
fn hf_teacher_to_onnx_student_predicts_as_inside_distill() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let models = e2e_fixture(t);
    std::fs::write(t.join("r.toml"), E2E_RECIPE).unwrap();
    let o = run_command(t)
        .env("DISTILL_MODELS", &models)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // the teacher was loaded, not trained, and scores what transformers measured on the same test set
    let report = read_value(&t.join("out/report.json"));
    let teacher = &report["runs"][0]["teacher"];
    let fixture = read_value(&models.join("tiny-bert-clf/fixture.json"));
    let torch_acc = fixture["test_accuracy"].as_f64().unwrap();
    assert_eq!(
        teacher["metric"]["mean"].as_f64().unwrap(),
        torch_acc,
        "{teacher}"
    );
    assert_eq!(teacher["headline"], "pretrained", "{teacher}");
    assert_eq!(
        teacher["curves"],
        serde_json::json!([[]]),
        "no teacher epoch ran"
    );

    let o = distill_command(t)
        .args(["export", "out", "--format", "onnx", "--to", "student"])
        .env("DISTILL_MODELS", &models)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let test: Vec<String> = std::fs::read_to_string(t.join("data/toy/test.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit_once('\t').unwrap().0.to_string())
        .collect();
    assert_eq!(test.len(), 64);
    let doc = predict_lines(t, "student", &test, &["--top-k", "2"]);
    assert_eq!(doc["format"], "onnx");
    let x = test_batch(
        &distill_text::TextPlugin,
        &t.join("out"),
        &t.join("data"),
        &models,
        test.len(),
    );
    let probs = reference(&distill_text::TextPlugin, &t.join("out"), &models, &x);
    check_predictions(&doc, &test, &probs, 2, 1e-4);
}
