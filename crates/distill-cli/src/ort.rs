//! `distill bench --onnxruntime`: inference latency of the builtin students in distill and, exported to ONNX,
//! in ONNX Runtime, on the same inputs and by the same protocol.
//!
//! | name | the student (built through its plugin from the recipe's `[student]`, at the recipe's input shape) |
//! |---|---|
//! | `mlp_infer` | hinton-mnist's MLP 784-800-800-10 on 1×28×28 inputs |
//! | `dscnn_infer` | fsdd-kws's DS-CNN (width 32, 4 blocks) on 1×40×32 log-mel inputs |
//! | `bert_infer` | sst2-distilbert's 3-layer BERT (hidden 384, feed-forward 1024, cut from all-MiniLM-L6-v2 in the models dir) on 64 tokens |
//!
//! Each round times distill (this process, [`time_inputs`]: batch 1 and batch 256, one thread then all cores,
//! 3 untimed and 30 timed passes, the protocol of the bench's reports) and then ONNX Runtime
//! (`bench/pytorch/ort_latency.py`, a child Python process: `InferenceSession` with `intra_op_num_threads`
//! 1 and then all cores, one inter-op thread, every graph optimisation, the same warm-up and passes, each pass
//! one `session.run` timed with `perf_counter`). The table shows per setting the median over rounds of each
//! side's median. ONNX Runtime's outputs are checked against distill's on the same batch first (a largest
//! difference above 1e-3 of the outputs' scale is an error: the two would not be computing the same thing).
//! Python with onnxruntime is never a dependency: without it the command says so and stops.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use distill_core::{
    network::export_onnx,
    report::Timing,
    train::{time_inputs, LatencyProtocol},
    Mode, Network, Rng,
};
use distill_registry::Registry;
use serde::{Deserialize, Serialize};

use crate::speed::{self, plugin_network};

/// The workloads, in the order they run.
pub const ORT_WORKLOADS: &[&str] = &["mlp_infer", "dscnn_infer", "bert_infer"];

const HINTON_RECIPE: &str = include_str!("../../../plugins/vision/recipes/hinton-mnist.toml");

/// The largest |ONNX Runtime − distill| allowed, relative to the outputs' largest magnitude (at least 1).
const OUTPUT_TOL: f64 = 1e-3;

/// One setting's medians on both sides, over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrtRow {
    /// Workload name.
    pub workload: String,
    /// Samples per pass.
    pub batch: usize,
    /// Compute threads (1, or all cores).
    pub threads: usize,
    /// distill: each round's median (ms).
    pub distill_ms: Vec<f64>,
    /// ONNX Runtime: each round's median (ms).
    pub ort_ms: Vec<f64>,
}

impl OrtRow {
    /// Median over rounds of distill's medians.
    pub fn distill(&self) -> f64 {
        median(&self.distill_ms)
    }
    /// Median over rounds of ONNX Runtime's medians.
    pub fn ort(&self) -> f64 {
        median(&self.ort_ms)
    }
    /// distill's time over ONNX Runtime's (below 1: distill is faster).
    pub fn ratio(&self) -> f64 {
        self.distill() / self.ort()
    }
}

/// What the Python side prints (one JSON line).
#[derive(Debug, Deserialize)]
struct OrtResult {
    ort_version: String,
    timings: Vec<Timing>,
    /// Per batch size, the largest |ONNX Runtime − distill| and the outputs' scale.
    check: Vec<OutputCheck>,
}

#[derive(Debug, Deserialize)]
struct OutputCheck {
    batch: usize,
    max_abs_diff: f64,
    scale: f64,
}

/// Options of `distill bench --onnxruntime`.
pub struct OrtOptions {
    /// Workloads to run.
    pub workloads: Vec<String>,
    /// Rounds (distill, then ONNX Runtime, per workload per round).
    pub rounds: usize,
    /// The Python interpreter with onnxruntime.
    pub python: String,
    /// Data dir (the recipes' task shapes are read from their plugins; no data set is loaded).
    pub data_dir: PathBuf,
    /// Where to write ort.json and the exported models (None: a temporary dir, ort.json nowhere).
    pub out: Option<PathBuf>,
    /// Passes per setting.
    pub protocol: LatencyProtocol,
    /// Batch sizes (the reports' 1 and 256 unless asked otherwise).
    pub batches: Vec<usize>,
}

fn script() -> PathBuf {
    let here = PathBuf::from("bench/pytorch/ort_latency.py");
    if here.exists() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/pytorch/ort_latency.py")
}

fn median(v: &[f64]) -> f64 {
    speed::median(&mut v.to_vec())
}

/// A workload's student, its input shape (without the batch) and whether its input is token ids.
struct Student {
    net: Box<dyn Network>,
    input_shape: Vec<usize>,
    tokens: bool,
}

