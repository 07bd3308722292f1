//! Text data: GLUE-style TSV readers (SST-2, STS-B, any `sentence<TAB>label` file), WordPiece tokenisation
//! with the `tokenizers` crate, and the tasks the pipeline trains on.
//!
//! Every reader error names the file and the 1-based line. Sentences are tokenised once, at load time, with
//! `[CLS]`/`[SEP]` and truncated to `max_len` tokens (the `[SEP]` is kept); batches are padded with
//! [`PAD_ID`] to their longest member only.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use candle_core::{Device, Tensor};
use distill_core::{
    task::{evaluate_classification, Evaluation, MetricInfo},
    Batch, Error, Mode, Network, Outputs, Result, Rng, Split, Task, TaskInfo,
};

use crate::{bert::PAD_ID, metrics::spearman};

/// A labelled sentence: its text's 1-based line in its file, and the label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledLine {
    /// 1-based line number.
    pub line: usize,
    /// The sentence (trailing whitespace removed).
    pub text: String,
    /// Class index.
    pub label: u32,
}

/// A scored sentence pair (STS-B).
#[derive(Debug, Clone, PartialEq)]
pub struct PairLine {
    /// 1-based line number.
    pub line: usize,
    /// First sentence.
    pub a: String,
    /// Second sentence.
    pub b: String,
    /// Similarity score, 0-5.
    pub score: f32,
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn decode_text<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let upto = &bytes[..e.valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        Error::data(path, format!("line {line}: not valid UTF-8"))
    })
}

fn at(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::data(path, format!("line {line}: {msg}"))
}

/// Reads a `sentence<TAB>label` file with a header line (GLUE's SST-2 layout). Labels must be integers
/// below `num_classes`; an empty line, a line without a tab, an empty sentence or a bad label is an error
/// naming its line.
/// The data lines of a TSV file after its header (which must equal `header`, shown to users as `shown`): each
/// with its 1-based line number and without a trailing `\r`. An empty file, a wrong header or an empty line is
/// an error naming the file and line.
fn tsv_lines(bytes: &[u8], path: &Path, header: &str, shown: &str) -> Result<Vec<(usize, String)>> {
    let text = decode_text(bytes, path)?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        None => {
            return Err(Error::data(
                path,
                format!("is empty (expected a header `{shown}`)"),
            ))
        }
        Some((_, h)) if h.trim_end() == header => {}
        Some((_, h)) => {
            return Err(at(
                path,
                1,
                format!("expected the header `{shown}`, found `{}`", clip(h)),
            ))
        }
    }
    let mut out = Vec::new();
    for (i, raw) in lines {
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        if l.trim().is_empty() {
            return Err(at(path, i + 1, "empty line"));
        }
        out.push((i + 1, l.to_string()));
    }
    Ok(out)
}

/// Reads a `sentence<TAB>label` file with a header line (GLUE's SST-2 layout). Labels must be integers
/// below `num_classes`; an empty line, a line without a tab, an empty sentence or a bad label is an error
/// naming its line.
pub fn read_labelled_tsv(path: &Path, num_classes: usize) -> Result<Vec<LabelledLine>> {
    parse_labelled_tsv(&read_bytes(path)?, path, num_classes)
}

/// [`read_labelled_tsv`] on a file's bytes (`path` is named in errors).
pub fn parse_labelled_tsv(
    bytes: &[u8],
    path: &Path,
    num_classes: usize,
) -> Result<Vec<LabelledLine>> {
    let mut out = Vec::new();
    for (line, l) in tsv_lines(bytes, path, "sentence\tlabel", "sentence<TAB>label")? {
        let Some((sentence, label)) = l.rsplit_once('\t') else {
            return Err(at(path, line, "no tab: expected `sentence<TAB>label`"));
        };
        let sentence = sentence.trim();
        if sentence.is_empty() {
            return Err(at(path, line, "empty sentence"));
        }
        let label: u32 = label.trim().parse().map_err(|_| {
            at(
                path,
                line,
                format!("label `{}` is not a class number", clip(label)),
            )
        })?;
        if label as usize >= num_classes {
            return Err(at(
                path,
                line,
                format!("label {label} is out of range (the task has {num_classes} classes)"),
            ));
        }
        out.push(LabelledLine {
            line,
            text: sentence.to_string(),
            label,
        });
    }
    if out.is_empty() {
        return Err(Error::data(path, "has a header but no sentences"));
    }
    Ok(out)
}

