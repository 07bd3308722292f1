//! The body of every fuzz target, one function per parser that reads user input. Shared by the cargo-fuzz
//! binaries (fuzz_targets/*.rs) and by the stable replay test (tests/tests/fuzz_replay.rs), which feeds
//! every committed input under fuzz/regressions/<target>/ through the same function. Errors are fine;
//! a panic (or an abort on an allocation too big) is a bug.

#![allow(dead_code)] // each fuzz binary uses one function

use std::path::Path;

/// A fuzz target's body: one input, no result (an error is fine; only a panic or an abort is a crash).
pub type Target = fn(&[u8]);

/// The targets by name, as the folders under fuzz/regressions/ are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("recipe", recipe),
    ("registry", registry),
    ("idx", idx),
    ("wav", wav),
    ("graph_tsv", graph_tsv),
    ("coco_json", coco_json),
    ("text_tsv", text_tsv),
];

/// Recipe TOML (distill_core::recipe), with and without its `[quick]` overrides.
pub fn recipe(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = distill_core::recipe::Recipe::parse(text, "fuzz.toml", false);
        let _ = distill_core::recipe::Recipe::parse(text, "fuzz.toml", true);
    }
}

/// Plugin registry TOML (distill-registry); a registry that parses is merged with itself (duplicates).
pub fn registry(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(mut reg) =
            distill_registry::Registry::parse(text, "fuzz.toml", Path::new("/nonexistent"))
        {
            if let Ok(again) = distill_registry::Registry::parse(text, "again.toml", Path::new("/"))
            {
                let _ = reg.merge(again);
            }
        }
    }
}

/// MNIST IDX (distill-vision): input = flags byte, u16 (little-endian) length of the images file, the
/// images file, the labels file. Flag bit 0 / bit 1: the images / labels file is named `.gz`
/// (gunzipped first).
pub fn idx(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let n = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
    let (images, labels) = data[3..].split_at(n);
    let name = |base: &str, gz: bool| {
        if gz {
            format!("{base}.gz")
        } else {
            base.to_string()
        }
    };
    let ip = name("train-images-idx3-ubyte", flags & 1 != 0);
    let lp = name("train-labels-idx1-ubyte", flags & 2 != 0);
    let _ = distill_vision::data::decode_mnist(
        Path::new(&ip),
        images.to_vec(),
        Path::new(&lp),
        labels.to_vec(),
    );
}

/// WAV (distill-audio): decoded, then resampled to 16 kHz as the data loaders do.
pub fn wav(data: &[u8]) {
    if let Ok(a) = distill_audio::data::wav::decode_wav(data, Path::new("fuzz.wav")) {
        let _ = distill_audio::data::wav::resample(&a.samples, a.sample_rate, 16000);
    }
}

/// The graph-folder text format (distill-graph; Cora's copy is one): the input, split at NUL bytes, is
/// nodes.tsv, edges.tsv, split_train.txt, split_val.txt, split_test.txt (missing parts are empty files).
pub fn graph_tsv(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parts: Vec<&str> = text.splitn(5, '\0').collect();
    let names = [
        "nodes.tsv",
        "edges.tsv",
        "split_train.txt",
        "split_val.txt",
        "split_test.txt",
    ];
    let mut read = |p: &Path| {
        let i = names
            .iter()
            .position(|n| p.file_name().is_some_and(|f| f == *n))
            .expect("the loader asked for a file outside the graph format");
        Ok(parts.get(i).copied().unwrap_or("").to_string())
    };
    let _ = distill_graph::data::parse_graph_files(
        Path::new("fuzz-graph"),
        "fuzz",
        &distill_graph::data::Expect::default(),
        true,
        &candle_core::Device::Cpu,
        &mut read,
    );
}

/// COCO detection JSON (distill-detection): parsed and checked; a file that passes is evaluated against
/// itself with the COCO metric (every box as a detection, scores from the input's bytes) and with no
/// detections, as the detection task does with its ground truth.
pub fn coco_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = distill_detection::data::coco::parse_coco(text, Path::new("fuzz.json")) else {
        return;
    };
    let gt = file.ground_truth();
    let dets: Vec<distill_detection::metrics::Detection> = gt
        .iter()
        .enumerate()
        .map(|(i, g)| distill_detection::metrics::Detection {
            image_id: g.image_id,
            category_id: g.category_id,
            bbox: g.bbox,
            score: data.get(i).map_or(0.5, |&b| b as f64 / 255.0),
        })
        .collect();
    let (imgs, cats) = (file.image_ids(), file.category_ids());
    let _ = distill_detection::metrics::coco_eval(&imgs, &cats, &gt, &dets);
    let _ = distill_detection::metrics::coco_eval(&imgs, &cats, &gt, &[]);
    let _ = file.by_image();
}

/// The text plugin's TSV readers (distill-text): input = selector byte, then the file. Bit 0 of the
/// selector picks `score<TAB>sentence1<TAB>sentence2` (STS-B) over `sentence<TAB>label` (SST-2; the upper
/// bits + 1 are the number of classes). When `$DISTILL_MODELS/all-MiniLM-L6-v2/tokenizer.json` exists,
/// the sentences of a file that parses are also tokenised and truncated to 2-17 tokens (selector bits 3-6).
pub fn text_tsv(data: &[u8]) {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    let path = Path::new("fuzz.tsv");
    let sentences: Vec<String> = if sel & 1 == 1 {
        match distill_text::data::parse_pairs_tsv(file, path) {
            Ok(p) => p.into_iter().flat_map(|l| [l.a, l.b]).collect(),
            Err(_) => return,
        }
    } else {
        match distill_text::data::parse_labelled_tsv(file, path, (sel >> 1) as usize + 1) {
            Ok(l) => l.into_iter().map(|l| l.text).collect(),
            Err(_) => return,
        }
    };
    if let Some(tok) = tokenizer((sel as usize >> 3 & 15) + 2) {
        let _ = tok.encode_all(sentences.iter().map(|s| s.as_str()));
    }
}

/// The MiniLM tokenizer from `$DISTILL_MODELS`, loaded once per max length (None without the model dir).
fn tokenizer(max_len: usize) -> Option<&'static distill_text::data::TextTokenizer> {
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<Vec<(usize, &'static distill_text::data::TextTokenizer)>>> =
        OnceLock::new();
    let dir = std::env::var_os("DISTILL_MODELS")?;
    let path = Path::new(&dir).join("all-MiniLM-L6-v2/tokenizer.json");
    let mut cache = CACHE.get_or_init(Default::default).lock().ok()?;
    if let Some((_, t)) = cache.iter().find(|(n, _)| *n == max_len) {
        return Some(t);
    }
    let t: &'static _ = Box::leak(Box::new(
        distill_text::data::TextTokenizer::from_file(&path, max_len).ok()?,
    ));
    cache.push((max_len, t));
    Some(t)
}
