//! Text data: GLUE-style TSV readers (SST-2, STS-B, any `sentence<TAB>label` file), WordPiece tokenisation
//! with the `tokenizers` crate, padding and length-grouped batch order (the tasks the pipeline trains on
//! are in [`crate::task`]).
//!
//! Every reader error names the file and the 1-based line. Sentences are tokenised once, at load time, with
//! `[CLS]`/`[SEP]` and truncated to `max_len` tokens (the `[SEP]` is kept); batches are padded with
//! [`PAD_ID`] to their longest member only.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use distill_core::{Error, Result, Rng};

use crate::models::bert::PAD_ID;

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
