//! A text student leaves distill (`distill export`): for every format, its `config.json` (the student's
//! shape, in Hugging Face's names) and the tokenizer files, so that `distill predict` needs nothing else;
//! for `--format hf`, also `model.safetensors` with Hugging Face's parameter names.
//!
//! A student with `pooling = "pooler"` and a classifier is exactly Hugging Face's
//! `BertForSequenceClassification` (`bert.` prefix, `bert.pooler.dense`, `classifier`): it loads with
//! `AutoModelForSequenceClassification` and gives distill's logits. A mean- or CLS-pooled student has no
//! such class in transformers: it exports as a `BertModel` (`AutoModel`) plus `classifier.safetensors`, and
//! the export's README.md says how to pool and classify (the same steps [`crate::models::TextNet`] takes).

use std::{collections::BTreeMap, path::Path};

use candle_core::Device;
use distill_core::{checkpoint, Error, Result};

use crate::models::bert::BertConfig;

/// The tokenizer files copied from the model folder when present (`tokenizer.json` is required).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// What is exported: the student's shape, pooling, and class names (`None`: a sentence-embedding model).
pub struct HfStudent<'a> {
    /// The encoder's shape.
    pub config: &'a BertConfig,
    /// `"mean"`, `"cls"` or `"pooler"`.
    pub pooling: &'a str,
    /// Class names by index, for a classifier.
    pub labels: Option<&'a [String]>,
    /// Tokens per input after truncation, as distill tokenised (`[SEP]` kept).
    pub max_len: usize,
}

impl HfStudent<'_> {
    /// Whether the student is Hugging Face's `BertForSequenceClassification`.
    pub fn is_sequence_classifier(&self) -> bool {
        self.pooling == "pooler" && self.labels.is_some()
    }

    /// Hugging Face's `config.json`: the encoder's fields plus `architectures`, `model_type` and, for a
    /// classifier, `id2label` / `label2id`.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(self.config).map_err(|e| Error::msg(e.to_string()))?;
        let arch = if self.is_sequence_classifier() {
            "BertForSequenceClassification"
        } else {
            "BertModel"
        };
        let o = v.as_object_mut().expect("a struct serialises as an object");
        o.insert("architectures".into(), serde_json::json!([arch]));
        o.insert("model_type".into(), "bert".into());
        o.insert("pad_token_id".into(), 0.into());
        o.insert("position_embedding_type".into(), "absolute".into());
        o.insert("initializer_range".into(), 0.02.into());
        o.insert("torch_dtype".into(), "float32".into());
        if let Some(labels) = self.labels {
            let id2label: BTreeMap<String, &String> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l))
                .collect();
            let label2id: BTreeMap<&String, usize> =
                labels.iter().enumerate().map(|(i, l)| (l, i)).collect();
            o.insert("id2label".into(), serde_json::json!(id2label));
            o.insert("label2id".into(), serde_json::json!(label2id));
            o.insert("problem_type".into(), "single_label_classification".into());
        }
        o.insert("distill_pooling".into(), serde_json::json!(self.pooling));
        Ok(v)
    }

    /// Writes `model.safetensors` with Hugging Face's names (and, for a mean/CLS-pooled classifier,
    /// `classifier.safetensors`) from distill's `weights`; returns the files written.
    pub fn write_weights(&self, weights: &Path, dir: &Path) -> Result<Vec<String>> {
        let tensors = checkpoint::read_safetensors(weights, &Device::Cpu)?;
        let (mut encoder, mut head) = (BTreeMap::new(), BTreeMap::new());
        for (name, t) in tensors {
            if name.starts_with("classifier.") {
                head.insert(name, t);
            } else if self.is_sequence_classifier() {
                encoder.insert(format!("bert.{name}"), t);
            } else {
                encoder.insert(name, t);
            }
        }
        if self.labels.is_some() == head.is_empty() {
            return Err(Error::data(
                weights,
                "has no classifier.* tensors for a classifier (or has them for an embedding model)",
            ));
        }
        let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let mut files = vec!["model.safetensors".to_string()];
        if self.is_sequence_classifier() {
            encoder.extend(head);
        } else if !head.is_empty() {
            checkpoint::write_safetensors_with_metadata(
                &head,
                &meta,
                &dir.join("classifier.safetensors"),
            )?;
            files.push("classifier.safetensors".into());
        }
        checkpoint::write_safetensors_with_metadata(
            &encoder,
            &meta,
            &dir.join("model.safetensors"),
        )?;
        Ok(files)
    }

    /// The export's README.md: what the files are and how to run them with transformers.
    pub fn readme(&self) -> String {
        let mut s = String::from(
            "# A distill text student in Hugging Face's layout\n\nIn the code below, `DIR` is this folder and \
             `texts` a list of sentences.\n\n",
        );
        if self.is_sequence_classifier() {
            s.push_str(
                "`BertForSequenceClassification` (pooler + classifier, as distill trained it):\n\n```python\n\
                 from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\
                 tok = AutoTokenizer.from_pretrained(DIR)\n\
                 model = AutoModelForSequenceClassification.from_pretrained(DIR).eval()\n\
                 batch = tok(texts, return_tensors=\"pt\", padding=True, truncation=True, max_length=MAX_LEN)\n\
                 logits = model(**batch).logits\n```\n",
            );
            return s.replace("MAX_LEN", &self.max_len.to_string());
        }
        let pool = if self.pooling == "cls" {
            "pooled = hidden[:, 0]  # the [CLS] token's state"
        } else {
            "m = batch[\"attention_mask\"].unsqueeze(-1).float()\npooled = (hidden * m).sum(1) / m.sum(1)  # mean over real tokens"
        };
        s.push_str(&format!(
            "`model.safetensors` is the encoder as a `BertModel` (`AutoModel`); transformers has no class for \
             distill's {} pooling, so apply it yourself (transformers warns that the unused `pooler` is newly \
             initialised: it is not part of this model).\n\n```python\nimport torch\n\
             from transformers import AutoModel, AutoTokenizer\n\
             tok = AutoTokenizer.from_pretrained(DIR)\nmodel = AutoModel.from_pretrained(DIR).eval()\n\
             batch = tok(texts, return_tensors=\"pt\", padding=True, truncation=True, max_length={})\n\
             hidden = model(**batch).last_hidden_state\n{pool}\n",
            self.pooling, self.max_len
        ));
        if self.labels.is_some() {
            s.push_str(
                "from safetensors.torch import load_file\nhead = load_file(f\"{DIR}/classifier.safetensors\")\n\
                 logits = pooled @ head[\"classifier.weight\"].T + head[\"classifier.bias\"]\n",
            );
        }
        s.push_str("```\n");
        s
    }
}

