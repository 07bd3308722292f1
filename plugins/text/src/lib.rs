//! # distill-text: BERT-family distillation (DistilBERT, BERT-PKD, TinyBERT)
//!
//! A BERT encoder in candle ([`models::bert`]) that loads a pretrained Hugging Face `model.safetensors` (the teacher:
//! sentence-transformers' all-MiniLM-L6-v2 from the models dir) and tokenises with the `tokenizers` crate
//! from its `tokenizer.json`. Tasks ([`task`], over data read by [`data`]): SST-2 sentence classification (GLUE TSV; the GLUE dev set is
//! the test split), STS-B sentence-pair similarity (Spearman correlation of cosine similarities), and any
//! `sentence<TAB>label` folder (`tsv-classification`). Students ([`models`]) are BERTs with fewer layers
//! and/or narrower widths, initialised from the teacher's layers (DistilBERT) or randomly. Losses
//! ([`losses`]): DistilBERT's hidden-state cosine, BERT-PKD's patient loss, TinyBERT's attention / hidden /
//! embedding MSE, an embedding MSE; logit KD is the core's `kd`.
//!
//! Recipe `[data.options]`: `max_len` (tokens per sentence after truncation, default 128), `model` (the folder
//! under the models dir whose `tokenizer.json` is used, default `all-MiniLM-L6-v2`), and for
//! `tsv-classification`: `root` (folder with `train.tsv` and `test.tsv`) and `num_classes`.
//!
//! ```
//! use distill_core::Domain;
//! let m = distill_text::TextPlugin.manifest();
//! assert_eq!(m.name, "text");
//! assert!(m.losses.iter().any(|l| l == "pkd"));
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod export_hf;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod task;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_core::Tensor;
use distill_core::{
    deploy::{ExportInfo, ExportRequest, PredictRequest},
    examples::Holdout,
    losses::{DistillLoss, LossSpec},
    recipe::Recipe,
    BuildContext, Domain, Error, Manifest, Network, Outputs, Plugin, Result, RunContext, Split,
    Task, TaskInfo,
};
use serde::Deserialize;

use crate::{
    data::{pad_batch, read_labelled_tsv, read_pairs_tsv, TextTokenizer},
    export_hf::{copy_tokenizer, HfStudent},
    metrics::{accuracy_metric, spearman_metric},
    models::{build_model, Head, ModelSpec, ARCHS},
    task::{ClassificationTask, PairSplit, PairTask},
};

/// Data sets this plugin reads.
pub const DATASETS: &[&str] = &["sst2", "stsb", "tsv-classification"];

/// The text plugin. Its networks read pretrained weights from the run's models dir ([`BuildContext`]).
#[derive(Default)]
pub struct TextPlugin;

/// `[data.options]` of a text recipe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextOptions {
    /// Longest tokenised input (with [CLS] and [SEP]); longer ones are truncated.
    max_len: Option<usize>,
    /// Folder under the models dir whose tokenizer.json tokenises the text.
    model: Option<PathBuf>,
    /// tsv-classification: the folder (relative to the data dir, or absolute).
    root: Option<PathBuf>,
    /// tsv-classification: number of classes.
    num_classes: Option<usize>,
}

const DEFAULT_MAX_LEN: usize = 128;
/// The nominal input length of the report's latency and FLOPs figures (SST-2 dev sentences average 25
/// tokens, STS-B's about 15).
pub const NOMINAL_LEN: usize = 32;

fn options(recipe: &Recipe) -> Result<TextOptions> {
    let o: TextOptions = recipe.options()?;
    let folder_only = o.root.is_some() || o.num_classes.is_some();
    match recipe.dataset.as_str() {
        "sst2" | "stsb" if folder_only => Err(Error::config(
            "data.options",
            "`root` and `num_classes` are only for dataset = \"tsv-classification\"",
        )),
        "tsv-classification" if o.root.is_none() || o.num_classes.unwrap_or(0) < 2 => Err(Error::config(
            "data.options",
            "tsv-classification needs `root` (a folder with train.tsv and test.tsv) and `num_classes` (≥ 2)",
        )),
        "sst2" | "stsb" | "tsv-classification" => Ok(o),
        other => Err(Error::Unknown {
            what: "text dataset",
            name: other.to_string(),
            known: DATASETS.join(", "),
        }),
    }
}

/// The folder whose tokenizer files tokenise the text (`data.options.model`).
fn tokenizer_dir(models_dir: &Path, o: &TextOptions) -> PathBuf {
    let model = o
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from("all-MiniLM-L6-v2"));
    models_dir.join(model) // an absolute path stays as it is
}

fn tokenizer(models_dir: &Path, o: &TextOptions) -> Result<TextTokenizer> {
    let path = tokenizer_dir(models_dir, o).join("tokenizer.json");
    TextTokenizer::from_file(&path, o.max_len.unwrap_or(DEFAULT_MAX_LEN))
}

