//! CSV data: one header line, then one row per sample: `features` numbers, then the class label (an integer
//! in `0..classes`), comma-separated.
//!
//! ```text
//! x,y,label
//! 0.12,-1.5,2
//! ```
//!
//! Recipe options (`[data] options = { ... }`): `features` and `classes` (required), `train`, `test` (files
//! relative to the data dir, required), `val` (optional), `standardize` (default true: features scaled to
//! zero mean and unit variance with the training set's statistics).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use distill_core::{Batch, Error, Result, Rng, Split, Task, TaskInfo};

/// Rows of one CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Row-major `[n, features]`.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<u32>,
}

/// Parses CSV text (`path` names it in errors).
pub fn parse_csv(text: &str, path: &Path, features: usize, classes: usize) -> Result<Rows> {
    let err = |line: usize, msg: String| Error::Data {
        path: PathBuf::from(format!("{}:{line}", path.display())),
        msg,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    match lines.next() {
        Some((_, header)) if !header.is_empty() => {
            let cols = header.split(',').count();
            if cols != features + 1 {
                return Err(err(
                    1,
                    format!(
                        "the header has {cols} columns; expected {features} features and a label"
                    ),
                ));
            }
        }
        _ => {
            return Err(err(
                1,
                "empty file (expected a header line, then rows)".into(),
            ))
        }
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (n, line) in lines.filter(|(_, l)| !l.is_empty()) {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != features + 1 {
            return Err(err(
                n,
                format!("{} columns, expected {}", cells.len(), features + 1),
            ));
        }
        for (c, cell) in cells[..features].iter().enumerate() {
            let v: f32 = cell
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| {
                    err(
                        n,
                        format!("column {}: `{cell}` is not a finite number", c + 1),
                    )
                })?;
            x.push(v);
        }
        let label = cells[features];
        let l: u32 = label
            .parse()
            .ok()
            .filter(|l| (*l as usize) < classes)
            .ok_or_else(|| err(n, format!("label `{label}` is not a class in 0..{classes}")))?;
        y.push(l);
    }
    if y.is_empty() {
        return Err(err(2, "no rows after the header".into()));
    }
    Ok(Rows { x, y })
}

/// A classification task over CSV files, kept in memory as tensors.
pub struct CsvTask {
    info: TaskInfo,
    splits: Vec<(Split, Tensor, Tensor)>,
}

fn option_path(options: &toml::Table, key: &str) -> Result<Option<String>> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
            Error::config(
                "data.options",
                format!("`{key}` must be a file name, got {v}"),
            )
        }),
    }
}

impl CsvTask {
    /// Reads the files the options name from `data_dir`.
    pub fn load(
        info: TaskInfo,
        options: &toml::Table,
        data_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let features = info.input_shape[0];
        let read = |key: &str| -> Result<Option<Rows>> {
            let Some(file) = option_path(options, key)? else {
                return Ok(None);
            };
            let path = data_dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            parse_csv(&text, &path, features, info.num_classes).map(Some)
        };
        let required =
            |key: &str| Error::config("data.options", format!("`{key}` (a CSV file) is required"));
        let train = read("train")?.ok_or_else(|| required("train"))?;
        let test = read("test")?.ok_or_else(|| required("test"))?;
        let val = read("val")?;
        let standardize = match options.get("standardize") {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::config(
                    "data.options",
                    format!("`standardize` must be true or false, got {v}"),
                )
            })?,
        };
        // training-set statistics, applied to every split
        let n = train.y.len() as f64;
        let (mut mean, mut std) = (vec![0f32; features], vec![1f32; features]);
        if standardize {
            for f in 0..features {
                let col = train.x.iter().skip(f).step_by(features).map(|&v| v as f64);
                let m = col.clone().sum::<f64>() / n;
                let var = col.map(|v| (v - m) * (v - m)).sum::<f64>() / n;
                mean[f] = m as f32;
                std[f] = var.sqrt().max(1e-8) as f32;
            }
        }
        let tensors = |rows: Rows| -> Result<(Tensor, Tensor)> {
            let x: Vec<f32> = rows
                .x
                .iter()
                .enumerate()
                .map(|(i, v)| (v - mean[i % features]) / std[i % features])
                .collect();
            let len = rows.y.len();
            Ok((
                Tensor::from_vec(x, (len, features), device)?,
                Tensor::from_vec(rows.y, len, device)?,
            ))
        };
        let mut splits = Vec::new();
        for (split, rows) in [
            (Split::Train, Some(train)),
            (Split::Val, val),
            (Split::Test, Some(test)),
        ] {
            if let Some(rows) = rows {
                let (x, y) = tensors(rows)?;
                splits.push((split, x, y));
            }
        }
        Ok(Self { info, splits })
    }

    fn split(&self, split: Split) -> Option<&(Split, Tensor, Tensor)> {
        self.splits.iter().find(|(s, _, _)| *s == split)
    }
}

impl Task for CsvTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn len(&self, split: Split) -> usize {
        self.split(split).map(|(_, _, y)| y.dims()[0]).unwrap_or(0)
    }

    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        _augment: Option<&str>,
        _rng: &mut Rng,
    ) -> Result<Batch> {
        let (_, x, y) = self
            .split(split)
            .ok_or_else(|| Error::msg(format!("the CSV task has no {split:?} split")))?;
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::new(idx.as_slice(), x.device())?;
        Ok(Batch {
            inputs: x.index_select(&idx, 0)?,
            targets: y.index_select(&idx, 0)?,
            indices: indices.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_names_the_line_of_each_error() {
        let p = Path::new("d.csv");
        let r = parse_csv("a,b,label\n1,2,0\n\n-3.5,4e1,2\n", p, 2, 3).unwrap();
        assert_eq!(
            r,
            Rows {
                x: vec![1.0, 2.0, -3.5, 40.0],
                y: vec![0, 2]
            }
        );
        let e = |t: &str| parse_csv(t, p, 2, 3).unwrap_err().to_string();
        assert_eq!(
            e("a,b,label\n1,2,0\n1,x,1\n"),
            "d.csv:3: column 2: `x` is not a finite number"
        );
        assert_eq!(
            e("a,b,label\n1,2,3\n"),
            "d.csv:2: label `3` is not a class in 0..3"
        );
        assert_eq!(e("a,b,label\n1,2\n"), "d.csv:2: 2 columns, expected 3");
        assert_eq!(
            e("a,label\n1,2\n"),
            "d.csv:1: the header has 2 columns; expected 2 features and a label"
        );
        assert_eq!(
            e(""),
            "d.csv:1: empty file (expected a header line, then rows)"
        );
        assert_eq!(e("a,b,label\n"), "d.csv:2: no rows after the header");
        assert_eq!(
            e("a,b,label\n1,inf,0\n"),
            "d.csv:2: column 2: `inf` is not a finite number"
        );
    }
}