/// The `[student]` network of a builtin recipe, built through its plugin as `distill run` builds it.
fn student(reg: &Registry, workload: &str, data_dir: &Path) -> Result<Student> {
    let (text, file) = match workload {
        "mlp_infer" => (HINTON_RECIPE, "hinton-mnist.toml"),
        "dscnn_infer" => (speed::FSDD_RECIPE, "fsdd-kws.toml"),
        "bert_infer" => (speed::SST2_RECIPE, "sst2-distilbert.toml"),
        other => bail!(
            "unknown --onnxruntime workload `{other}` (known: {})",
            ORT_WORKLOADS.join(", ")
        ),
    };
    let (net, input_shape) = plugin_network(reg, text, file, data_dir, None, 0)?;
    Ok(Student {
        net,
        input_shape,
        tokens: workload == "bert_infer",
    })
}

/// A batch of `batch` inputs: token ids `1000 + (i·7919 mod 20000)` (no padding) for text, else uniform
/// values in [-1, 1) from a fixed seed.
fn batch_input(s: &Student, batch: usize) -> Result<Tensor> {
    let mut dims = vec![batch];
    dims.extend_from_slice(&s.input_shape);
    let n: usize = dims.iter().product();
    Ok(if s.tokens {
        let ids: Vec<u32> = (0..n as u32).map(|i| 1000 + (i * 7919) % 20000).collect();
        Tensor::from_vec(ids, dims, &Device::Cpu)?
    } else {
        let mut rng = Rng::new(7);
        let v: Vec<f32> = (0..n).map(|_| 2.0 * rng.uniform_f32() - 1.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)?
    })
}

/// The ONNX graph's inputs for `x`, named by position (`in0`, `in1`): token ids and their attention mask as
/// int64 for text, the tensor itself otherwise.
fn onnx_inputs(s: &Student, x: &Tensor) -> Result<HashMap<String, Tensor>> {
    let mut m = HashMap::new();
    if s.tokens {
        m.insert("in0".to_string(), x.to_dtype(DType::I64)?);
        m.insert("in1".to_string(), x.ne(0u32)?.to_dtype(DType::I64)?);
    } else {
        m.insert("in0".to_string(), x.clone());
    }
    Ok(m)
}

/// Exports the student and writes, per batch size, its inputs and distill's outputs into `dir`.
fn prepare(s: &Student, inputs: &[(usize, Tensor)], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    export_onnx(s.net.as_ref(), &dir.join("model.onnx"))?;
    for (b, x) in inputs {
        candle_core::safetensors::save(
            &onnx_inputs(s, x)?,
            dir.join(format!("inputs-b{b}.safetensors")),
        )?;
        let out = s.net.forward(x, Mode::Eval)?.logits;
        let expected = HashMap::from([("out0".to_string(), out)]);
        candle_core::safetensors::save(&expected, dir.join(format!("expected-b{b}.safetensors")))?;
    }
    Ok(())
}

/// The modules ONNX Runtime's side imports.
const ORT_MODULES: &str = "onnxruntime, safetensors, numpy";

fn run_ort(python: &str, dir: &Path, threads: usize, p: LatencyProtocol) -> Result<OrtResult> {
    let mut cmd = Command::new(python);
    cmd.arg(script())
        .arg(dir)
        .args(["--threads", &format!("1,{threads}")])
        .args(["--warmup", &p.warmup.to_string()])
        .args(["--reps", &p.reps.to_string()]);
    speed::run_child(cmd, "ONNX Runtime's side (bench/pytorch/ort_latency.py)")
}

