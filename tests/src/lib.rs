//! Helpers for the workspace-level integration tests: locating the `distill` binary, running it, and
//! writing small synthetic data sets in the real file formats.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub mod http;

/// The target dir and the profile the tests were built with (the test executable lives in
/// `target/<profile>/deps/`).
pub fn target_profile() -> (PathBuf, String) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = std::env::current_exe()
        .ok()
        .and_then(|p| {
            p.parent()?
                .parent()?
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "debug".into());
    (target, profile)
}

/// The `distill` binary built by `cargo build -p distill-cli` (same profile as the tests), or `$DISTILL_BIN`.
pub fn distill_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DISTILL_BIN") {
        return PathBuf::from(p);
    }
    let (target, profile) = target_profile();
    let bin = target.join(profile).join("distill");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p distill-cli`",
        bin.display()
    );
    bin
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `distill` binary as a command in `cwd` with a clean distill environment (no `$DISTILL_DATA`,
/// `$DISTILL_CACHE` or `$DISTILL_REGISTRY`), for tests that spawn it.
pub fn distill_command(cwd: &Path) -> Command {
    let mut c = Command::new(distill_bin());
    c.current_dir(cwd)
        .env_remove("DISTILL_DATA")
        .env_remove("DISTILL_CACHE")
        .env_remove("DISTILL_REGISTRY");
    c
}

/// Runs `distill ARGS` in `cwd` with a clean distill environment.
pub fn distill(cwd: &Path, args: &[&str]) -> Output {
    distill_command(cwd)
        .args(args)
        .output()
        .expect("run distill")
}

fn read_value(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The headline test metric of teacher, scratch and distilled student in a run dir's report.json.
pub fn report_metrics(dir: &Path) -> Vec<f64> {
    let r = read_value(&dir.join("report.json"));
    ["teacher", "scratch", "distilled"]
        .iter()
        .map(|p| r["runs"][0][p]["metric"]["mean"].as_f64().unwrap())
        .collect()
}

/// Per phase of seed 0: its name, its headline test metric and every epoch's training loss, as written.
pub fn run_outcome(dir: &Path) -> Vec<(String, f64, Vec<f64>)> {
    let metrics = report_metrics(dir);
    ["teacher", "scratch", "distilled"]
        .iter()
        .zip(metrics)
        .map(|(p, m)| {
            let res = read_value(&dir.join(format!("seed-0/{p}/result.json")));
            let losses = res["curve"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["train_loss"].as_f64().unwrap())
                .collect();
            (p.to_string(), m, losses)
        })
        .collect()
}

/// `distill run r.toml --data-dir data --out out --quiet --no-cache` in `cwd` (the layout the tests write),
/// as a command a test may add to (e.g. a models dir in the environment).
pub fn run_command(cwd: &Path) -> Command {
    let mut c = distill_command(cwd);
    c.args([
        "run",
        "r.toml",
        "--data-dir",
        "data",
        "--out",
        "out",
        "--quiet",
        "--no-cache",
    ]);
    c
}

/// [`run_command`], run.
pub fn run_in(cwd: &Path) -> Output {
    run_command(cwd).output().expect("run distill")
}

/// Writes an IDX file (big-endian header; `dims` after the magic), optionally gzip-compressed.
pub fn write_idx(path: &Path, magic: u32, dims: &[u32], payload: &[u8], gz: bool) {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(payload);
    if gz {
        let f = std::fs::File::create(path).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        e.finish().unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

/// A learnable MNIST-shaped synthetic set: class `c` is a bright 6x6 square at one of ten positions, plus
/// noise. Writes `mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` under `data_dir`.
pub fn write_synthetic_mnist(data_dir: &Path, n_train: usize, n_test: usize) {
    let dir = data_dir.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut images = vec![0u8; n * 784];
        let mut labels = vec![0u8; n];
        for i in 0..n {
            let c = (next() % 10) as usize;
            labels[i] = c as u8;
            let (r0, c0) = (
                4 + (c / 5) * 12 + (next() % 3) as usize,
                2 + (c % 5) * 5 + (next() % 2) as usize,
            );
            let img = &mut images[i * 784..(i + 1) * 784];
            for r in r0..r0 + 6 {
                for col in c0..(c0 + 6).min(28) {
                    img[r * 28 + col] = 200 + (next() % 56) as u8;
                }
            }
            for _ in 0..40 {
                let p = (next() % 784) as usize;
                img[p] = img[p].saturating_add((next() % 120) as u8);
            }
        }
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            2051,
            &[n as u32, 28, 28],
            &images,
            true,
        );
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            2049,
            &[n as u32],
            &labels,
            true,
        );
    }
}

/// A small, fast recipe on the synthetic set.
pub fn tiny_recipe(epochs: usize) -> String {
    format!(
        r#"name = "tiny"
plugin = "image-classification"
dataset = "mnist"
seeds = [0]

[data]
batch_size = 64
eval_batch_size = 500

[teacher]
model = {{ arch = "mlp", hidden = [64], dropout = 0.1 }}
epochs = {epochs}
augment = "jitter1"
optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }}
schedule = {{ kind = "cosine" }}

[student]
model = {{ arch = "mlp", hidden = [16] }}
epochs = {epochs}
optimizer = {{ kind = "adamw", lr = 0.003 }}

[distill]
losses = [{{ name = "kd", temperature = 4.0, weight = 0.9 }}, {{ name = "ce", weight = 0.1 }}]
"#
    )
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A small learnable graph in the graph-folder format under `dir`: `n` nodes in 3 classes, node `i` in
/// class `i % 3`, joined to the nodes 3 and 6 ids further on (same class) and to its successor; 12 features,
/// feature `c` (and 3 + c) set for class `c`, plus one node-specific feature. Splits: the first 15 nodes train,
/// the next 15 validate, the rest test.
pub fn write_graph_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut nodes = String::from("node_id\tlabel\tfeature_indices\n");
    for i in 0..n {
        let c = i % 3;
        nodes.push_str(&format!("{i}\t{c}\t{},{},{}\n", c, 3 + c, 6 + (i * 5) % 6));
    }
    let mut edges = String::from("src\tdst\n");
    for i in 0..n {
        for d in [1, 3, 6] {
            if i + d < n {
                edges.push_str(&format!("{i}\t{}\n", i + d));
            }
        }
    }
    std::fs::write(dir.join("nodes.tsv"), nodes).unwrap();
    std::fs::write(dir.join("edges.tsv"), edges).unwrap();
    let ids = |r: std::ops::Range<usize>| r.map(|i| format!("{i}\n")).collect::<String>();
    std::fs::write(dir.join("split_train.txt"), ids(0..15)).unwrap();
    std::fs::write(dir.join("split_val.txt"), ids(15..30)).unwrap();
    std::fs::write(dir.join("split_test.txt"), ids(30..n)).unwrap();
}

/// A fast graph recipe over `data/g` written by [`write_graph_folder`]: GCN teacher, MLP student.
pub fn tiny_graph_recipe(epochs: usize) -> String {
    format!(
        r#"name = "tiny-graph"
plugin = "graph"
dataset = "graph-folder"
seeds = [0]

[data]
batch_size = 4096
eval_batch_size = 4096
validation = 15
options = {{ root = "g", num_features = 12, num_classes = 3 }}

[teacher]
model = {{ arch = "gcn", hidden = [8], dropout = 0.1 }}
epochs = {epochs}
optimizer = {{ kind = "adamw", lr = 0.05, weight_decay = 0.0 }}

[student]
model = {{ arch = "mlp", hidden = [8] }}
epochs = {epochs}
optimizer = {{ kind = "adamw", lr = 0.05, weight_decay = 0.0 }}

[distill]
losses = [{{ name = "glnn", params = {{ lambda = 0.5 }} }}]
"#
    )
}

/// Words of the tiny text world: sentences with a "good" word are class 1, with a "bad" word class 0.
pub const GOOD: &[&str] = &["good", "great", "fun", "lovely"];
/// See [`GOOD`].
pub const BAD: &[&str] = &["bad", "awful", "boring", "dull"];
/// See [`GOOD`].
pub const FILLER: &[&str] = &["the", "movie", "film", "was", "a", "plot", "very", "really"];

/// A models dir with `tiny/`: a BERT config (vocab 40, hidden 16, 4 heads, 2 layers) and a WordPiece
/// tokenizer over the words above (tokenizer.json, vocab.txt, tokenizer_config.json,
/// special_tokens_map.json).
pub fn write_tiny_bert(models: &Path) {
    let dir = models.join("tiny");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 32, "max_position_embeddings": 32, "hidden_act": "gelu",
            "model_type": "bert", "architectures": ["BertModel"]}"#,
    )
    .unwrap();
    let mut vocab: Vec<&str> = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!"];
    vocab.extend(GOOD.iter().chain(BAD).chain(FILLER));
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let special = |id: usize, w: &str| {
        serde_json::json!({"id": id, "content": w, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": (0..5).map(|i| special(i, vocab[i])).collect::<Vec<_>>(),
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"do_lower_case": true, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer",
            "model_max_length": 32}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("special_tokens_map.json"),
        r#"{"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]"}"#,
    )
    .unwrap();
}

/// Deterministic sentence `i`: label `i % 2`, 3-7 words around one good (1) or bad (0) word.
pub fn sentence(i: usize) -> (String, usize) {
    let label = i % 2;
    let key = if label == 1 {
        GOOD[i / 2 % 4]
    } else {
        BAD[i / 2 % 4]
    };
    let n = 2 + i % 5;
    let mut words: Vec<&str> = (0..n)
        .map(|j| FILLER[(i * 7 + j * 3) % FILLER.len()])
        .collect();
    words.insert((i / 3) % (n + 1), key);
    (
        words.join(" ") + if i.is_multiple_of(3) { " !" } else { "." },
        label,
    )
}

/// `data/tsv/{train,test}.tsv` in the `sentence<TAB>label` layout.
pub fn write_sentences(data: &Path) {
    let dir = data.join("tsv");
    std::fs::create_dir_all(&dir).unwrap();
    for (file, range) in [("train.tsv", 0..96), ("test.tsv", 96..112)] {
        let mut s = String::from("sentence\tlabel\n");
        for i in range {
            let (text, label) = sentence(i);
            s.push_str(&format!("{text}\t{label}\n"));
        }
        std::fs::write(dir.join(file), s).unwrap();
    }
}

/// A 16-bit mono PCM WAV of a sine at `freq` Hz, `n` samples at `rate` Hz.
pub fn mono_tone_wav(path: &Path, freq: f64, rate: u32, n: usize) {
    let data: Vec<u8> = (0..n)
        .flat_map(|i| {
            let v = 0.4 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin();
            ((v * 32767.0) as i16).to_le_bytes()
        })
        .collect();
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    for v in [16u32, 1 | (1 << 16), rate, rate * 2, 2 | (16 << 16)] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(path, b).unwrap();
}

/// Three noisy spiral arms as the template's CSV (`x,y,label`), from a fixed LCG: class `i % 3`.
pub fn write_spirals(path: &Path, n: usize, seed: u64) {
    let mut state = seed;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut text = String::from("x,y,label\n");
    for i in 0..n {
        let k = i % 3;
        let t = 0.05 + 0.95 * uniform();
        let a = 6.0 * t + 2.0 * std::f64::consts::PI * k as f64 / 3.0;
        let (nx, ny) = (0.1 * (uniform() - 0.5), 0.1 * (uniform() - 0.5));
        text.push_str(&format!(
            "{:.5},{:.5},{k}\n",
            t * a.cos() + nx,
            t * a.sin() + ny
        ));
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