/// Copies the tokenizer files found in `from` into `dir`; `tokenizer.json` must be there.
pub fn copy_tokenizer(from: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for f in TOKENIZER_FILES {
        let src = from.join(f);
        if src.exists() {
            std::fs::copy(&src, dir.join(f)).map_err(|e| Error::io(&src, e))?;
            files.push(f.to_string());
        } else if *f == "tokenizer.json" {
            return Err(Error::data(
                &src,
                "not found (the tokenizer the student was trained with)",
            ));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn config() -> BertConfig {
        serde_json::from_str(
            r#"{"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 8, "max_position_embeddings": 6}"#,
        )
        .unwrap()
    }

    /// distill's names of a 1-layer classifier (a few of them), with `pooler.dense` when `pooler`.
    fn weights(dir: &Path, pooler: bool) -> std::path::PathBuf {
        let mut t = BTreeMap::new();
        let mut names = vec![
            "embeddings.word_embeddings.weight",
            "encoder.layer.0.output.dense.weight",
            "classifier.weight",
            "classifier.bias",
        ];
        if pooler {
            names.extend(["pooler.dense.weight", "pooler.dense.bias"]);
        }
        for (i, n) in names.iter().enumerate() {
            let v = Tensor::full(i as f32, (2, 2), &Device::Cpu).unwrap();
            t.insert(n.to_string(), v);
        }
        let path = dir.join("distill.safetensors");
        checkpoint::write_safetensors_atomic(&t, &path).unwrap();
        path
    }

    fn names(path: &Path) -> Vec<String> {
        let t = checkpoint::read_safetensors(path, &Device::Cpu).unwrap();
        t.keys().cloned().collect()
    }

    #[test]
    fn a_pooler_classifier_is_bert_for_sequence_classification() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, labels) = (config(), vec!["neg".to_string(), "pos".to_string()]);
        let s = HfStudent {
            config: &cfg,
            pooling: "pooler",
            labels: Some(&labels),
            max_len: 16,
        };
        let files = s.write_weights(&weights(d.path(), true), d.path()).unwrap();
        assert_eq!(files, ["model.safetensors"]);
        assert_eq!(
            names(&d.path().join("model.safetensors")),
            [
                "bert.embeddings.word_embeddings.weight",
                "bert.encoder.layer.0.output.dense.weight",
                "bert.pooler.dense.bias",
                "bert.pooler.dense.weight",
                "classifier.bias",
                "classifier.weight",
            ]
        );
        let c = s.config_json().unwrap();
        assert_eq!(
            c["architectures"],
            serde_json::json!(["BertForSequenceClassification"])
        );
        assert_eq!(c["id2label"], serde_json::json!({"0": "neg", "1": "pos"}));
        assert_eq!(c["label2id"], serde_json::json!({"neg": 0, "pos": 1}));
        assert_eq!(c["hidden_size"], 4);
        assert!(s.readme().contains("AutoModelForSequenceClassification"));
        assert!(s.readme().contains("max_length=16"), "{}", s.readme());
    }

    #[test]
    fn a_mean_pooled_classifier_is_a_bert_model_and_its_head() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, labels) = (config(), vec!["a".to_string(), "b".to_string()]);
        let s = HfStudent {
            config: &cfg,
            pooling: "mean",
            labels: Some(&labels),
            max_len: 16,
        };
        let files = s
            .write_weights(&weights(d.path(), false), d.path())
            .unwrap();
        assert_eq!(files, ["model.safetensors", "classifier.safetensors"]);
        assert_eq!(
            names(&d.path().join("model.safetensors")),
            [
                "embeddings.word_embeddings.weight",
                "encoder.layer.0.output.dense.weight"
            ]
        );
        assert_eq!(
            names(&d.path().join("classifier.safetensors")),
            ["classifier.bias", "classifier.weight"]
        );
        assert_eq!(
            s.config_json().unwrap()["architectures"],
            serde_json::json!(["BertModel"])
        );
        assert!(s.readme().contains("m.sum(1)"));
        // an embedding model with a classifier's weights (or the reverse) is refused, naming the file
        let e = HfStudent { labels: None, ..s }
            .write_weights(&weights(d.path(), false), d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("distill.safetensors"), "{e}");
    }

    #[test]
    fn tokenizer_json_is_required() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vocab.txt"), "[PAD]\n").unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = copy_tokenizer(d.path(), out.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        std::fs::write(d.path().join("tokenizer.json"), "{}").unwrap();
        let files = copy_tokenizer(d.path(), out.path()).unwrap();
        assert_eq!(files, ["tokenizer.json", "vocab.txt"]);
        assert!(out.path().join("vocab.txt").is_file());
    }
}