/// `distill bench --onnxruntime`: prints the table and writes `OUT/ort.json`.
pub fn cmd_ort(reg: &Registry, opts: &OrtOptions) -> Result<Vec<OrtRow>> {
    for w in &opts.workloads {
        if !ORT_WORKLOADS.contains(&w.as_str()) {
            bail!(
                "unknown --onnxruntime workload `{w}` (known: {})",
                ORT_WORKLOADS.join(", ")
            );
        }
    }
    if !speed::python_imports(&opts.python, ORT_MODULES) {
        bail!(
            "`{} -c \"import {ORT_MODULES}\"` fails: the comparison needs Python with onnxruntime (pip \
             install onnxruntime safetensors numpy; --python PATH picks the interpreter)",
            opts.python
        );
    }
    let tmp = tempfile::tempdir()?;
    let root = opts.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let mut rows: Vec<OrtRow> = Vec::new();
    let mut version = String::new();
    for w in &opts.workloads {
        let s = student(reg, w, &opts.data_dir)?;
        let inputs = opts
            .batches
            .iter()
            .map(|&b| Ok((b, batch_input(&s, b)?)))
            .collect::<Result<Vec<_>>>()?;
        let dir = root.join(w);
        prepare(&s, &inputs, &dir)?;
        let named: Vec<(usize, Option<String>, Tensor)> =
            inputs.iter().map(|(b, x)| (*b, None, x.clone())).collect();
        let first = rows.len();
        for round in 0..opts.rounds {
            let ours = time_inputs(s.net.as_ref(), &named, &Device::Cpu, opts.protocol)?;
            let all = ours.iter().map(|t| t.threads).max().unwrap_or(1);
            let theirs = run_ort(&opts.python, &dir, all, opts.protocol)?;
            if round == 0 {
                for c in &theirs.check {
                    if c.max_abs_diff > OUTPUT_TOL * c.scale.max(1.0) {
                        bail!(
                            "`{w}` at batch {}: ONNX Runtime's outputs differ from distill's by {:.3e} \
                             (scale {:.3}): the exported model does not compute what distill does",
                            c.batch,
                            c.max_abs_diff,
                            c.scale
                        );
                    }
                    eprintln!(
                        "[{w}] batch {}: max |onnxruntime - distill| = {:.2e}",
                        c.batch, c.max_abs_diff
                    );
                }
                version = theirs.ort_version.clone();
            }
            for t in &ours {
                let other = theirs
                    .timings
                    .iter()
                    .find(|o| o.batch == t.batch && o.threads == t.threads)
                    .ok_or_else(|| {
                        anyhow!(
                            "ort_latency.py gave no timing at batch {} × {} threads",
                            t.batch,
                            t.threads
                        )
                    })?;
                let row = match rows[first..]
                    .iter_mut()
                    .find(|r| r.batch == t.batch && r.threads == t.threads)
                {
                    Some(r) => r,
                    None => {
                        rows.push(OrtRow {
                            workload: w.clone(),
                            batch: t.batch,
                            threads: t.threads,
                            distill_ms: Vec::new(),
                            ort_ms: Vec::new(),
                        });
                        rows.last_mut().expect("just pushed")
                    }
                };
                row.distill_ms.push(t.median_ms);
                row.ort_ms.push(other.median_ms);
                eprintln!(
                    "[{w} round {}] batch {} × {} thread(s): distill {:.3} ms · onnxruntime {:.3} ms",
                    round + 1,
                    t.batch,
                    t.threads,
                    t.median_ms,
                    other.median_ms
                );
            }
        }
    }
    println!("{}", render(&rows, opts.rounds, opts.protocol, &version));
    if let Some(out) = &opts.out {
        let path = out.join("ort.json");
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(rows)
}

/// The table: per workload, batch and threads, both medians and distill's time over ONNX Runtime's.
pub fn render(rows: &[OrtRow], rounds: usize, p: LatencyProtocol, version: &str) -> String {
    let mut s = format!(
        "Inference latency, distill vs ONNX Runtime {version} (median over {rounds} round(s) of each side's \
         median of {} passes after {} warm-up)\n\n| student | batch | threads | distill (ms) | onnxruntime (ms) \
         | distill / onnxruntime |\n|---|---|---|---|---|---|\n",
        p.reps, p.warmup
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.2} |\n",
            r.workload,
            r.batch,
            r.threads,
            r.distill(),
            r.ort(),
            r.ratio()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_take_medians_over_rounds() {
        let r = OrtRow {
            workload: "mlp_infer".into(),
            batch: 256,
            threads: 1,
            distill_ms: vec![3.0, 1.0, 2.0],
            ort_ms: vec![4.0, 8.0, 4.0],
        };
        assert_eq!(r.distill(), 2.0);
        assert_eq!(r.ort(), 4.0);
        assert_eq!(r.ratio(), 0.5);
        let t = render(&[r], 3, LatencyProtocol::FULL, "1.32.0");
        assert!(
            t.contains("| mlp_infer | 256 | 1 | 2.000 | 4.000 | 0.50 |"),
            "{t}"
        );
    }

    #[test]
    fn token_inputs_carry_their_mask_as_int64() -> Result<()> {
        let s = Student {
            net: Box::new(Dummy(candle_nn::VarMap::new())),
            input_shape: vec![4],
            tokens: true,
        };
        let x = batch_input(&s, 2)?;
        assert_eq!(x.dims(), &[2, 4]);
        let ids: Vec<u32> = x.flatten_all()?.to_vec1()?;
        // 1000 + (i·7919 mod 20000): the fourth wraps
        assert_eq!(&ids[..4], &[1000, 8919, 16838, 4757]);
        let m = onnx_inputs(&s, &x)?;
        assert_eq!(m["in0"].dtype(), DType::I64);
        let mask: Vec<i64> = m["in1"].flatten_all()?.to_vec1()?;
        assert_eq!(mask, vec![1; 8]);
        Ok(())
    }

    struct Dummy(candle_nn::VarMap);
    impl Network for Dummy {
        fn forward(&self, x: &Tensor, _mode: Mode) -> distill_core::Result<distill_core::Outputs> {
            Ok(distill_core::Outputs::logits(x.clone()))
        }
        fn varmap(&self) -> &candle_nn::VarMap {
            &self.0
        }
        fn describe(&self) -> String {
            "dummy".into()
        }
    }

    #[test]
    fn an_unknown_workload_is_an_error_naming_the_known_ones() {
        let reg = Registry::default();
        let e = student(&reg, "resnet_infer", Path::new("."))
            .err()
            .expect("an error")
            .to_string();
        assert!(e.contains("mlp_infer, dscnn_infer, bert_infer"), "{e}");
    }
}