/// Reads an STS-B `score<TAB>sentence1<TAB>sentence2` file with a header line; scores must be in 0-5.
pub fn read_pairs_tsv(path: &Path) -> Result<Vec<PairLine>> {
    parse_pairs_tsv(&read_bytes(path)?, path)
}

/// [`read_pairs_tsv`] on a file's bytes (`path` is named in errors).
pub fn parse_pairs_tsv(bytes: &[u8], path: &Path) -> Result<Vec<PairLine>> {
    let mut out = Vec::new();
    let shown = "score<TAB>sentence1<TAB>sentence2";
    for (line, l) in tsv_lines(bytes, path, "score\tsentence1\tsentence2", shown)? {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() != 3 {
            return Err(at(
                path,
                line,
                format!(
                    "{} tab-separated fields, expected 3 (score, sentence1, sentence2)",
                    f.len()
                ),
            ));
        }
        let score: f32 = f[0].trim().parse().map_err(|_| {
            at(
                path,
                line,
                format!("score `{}` is not a number", clip(f[0])),
            )
        })?;
        if !(0.0..=5.0).contains(&score) {
            return Err(at(path, line, format!("score {score} is outside 0-5")));
        }
        let (a, b) = (f[1].trim(), f[2].trim());
        if a.is_empty() || b.is_empty() {
            return Err(at(path, line, "empty sentence"));
        }
        out.push(PairLine {
            line,
            a: a.to_string(),
            b: b.to_string(),
            score,
        });
    }
    if out.is_empty() {
        return Err(Error::data(path, "has a header but no pairs"));
    }
    Ok(out)
}

fn clip(s: &str) -> String {
    let c: String = s.chars().take(60).collect();
    if c.len() < s.len() {
        format!("{c}…")
    } else {
        c
    }
}