fn take<T>(v: Vec<T>, limit: Option<usize>) -> Vec<T> {
    match limit {
        Some(n) if n < v.len() => v.into_iter().take(n).collect(),
        _ => v,
    }
}

impl Plugin for TextPlugin {}

impl Domain for TextPlugin {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "text".into(),
            domain: "text (BERT compression)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "BERT-family distillation from a pretrained MiniLM: SST-2, STS-B; DistilBERT, BERT-PKD, TinyBERT".into(),
            models: ARCHS.iter().map(|s| s.to_string()).collect(),
            datasets: DATASETS.iter().map(|s| s.to_string()).collect(),
            losses: losses::LOSSES.iter().map(|s| s.to_string()).collect(),
            recipes: [
                "sst2-distilbert",
                "sst2-pkd",
                "sst2-tinybert",
                "stsb-embedding",
            ]
            .iter()
            .map(|r| format!("plugins/text/recipes/{r}.toml"))
            .collect(),
        }
    }

    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        let o = options(recipe)?;
        // Inputs vary in length; the nominal one (for `distill check`'s dry run, FLOPs and the latency
        // figures of the report) is a 32-token sentence, or max_len if shorter.
        let max_len = o.max_len.unwrap_or(DEFAULT_MAX_LEN).min(NOMINAL_LEN);
        Ok(match recipe.dataset.as_str() {
            "stsb" => TaskInfo {
                dataset: recipe.dataset.clone(),
                input_shape: vec![2, max_len],
                num_classes: 0,
                metric: spearman_metric(),
            },
            _ => TaskInfo {
                dataset: recipe.dataset.clone(),
                input_shape: vec![max_len],
                num_classes: o.num_classes.unwrap_or(2),
                metric: accuracy_metric(),
            },
        })
    }

    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>> {
        let o = options(recipe)?;
        let info = self.task_info(recipe)?;
        let tok = tokenizer(&ctx.models_dir, &o)?;
        let val_n = recipe.data.validation;
        let mut notes = BTreeMap::new();
        notes.insert("max_len".to_string(), serde_json::json!(tok.max_len()));
        let mut truncated = 0usize;
        let mut encode = |texts: Vec<&str>| -> Result<Vec<Vec<u32>>> {
            let (ids, cut) = tok.encode_all(texts.into_iter())?;
            truncated += cut;
            Ok(ids)
        };
        let task: Box<dyn Task> = if recipe.dataset == "stsb" {
            let dir = ctx.data_dir.join("stsb");
            let train = read_pairs_tsv(&dir.join("train.tsv"))?;
            let dev = read_pairs_tsv(&dir.join("dev.tsv"))?;
            let test = read_pairs_tsv(&dir.join("test.tsv"))?;
            if val_n > dev.len() {
                return Err(Error::config(
                    "data.validation",
                    format!("asks for {val_n} validation pairs; STS-B's dev set (the validation split) has {}", dev.len()),
                ));
            }
            let train = take(train, recipe.data.train_limit);
            let dev = take(dev, Some(val_n));
            let test = take(test, recipe.data.test_limit);
            let mut enc = |v: &[data::PairLine]| -> Result<PairSplit> {
                let a = encode(v.iter().map(|p| p.a.as_str()).collect())?;
                let b = encode(v.iter().map(|p| p.b.as_str()).collect())?;
                Ok((
                    a.into_iter().zip(b).collect(),
                    v.iter().map(|p| p.score).collect(),
                ))
            };
            let (tr, va, te) = (enc(&train)?, enc(&dev)?, enc(&test)?);
            notes.insert("train_pairs".into(), serde_json::json!(tr.0.len()));
            notes.insert("truncated_sentences".into(), serde_json::json!(truncated));
            Box::new(PairTask::new(info, tr, va, te, notes))
        } else {
            let (dir, classes, test_file) = match recipe.dataset.as_str() {
                "sst2" => (ctx.data_dir.join("sst2"), 2, "dev.tsv"),
                _ => (
                    ctx.data_dir.join(o.root.as_deref().expect("checked")),
                    info.num_classes,
                    "test.tsv",
                ),
            };
            let all = read_labelled_tsv(&dir.join("train.tsv"), classes)?;
            let test_all = read_labelled_tsv(&dir.join(test_file), classes)?;
            // core's hold-out convention: the last `validation` training sentences are the validation
            // split, train_limit and test_limit keep the first ones (only those are tokenised)
            let holdout = Holdout::new(&recipe.data, all.len(), test_all.len()).map_err(|e| {
                Error::config(dir.join("train.tsv").display().to_string(), e.to_string())
            })?;
            let n_train = all.len() - val_n;
            let train = &all[holdout.indices(Split::Train)];
            let val = &all[holdout.indices(Split::Val)];
            let test = &test_all[holdout.indices(Split::Test)];
            let mut enc = |v: &[data::LabelledLine]| -> Result<(Vec<Vec<u32>>, Vec<u32>)> {
                Ok((
                    encode(v.iter().map(|l| l.text.as_str()).collect())?,
                    v.iter().map(|l| l.label).collect(),
                ))
            };
            let (tr, va, te) = (enc(train)?, enc(val)?, enc(test)?);
            notes.insert("train_sentences".into(), serde_json::json!(tr.0.len()));
            notes.insert("train_available".into(), serde_json::json!(n_train));
            notes.insert("truncated_sentences".into(), serde_json::json!(truncated));
            Box::new(ClassificationTask::new(info, tr, va, te, notes))
        };
        Ok(task)
    }

    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>> {
        let spec = ctx.model::<ModelSpec>(model)?.check()?;
        let head = if ctx.info.input_shape.len() == 2 {
            Head::Embed
        } else {
            Head::Classify(ctx.info.num_classes)
        };
        Ok(Box::new(build_model(
            &spec,
            head,
            ctx.models_dir,
            ctx.seed,
            ctx.device,
        )?))
    }

    fn build_loss(
        &self,
        spec: &LossSpec,
        student: &Outputs,
        teacher: &Outputs,
        ctx: &BuildContext,
    ) -> Result<Option<Box<dyn DistillLoss>>> {
        losses::build(spec, student, teacher, ctx.seed)
    }

    /// Every format: the student's `config.json` and the tokenizer files, and a model table that rebuilds
    /// the student from them; `hf`: also Hugging Face's weights and a README ([`export_hf`]).
    fn export_files(&self, req: &ExportRequest) -> Result<ExportInfo> {
        let o = options(req.recipe)?;
        let spec = ModelSpec::parse(req.model)?;
        let (config, _) = spec.config(req.models_dir)?;
        let info = self.task_info(req.recipe)?;
        let labels: Option<Vec<String>> = match req.recipe.dataset.as_str() {
            "stsb" => None,
            "sst2" => Some(vec!["negative".into(), "positive".into()]),
            _ => Some((0..info.num_classes).map(|c| c.to_string()).collect()),
        };
        let student = HfStudent {
            config: &config,
            pooling: &spec.pooling,
            labels: labels.as_deref(),
            max_len: o.max_len.unwrap_or(DEFAULT_MAX_LEN),
        };
        let write = |name: &str, text: &str| {
            let path = req.dir.join(name);
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
        };
        let json = serde_json::to_string_pretty(&student.config_json()?)
            .map_err(|e| Error::msg(e.to_string()))?;
        write("config.json", &json)?;
        let mut files = vec!["config.json".to_string()];
        files.extend(copy_tokenizer(&tokenizer_dir(req.models_dir, &o), req.dir)?);
        if req.format == "hf" {
            files.extend(student.write_weights(req.weights, req.dir)?);
            write("README.md", &student.readme())?;
            files.push("README.md".into());
        }
        // the student from the export alone: its config.json (the shape) and distill's weights
        let mut model = toml::Table::new();
        for (k, v) in [
            ("arch", "bert"),
            ("base", "."),
            ("init", "random"),
            ("pooling", &spec.pooling),
        ] {
            model.insert(k.into(), v.into());
        }
        Ok(ExportInfo {
            preprocessing: serde_json::json!({
                "input": "text, one sentence per input",
                "tokenizer": "tokenizer.json (WordPiece; [CLS] ... [SEP])",
                "max_len": o.max_len.unwrap_or(DEFAULT_MAX_LEN),
                "truncation": "longer inputs keep their first max_len - 1 tokens and the final [SEP]",
                "padding": "token id 0 ([PAD]); padded positions are masked out of attention and pooling",
                "pooling": spec.pooling,
                "layout": "[batch, tokens] token ids (ONNX: input_ids and attention_mask, i64)",
            }),
            labels: labels.unwrap_or_default(),
            task: Some(info),
            model: Some(model),
            files,
        })
    }

    /// Each input is one sentence, tokenised by the export's `tokenizer.json` (else the recipe's).
    fn predict_input(&self, req: &PredictRequest) -> Result<Tensor> {
        if req.task.num_classes == 0 {
            return Err(Error::config(
                "predict",
                "reports classes; this student embeds sentence pairs (STS-B), it has none",
            ));
        }
        let o = options(req.recipe)?;
        let local = req.dir.join("tokenizer.json");
        let tok = if local.exists() {
            TextTokenizer::from_file(&local, o.max_len.unwrap_or(DEFAULT_MAX_LEN))?
        } else {
            tokenizer(req.models_dir, &o)?
        };
        let (ids, _) = tok.encode_all(req.inputs.iter().map(String::as_str))?;
        let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        pad_batch(&rows, req.device)
    }
}
