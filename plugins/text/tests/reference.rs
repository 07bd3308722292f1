//! The MiniLM teacher against sentence-transformers: token ids and sentence embeddings of the committed
//! fixture (`fixtures/reference.json`, written by `fixtures/make_reference.py`). Needs `$DISTILL_MODELS`
//! (skipped with a note when unset).

use std::path::PathBuf;

use candle_core::Device;
use distill_core::{Mode, Network};
use distill_text::{
    data::TextTokenizer,
    models::{build_model, Head, ModelSpec},
};

fn models_dir() -> Option<PathBuf> {
    distill_data::testing::required_dir(
        "DISTILL_MODELS",
        Some("all-MiniLM-L6-v2"),
        "the pretrained-model fixture test",
    )
}

fn fixture() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn tokenizer_ids_equal_the_reference_tokenizer() {
    let Some(models) = models_dir() else { return };
    let fx = fixture();
    let max = fx["max_seq_length"].as_u64().unwrap() as usize;
    let tok =
        TextTokenizer::from_file(&models.join("all-MiniLM-L6-v2/tokenizer.json"), max).unwrap();
    let items = fx["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    for it in items {
        let want: Vec<u32> = it["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(it["sentence"].as_str().unwrap()).unwrap();
        assert_eq!(got, want, "sentence {:?}", it["sentence"]);
    }
}

#[test]
fn truncation_keeps_cls_and_sep() {
    let Some(models) = models_dir() else { return };
    let tok = TextTokenizer::from_file(&models.join("all-MiniLM-L6-v2/tokenizer.json"), 5).unwrap();
    let ids = tok.encode("one two three four five six seven").unwrap();
    // [CLS] one two three [SEP]
    assert_eq!(ids, vec![101, 2028, 2048, 2093, 102]);
    assert!(TextTokenizer::from_file(&models.join("all-MiniLM-L6-v2/tokenizer.json"), 1).is_err());
}

#[test]
fn sentence_embeddings_equal_sentence_transformers() {
    let Some(models) = models_dir() else { return };
    let fx = fixture();
    let mut m = toml::Table::new();
    m.insert("arch".into(), "bert".into());
    let spec = ModelSpec::parse(&m).unwrap();
    let net = build_model(&spec, Head::Embed, &models, 0, &Device::Cpu).unwrap();
    // Batches of mixed lengths, so padding and masking are exercised too.
    let items = fx["items"].as_array().unwrap();
    let mut worst = 1.0f64;
    for chunk in items.chunks(4) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|it| {
                it["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let x = distill_text::data::pad_batch(&refs, &Device::Cpu).unwrap();
        let out = net.forward(&x, Mode::Eval).unwrap();
        let emb: Vec<Vec<f32>> = out.logits.to_vec2().unwrap();
        for (it, e) in chunk.iter().zip(emb) {
            let r: Vec<f64> = it["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(r.len(), e.len());
            let dot: f64 = r.iter().zip(&e).map(|(a, b)| a * *b as f64).sum();
            let nr = r.iter().map(|a| a * a).sum::<f64>().sqrt();
            let ne = e.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (nr * ne);
            assert!(cos >= 0.9999, "cosine {cos} for {:?}", it["sentence"]);
            worst = worst.min(cos);
        }
    }
    eprintln!("worst cosine to sentence-transformers: {worst:.7}");
}

#[test]
fn truncation_is_counted() {
    let Some(models) = models_dir() else { return };
    let tok = TextTokenizer::from_file(&models.join("all-MiniLM-L6-v2/tokenizer.json"), 6).unwrap();
    // "a b c d" is [CLS] a b c d [SEP]: exactly 6, not truncated; one more word is
    let (ids, n) = tok
        .encode_all(["a b c d", "a b c d e", "a"].into_iter())
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        ids.iter().map(|r| r.len()).collect::<Vec<_>>(),
        vec![6, 6, 3]
    );
}