/// WordPiece tokenisation from a model's `tokenizer.json`, with our own truncation (the file's own
/// truncation and padding settings are switched off).
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; inputs longer than `max_len` tokens (at least 2, for `[CLS]` and `[SEP]`)
    /// are truncated.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            return Err(Error::config(
                "data.options.max_len",
                format!("must be at least 2 (room for [CLS] and [SEP]), got {max_len}"),
            ));
        }
        if !path.exists() {
            return Err(Error::data(
                path,
                "not found (the tokenizer of the model named by data.options.model; is the models dir right?)",
            ));
        }
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::data(path, format!("not a tokenizer.json: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::data(path, e.to_string()))?;
        Ok(Self {
            inner,
            max_len,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text` with `[CLS]` ... `[SEP]`, at most `max_len` of them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_flagged(text)?.0)
    }

    /// [`TextTokenizer::encode`], and whether the text had to be truncated.
    pub fn encode_flagged(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let enc = self.inner.encode(text, true).map_err(|e| {
            Error::data(&self.path, format!("cannot tokenise `{}`: {e}", clip(text)))
        })?;
        let mut ids = enc.get_ids().to_vec();
        let cut = ids.len() > self.max_len;
        if cut {
            let last = *ids.last().expect("non-empty");
            ids.truncate(self.max_len - 1);
            ids.push(last);
        }
        Ok((ids, cut))
    }

    /// Encodes many texts; also returns how many were truncated.
    pub fn encode_all<'a>(
        &self,
        texts: impl Iterator<Item = &'a str>,
    ) -> Result<(Vec<Vec<u32>>, usize)> {
        let mut n = 0;
        let ids = texts
            .map(|t| {
                let (ids, cut) = self.encode_flagged(t)?;
                n += cut as usize;
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((ids, n))
    }

    /// The truncation length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

/// Pads token-id rows with [`PAD_ID`] to the longest: `[rows.len(), T]` u32.
pub fn pad_batch(rows: &[&[u32]], device: &Device) -> Result<Tensor> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut v = vec![PAD_ID; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        v[i * t..i * t + r.len()].copy_from_slice(r);
    }
    Ok(Tensor::from_vec(v, (rows.len(), t), device)?)
}

/// Groups an epoch's shuffled samples by length (as Hugging Face's `group_by_length`): windows of 50
/// batches are sorted by length and cut into batches, and the batches are shuffled, so each batch pads to
/// nearly its own length while batch composition stays random from epoch to epoch.
pub fn group_by_length(
    perm: Vec<usize>,
    len_of: impl Fn(usize) -> usize,
    batch_size: usize,
    rng: &mut Rng,
) -> Vec<usize> {
    let bs = batch_size.max(1);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for window in perm.chunks(bs * 50) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| std::cmp::Reverse(len_of(i)));
        batches.extend(w.chunks(bs).map(|c| c.to_vec()));
    }
    // The trainer cuts the result into consecutive batches of `batch_size`: full batches are shuffled, the
    // short ones (one per window at most) go last so they do not shift the cuts.
    let (full, short): (Vec<Vec<usize>>, Vec<Vec<usize>>) =
        batches.into_iter().partition(|b| b.len() == bs);
    let order = rng.permutation(full.len());
    let mut out: Vec<usize> = order.into_iter().flat_map(|i| full[i].clone()).collect();
    out.extend(short.into_iter().flatten());
    out
}

/// Sentence classification over tokenised sentences.
pub struct ClassificationTask {
    info: TaskInfo,
    splits: HashMap<Split, (Vec<Vec<u32>>, Vec<u32>)>,
    notes: BTreeMap<String, serde_json::Value>,
}

impl ClassificationTask {
    /// A task from tokenised splits; `notes` go into the report.
    pub fn new(
        info: TaskInfo,
        train: (Vec<Vec<u32>>, Vec<u32>),
        val: (Vec<Vec<u32>>, Vec<u32>),
        test: (Vec<Vec<u32>>, Vec<u32>),
        notes: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        let splits = [
            (Split::Train, train),
            (Split::Val, val),
            (Split::Test, test),
        ]
        .into_iter()
        .collect();
        Self {
            info,
            splits,
            notes,
        }
    }
}

impl Task for ClassificationTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }
    fn len(&self, split: Split) -> usize {
        self.splits[&split].0.len()
    }
    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        _augment: Option<&str>,
        _rng: &mut Rng,
    ) -> Result<Batch> {
        let (ids, labels) = &self.splits[&split];
        let rows: Vec<&[u32]> = indices.iter().map(|&i| ids[i].as_slice()).collect();
        let y: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
        Ok(Batch {
            inputs: pad_batch(&rows, &Device::Cpu)?,
            targets: Tensor::new(y, &Device::Cpu)?,
            indices: indices.to_vec(),
        })
    }
    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        evaluate_classification(self, net, split, batch_size)
    }
    fn batch_order(&self, perm: Vec<usize>, batch_size: usize, rng: &mut Rng) -> Vec<usize> {
        let ids = &self.splits[&Split::Train].0;
        group_by_length(perm, |i| ids[i].len(), batch_size, rng)
    }
    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
    }
}

/// One split of a pair task: tokenised (sentence 1, sentence 2) and their scores.
pub type PairSplit = (Vec<(Vec<u32>, Vec<u32>)>, Vec<f32>);

/// Sentence-pair similarity (STS-B): a network maps `[B, 2, T]` pairs to `[B, 2·D]` (the two sentence
/// embeddings side by side); the task loss is sentence-transformers' CosineSimilarityLoss (MSE between
/// cos(u, v) and score/5) and the metric is the Spearman correlation of cos(u, v) with the gold scores.
pub struct PairTask {
    info: TaskInfo,
    splits: HashMap<Split, PairSplit>,
    notes: BTreeMap<String, serde_json::Value>,
}

impl PairTask {
    /// A task from tokenised splits.
    pub fn new(
        info: TaskInfo,
        train: PairSplit,
        val: PairSplit,
        test: PairSplit,
        notes: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        let splits = [
            (Split::Train, train),
            (Split::Val, val),
            (Split::Test, test),
        ]
        .into_iter()
        .collect();
        Self {
            info,
            splits,
            notes,
        }
    }
}

/// Cosine similarity of the two halves of `[B, 2·D]` pair embeddings: `[B]`.
pub fn pair_cosine(logits: &Tensor) -> Result<Tensor> {
    let (_, d2) = logits.dims2()?;
    if d2 % 2 != 0 {
        return Err(Error::Shape(format!(
            "pair embeddings must be [batch, 2·dim], got {:?}",
            logits.dims()
        )));
    }
    let d = d2 / 2;
    let u = logits.narrow(1, 0, d)?;
    let v = logits.narrow(1, d, d)?;
    let dot = (&u * &v)?.sum(1)?;
    let nu = u.sqr()?.sum(1)?.sqrt()?;
    let nv = v.sqr()?.sum(1)?.sqrt()?;
    let den = (nu * nv)?.clamp(1e-8, f64::MAX)?;
    Ok(dot.div(&den)?)
}

impl Task for PairTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }
    fn len(&self, split: Split) -> usize {
        self.splits[&split].0.len()
    }
    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        _augment: Option<&str>,
        _rng: &mut Rng,
    ) -> Result<Batch> {
        let (pairs, scores) = &self.splits[&split];
        let t = indices
            .iter()
            .map(|&i| pairs[i].0.len().max(pairs[i].1.len()))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut v = vec![PAD_ID; indices.len() * 2 * t];
        for (k, &i) in indices.iter().enumerate() {
            let (a, b) = &pairs[i];
            v[2 * k * t..2 * k * t + a.len()].copy_from_slice(a);
            v[(2 * k + 1) * t..(2 * k + 1) * t + b.len()].copy_from_slice(b);
        }
        let y: Vec<f32> = indices.iter().map(|&i| scores[i]).collect();
        Ok(Batch {
            inputs: Tensor::from_vec(v, (indices.len(), 2, t), &Device::Cpu)?,
            targets: Tensor::new(y, &Device::Cpu)?,
            indices: indices.to_vec(),
        })
    }
    fn batch_order(&self, perm: Vec<usize>, batch_size: usize, rng: &mut Rng) -> Vec<usize> {
        let pairs = &self.splits[&Split::Train].0;
        group_by_length(
            perm,
            |i| pairs[i].0.len().max(pairs[i].1.len()),
            batch_size,
            rng,
        )
    }
    fn task_loss(&self, outputs: &Outputs, batch: &Batch) -> Result<Tensor> {
        let cos = pair_cosine(&outputs.logits)?;
        let target = (batch.targets.to_dtype(candle_core::DType::F32)? / 5.0)?;
        Ok((cos - target)?.sqr()?.mean_all()?)
    }
    fn evaluate(&self, net: &dyn Network, split: Split, batch_size: usize) -> Result<Evaluation> {
        let n = self.len(split);
        let mut rng = Rng::new(0);
        let idx: Vec<usize> = (0..n).collect();
        let mut pred = Vec::with_capacity(n);
        for chunk in idx.chunks(batch_size.max(1)) {
            let batch = self.batch(split, chunk, None, &mut rng)?;
            let out = net.forward(&batch.inputs, Mode::Eval)?;
            pred.extend(pair_cosine(&out.logits)?.to_vec1::<f32>()?);
        }
        let gold = &self.splits[&split].1;
        let p: Vec<f64> = pred.iter().map(|&x| x as f64).collect();
        let g: Vec<f64> = gold.iter().map(|&x| x as f64).collect();
        let mut extra = BTreeMap::new();
        extra.insert("pearson".to_string(), crate::metrics::pearson(&p, &g));
        Ok(Evaluation {
            metric: spearman(&p, &g),
            extra,
        })
    }
    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        self.notes.clone()
    }
}

/// The metric of a classification task.
pub fn accuracy_metric() -> MetricInfo {
    MetricInfo {
        name: "accuracy".into(),
        higher_is_better: true,
    }
}

/// The metric of a pair-similarity task.
pub fn spearman_metric() -> MetricInfo {
    MetricInfo {
        name: "spearman".into(),
        higher_is_better: true,
    }
}
