//! CSV data: one header line, then one row per sample: `features` numbers, then the class label (an integer
//! in `0..classes`), comma-separated.
//!
//! ```text
//! x,y,label
//! 0.12,-1.5,2
//! ```
//!
//! Recipe options (`[data] options = { ... }`, [`CsvOptions`]): `features` and `classes` (required), `train`,
//! `test` (files relative to the data dir, required), `standardize` (default true: features scaled to zero
//! mean and unit variance with the training split's statistics). The validation split is not a file of its
//! own: `[data] validation = N` holds out the training file's last N rows (distill-core's [`Holdout`]).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use distill_core::{
    recipe::DataConfig, Batch, Error, Examples, Holdout, Result, Rng, Source, Split, TaskInfo,
};
use serde::Deserialize;

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

/// The recipe's `[data] options`, checked once: unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Numbers per row.
    pub features: usize,
    /// Number of classes (labels are `0..classes`).
    pub classes: usize,
    /// The training file, relative to the data dir (the validation split is cut from its last rows).
    pub train: String,
    /// The test file, relative to the data dir.
    pub test: String,
    /// Scale features to zero mean and unit variance with the training split's statistics (default true).
    #[serde(default = "yes")]
    pub standardize: bool,
}

fn yes() -> bool {
    true
}

impl CsvOptions {
    /// Reads `data.options` (absent: an empty table, which names the first missing key).
    pub fn from_recipe(data: &DataConfig) -> Result<Self> {
        let table = data.options.clone().unwrap_or_default();
        let options: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::config("data.options", e.message()))?;
        for (key, n) in [("features", options.features), ("classes", options.classes)] {
            if n == 0 {
                return Err(Error::config(
                    "data.options",
                    format!("`{key}` must be a positive integer, got 0"),
                ));
            }
        }
        Ok(options)
    }
}

/// The examples of a CSV data set, kept in memory as tensors: `(features, labels)` per source. The splits
/// are cut by distill-core ([`distill_core::SplitTask`]).
pub struct CsvExamples {
    info: TaskInfo,
    train: (Tensor, Tensor),
    test: (Tensor, Tensor),
}

impl CsvExamples {
    /// Reads the files `options` names from `data_dir`; the statistics for standardising come from the
    /// rows `data` leaves for training (never the validation or test rows).
    pub fn load(
        info: TaskInfo,
        options: &CsvOptions,
        data: &DataConfig,
        data_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let features = options.features;
        let read = |file: &str| -> Result<Rows> {
            let path = data_dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            parse_csv(&text, &path, features, options.classes)
        };
        let train = read(&options.train)?;
        let test = read(&options.test)?;
        let train_rows = Holdout::new(data, train.y.len(), test.y.len())?.indices(Split::Train);
        let (mut mean, mut std) = (vec![0f32; features], vec![1f32; features]);
        if options.standardize {
            let n = train_rows.len().max(1) as f64;
            let rows = &train.x[train_rows.start * features..train_rows.end * features];
            for f in 0..features {
                let col = rows.iter().skip(f).step_by(features).map(|&v| v as f64);
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
        Ok(Self {
            info,
            train: tensors(train)?,
            test: tensors(test)?,
        })
    }

    fn source(&self, source: Source) -> &(Tensor, Tensor) {
        match source {
            Source::Train => &self.train,
            Source::Test => &self.test,
        }
    }
}

impl Examples for CsvExamples {
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn len(&self, source: Source) -> usize {
        self.source(source).1.dims()[0]
    }

    fn batch(
        &self,
        source: Source,
        indices: &[usize],
        _augment: Option<&str>,
        _rng: &mut Rng,
    ) -> Result<Batch> {
        let (x, y) = self.source(source);
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

    #[test]
    fn options_are_typed_and_unknown_keys_refused() {
        let data = |text: &str| DataConfig {
            options: Some(text.parse().unwrap()),
            ..Default::default()
        };
        let o = CsvOptions::from_recipe(&data(
            "features = 2\nclasses = 3\ntrain = \"a.csv\"\ntest = \"b.csv\"",
        ))
        .unwrap();
        assert_eq!((o.features, o.classes, o.standardize), (2, 3, true));
        let e = |text: &str| {
            CsvOptions::from_recipe(&data(text))
                .unwrap_err()
                .to_string()
        };
        let unknown = e("features = 2\nclasses = 3\ntrain = \"a\"\ntest = \"b\"\nval = \"c\"");
        assert!(
            unknown.contains("data.options") && unknown.contains("unknown field `val`"),
            "{unknown}"
        );
        let missing = e("features = 2\nclasses = 3\ntest = \"b\"");
        assert!(missing.contains("missing field `train`"), "{missing}");
        let zero = e("features = 0\nclasses = 3\ntrain = \"a\"\ntest = \"b\"");
        assert!(
            zero.contains("`features` must be a positive integer"),
            "{zero}"
        );
    }
}
