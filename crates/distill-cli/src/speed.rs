//! `distill bench --speed`: training throughput of this framework against PyTorch on the same workloads.
//!
//! Each workload is the framework's own code path (distill-nn's MLP and fused ops, the core's losses and fused
//! optimisers, candle convolutions as the vision plugin uses them, and the graph plugin's GCN task and network
//! reached through the plugin contract with the recipe `gcn-cora`), timed in its own process
//! (`distill bench --speed-worker NAME`, so that its peak resident memory is its own), alternated with
//! `bench/pytorch/speed.py` doing the same arithmetic when `python3 -c "import torch"` works. The workloads:
//!
//! | name | what one measurement is |
//! |---|---|
//! | `mlp_ce` | one MNIST epoch (60,000 images, batch 128), MLP 784-1200-1200-10, AdamW, cross-entropy |
//! | `mlp_kd` | one distillation epoch: frozen 784-1200-1200-10 teacher, 784-800-800-10 student, `0.9·T²·KL + 0.1·CE`, T = 4 |
//! | `cnn_step` | 50 steps at batch 128: conv 1→32 3×3, ReLU, max-pool 2, conv 32→64 3×3, ReLU, max-pool 2, 1600→128→10, SGD |
//! | `gcn` | 200 full-batch epochs of a 2-layer GCN (16 hidden) on Cora, Adam, L2 on the first layer |
//! | `bert_step` | 20 steps at batch 32 × 64 tokens of a MiniLM-L6-shaped BERT (6 layers, hidden 384, 12 heads, randomly initialised from the config in the models dir), mean pooling, dropout 0.1, a 2-way classifier, AdamW, cross-entropy |
//! | `bert_kd` | 20 distillation steps at the same batch: the 6-layer BERT frozen (eval), a 3-layer student, `0.9·T²·KL + 0.1·CE` at T = 4, AdamW |
//! | `dscnn_step` | 50 steps at batch 64 of the audio plugin's DS-CNN student (width 32, 4 blocks) on 40x32 log-mel-sized inputs (seeded Gaussian), AdamW, cross-entropy |
//!
//! The timed part excludes loading and a warm-up (5 batches, 3 CNN steps or 5 GCN epochs), as in the Python
//! script.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_core::{
    losses::{ce_loss, kd_loss},
    recipe::Recipe,
    Batch, BuildContext, Mode, Network, Rng, RunContext, Split, Task,
};
use distill_nn::{
    init::seeded_var_builder,
    layers::{Mlp, MlpConfig},
    optim::{build_optimizer, trainable_vars, Optimizer, OptimizerConfig, OptimizerKind},
};
use distill_registry::Registry;
use serde::{Deserialize, Serialize};

use crate::plugins::find_plugin;

/// The recipe whose task and teacher network the `gcn` workload trains (Kipf & Welling's GCN on Cora).
const GCN_RECIPE: &str = include_str!("../../../plugins/graph/recipes/gcn-cora.toml");

/// The workloads, in the order they run.
pub const WORKLOADS: &[&str] = &[
    "mlp_ce",
    "mlp_kd",
    "cnn_step",
    "gcn",
    "dscnn_step",
    "bert_step",
    "bert_kd",
];

/// One timed run of one workload by one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Workload name.
    pub workload: String,
    /// `distill` or `pytorch`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Samples processed in the timed part (images, or nodes × epochs for `gcn`).
    pub samples: usize,
    /// Seconds of the timed part.
    pub seconds: f64,
    /// `samples / seconds`.
    pub samples_per_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

fn adamw(lr: f64, wd: f64) -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Adamw,
        lr,
        momentum: 0.0,
        nesterov: false,
        weight_decay: Some(wd),
        betas: None,
        eps: None,
        decay_only: None,
    }
}

/// The MNIST training images as one `[60000, 784]` f32 tensor in [0, 1] and their `[60000]` u32 labels.
fn mnist(data_dir: &Path) -> Result<(Tensor, Tensor)> {
    let set = distill_data::mnist::load_mnist(&data_dir.join("mnist"), true)?;
    let (n, d) = (set.count, set.rows * set.cols);
    if d != 784 {
        bail!(
            "{}: MNIST images are 28x28, these are {}x{}",
            data_dir.join("mnist").display(),
            set.rows,
            set.cols
        );
    }
    let x: Vec<f32> = set.pixels.iter().map(|&v| v as f32 / 255.0).collect();
    Ok((
        Tensor::from_vec(x, (n, d), &Device::Cpu)?,
        Tensor::from_vec(set.labels, n, &Device::Cpu)?,
    ))
}

/// Shuffled batches of `bs` indices over `n` samples (the last one shorter).
fn batches(n: usize, bs: usize, rng: &mut Rng) -> Result<Vec<Tensor>> {
    let perm: Vec<u32> = rng.permutation(n).into_iter().map(|i| i as u32).collect();
    Ok(perm
        .chunks(bs)
        .map(|c| Tensor::new(c, &Device::Cpu))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// A 784-`hidden`-10 MLP without dropout, its parameters initialised from `seed`, and their varmap.
fn mlp(hidden: &[usize], seed: u64) -> Result<(Mlp, VarMap)> {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, &Device::Cpu);
    let net = Mlp::new(&MlpConfig::new(784, hidden, 10), vb)?;
    Ok((net, varmap))
}

/// MNIST training images and labels with a fixed shuffled order of batches of 128.
struct Batches {
    x: Tensor,
    y: Tensor,
    order: Vec<Tensor>,
}

impl Batches {
    fn new(x: Tensor, y: Tensor) -> Result<Self> {
        let order = batches(x.dim(0)?, 128, &mut Rng::new(1))?;
        Ok(Self { x, y, order })
    }
    /// Batch `i` (cycling through the order): inputs and labels.
    fn get(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let idx = &self.order[i % self.order.len()];
        Ok((self.x.index_select(idx, 0)?, self.y.index_select(idx, 0)?))
    }
    fn samples(&self, i: usize) -> usize {
        self.order[i % self.order.len()].dim(0).unwrap_or(0)
    }
}

/// One optimiser step on `loss`, reading its value back as the training loop does.
fn optimise(opt: &mut dyn Optimizer, loss: &Tensor) -> Result<()> {
    let _ = loss.to_scalar::<f32>()?;
    opt.step(&distill_nn::ops::backward(loss)?)?;
    Ok(())
}

/// A training workload: data, model and optimiser, stepped over batch `i` of its own order.
pub trait Workload {
    /// One training step over batch `i`.
    fn step(&mut self, i: usize) -> Result<()>;
    /// Samples in step `i`.
    fn samples(&self, i: usize) -> usize;
    /// Steps in one timed measurement, and warm-up steps before it.
    fn schedule(&self) -> (usize, usize);
}

struct MlpCe {
    data: Batches,
    net: Mlp,
    opt: Box<dyn Optimizer>,
    _varmap: VarMap,
}

impl MlpCe {
    fn new(x: Tensor, y: Tensor) -> Result<Self> {
        let (net, varmap) = mlp(&[1200, 1200], 0)?;
        let opt = build_optimizer(&adamw(1e-3, 0.01), trainable_vars(&varmap))?;
        Ok(Self {
            data: Batches::new(x, y)?,
            net,
            opt,
            _varmap: varmap,
        })
    }
}

impl Workload for MlpCe {
    fn step(&mut self, i: usize) -> Result<()> {
        let (xb, yb) = self.data.get(i)?;
        let logits = self.net.forward(&xb, Mode::Train { seed: i as u64 })?;
        optimise(self.opt.as_mut(), &ce_loss(&logits, &yb)?)
    }
    fn samples(&self, i: usize) -> usize {
        self.data.samples(i)
    }
    fn schedule(&self) -> (usize, usize) {
        (self.data.order.len(), 5)
    }
}

struct MlpKd {
    data: Batches,
    teacher: Mlp,
    student: Mlp,
    opt: Box<dyn Optimizer>,
    _varmaps: [VarMap; 2],
}

impl MlpKd {
    fn new(x: Tensor, y: Tensor) -> Result<Self> {
        let (teacher, teacher_vars) = mlp(&[1200, 1200], 0)?;
        let (student, student_vars) = mlp(&[800, 800], 1)?;
        let opt = build_optimizer(&adamw(1e-3, 0.01), trainable_vars(&student_vars))?;
        Ok(Self {
            data: Batches::new(x, y)?,
            teacher,
            student,
            opt,
            _varmaps: [teacher_vars, student_vars],
        })
    }
}

impl Workload for MlpKd {
    fn step(&mut self, i: usize) -> Result<()> {
        let (xb, yb) = self.data.get(i)?;
        let t = self.teacher.forward(&xb, Mode::Eval)?.detach();
        let s = self.student.forward(&xb, Mode::Train { seed: i as u64 })?;
        let kd = kd_loss(&s, &t, 4.0)?;
        let loss = (kd.affine(0.9, 0.0)? + ce_loss(&s, &yb)?.affine(0.1, 0.0)?)?;
        optimise(self.opt.as_mut(), &loss)
    }
    fn samples(&self, i: usize) -> usize {
        self.data.samples(i)
    }
    fn schedule(&self) -> (usize, usize) {
        (self.data.order.len(), 5)
    }
}

struct Cnn {
    data: Batches,
    conv1: candle_nn::Conv2d,
    conv2: candle_nn::Conv2d,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
    opt: Box<dyn Optimizer>,
    _varmap: VarMap,
}

impl Cnn {
    fn new(x: Tensor, y: Tensor) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, &Device::Cpu);
        let cfg = candle_nn::Conv2dConfig::default();
        let conv1 = candle_nn::conv2d(1, 32, 3, cfg, vb.pp("conv1"))?;
        let conv2 = candle_nn::conv2d(32, 64, 3, cfg, vb.pp("conv2"))?;
        let fc1 = candle_nn::linear(1600, 128, vb.pp("fc1"))?;
        let fc2 = candle_nn::linear(128, 10, vb.pp("fc2"))?;
        let sgd = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            nesterov: false,
            weight_decay: None,
            betas: None,
            eps: None,
            decay_only: None,
        };
        let opt = build_optimizer(&sgd, trainable_vars(&varmap))?;
        let n = x.dim(0)?;
        Ok(Self {
            data: Batches::new(x.reshape((n, 1, 28, 28))?, y)?,
            conv1,
            conv2,
            fc1,
            fc2,
            opt,
            _varmap: varmap,
        })
    }
}

impl Workload for Cnn {
    fn step(&mut self, i: usize) -> Result<()> {
        let (xb, yb) = self.data.get(i)?;
        use distill_nn::ops::{conv2d_layer_relu_pool, linear};
        let h = conv2d_layer_relu_pool(&self.conv1, &xb, 2)?;
        let h = conv2d_layer_relu_pool(&self.conv2, &h, 2)?;
        let h = linear(
            &h.flatten_from(1)?,
            self.fc1.weight(),
            self.fc1.bias(),
            true,
        )?;
        let logits = linear(&h, self.fc2.weight(), self.fc2.bias(), false)?;
        optimise(self.opt.as_mut(), &ce_loss(&logits, &yb)?)
    }
    fn samples(&self, i: usize) -> usize {
        self.data.samples(i)
    }
    fn schedule(&self) -> (usize, usize) {
        (50, 3)
    }
}

/// The graph plugin's `gcn-cora` task and teacher network, through the plugin contract: one full-batch step
/// per epoch over the training split (every node; the loss is the task's, cross-entropy on the training
/// labels plus the GCN's L2 term), Adam as the recipe's optimiser.
struct Gcn {
    task: Box<dyn Task>,
    net: Box<dyn Network>,
    batch: Batch,
    nodes: usize,
    opt: Box<dyn Optimizer>,
}

impl Gcn {
    fn new(reg: &Registry, data_dir: &Path) -> Result<Self> {
        let recipe = Recipe::parse(GCN_RECIPE, "gcn-cora.toml (built in)", false)?;
        let plugin = find_plugin(reg, &recipe.plugin)
            .with_context(|| format!("the gcn workload needs the `{}` plugin", recipe.plugin))?;
        let ctx = RunContext::new(data_dir, std::env::temp_dir());
        let task = plugin.load_task(&recipe, &ctx)?;
        let net = plugin.build_network(
            &recipe.teacher.model,
            &BuildContext::new(task.info(), 0, &ctx, Some(task.as_ref())),
        )?;
        // the recipe's optimiser: Adam, lr 0.01, Kipf's L2 5e-4 on conv1's weights
        let opt = build_optimizer(&recipe.teacher.optimizer, trainable_vars(net.varmap()))?;
        let nodes = task.len(Split::Train);
        let all: Vec<usize> = (0..nodes).collect();
        let batch = task.batch(Split::Train, &all, None, &mut Rng::new(0))?;
        Ok(Self {
            task,
            net,
            batch,
            nodes,
            opt,
        })
    }
}

impl Workload for Gcn {
    fn step(&mut self, i: usize) -> Result<()> {
        let out = self
            .net
            .forward(&self.batch.inputs, Mode::Train { seed: i as u64 })?;
        let loss = self.task.task_loss(&out, &self.batch)?;
        optimise(self.opt.as_mut(), &loss)
    }
    fn samples(&self, _i: usize) -> usize {
        self.nodes
    }
    fn schedule(&self) -> (usize, usize) {
        (200, 5)
    }
}

/// The audio plugin's `ds-cnn` student as fsdd-kws trains it (width 32, 4 blocks, AdamW lr 0.005, weight
/// decay 5e-4), at batch 64 on `[1, 40, 32]` inputs: seeded Gaussian values (the arithmetic does not depend on
/// them; PyTorch's script draws its own), labels `i mod 10`. Inputs are made once, 8 batches cycled.
struct DsCnnStep {
    net: Box<dyn Network>,
    inputs: Vec<Tensor>,
    labels: Tensor,
    opt: Box<dyn Optimizer>,
}

/// `dscnn_step`'s batch size.
const DSCNN_BATCH: usize = 64;

impl DsCnnStep {
    fn new(reg: &Registry, data_dir: &Path) -> Result<Self> {
        let (net, _) = plugin_network(
            reg,
            FSDD_RECIPE,
            "fsdd-kws.toml",
            data_dir,
            Some(&toml::toml! {
                arch = "ds-cnn"
                width = 32
                blocks = 4
            }),
            0,
        )?;
        let opt = build_optimizer(&adamw(5e-3, 5e-4), trainable_vars(net.varmap()))?;
        let inputs = (0..8)
            .map(|_| Tensor::randn(0f32, 1.0, (DSCNN_BATCH, 1, 40, 32), &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let labels: Vec<u32> = (0..DSCNN_BATCH as u32).map(|i| i % 10).collect();
        Ok(Self {
            net,
            inputs,
            labels: Tensor::new(labels, &Device::Cpu)?,
            opt,
        })
    }
}

/// The recipes whose plugins and task shapes the `dscnn_step` and `bert_*` workloads (and `bench
/// --onnxruntime`'s students) build their networks through (no data is read: `task_info` and `build_network`
/// only).
pub(crate) const FSDD_RECIPE: &str = include_str!("../../../plugins/audio/recipes/fsdd-kws.toml");
pub(crate) const SST2_RECIPE: &str =
    include_str!("../../../plugins/text/recipes/sst2-distilbert.toml");

/// The network `model` (`None`: the recipe's `[student]` model) of the plugin that `recipe` (a builtin
/// recipe's text, from `file`) names, for its task's shape, initialised from `seed`: through the plugin
/// contract, as `distill run` builds it; with the task's input shape (without the batch).
pub(crate) fn plugin_network(
    reg: &Registry,
    recipe: &str,
    file: &str,
    data_dir: &Path,
    model: Option<&toml::Table>,
    seed: u64,
) -> Result<(Box<dyn Network>, Vec<usize>)> {
    let recipe = Recipe::parse(recipe, &format!("{file} (built in)"), false)?;
    let plugin = find_plugin(reg, &recipe.plugin)
        .with_context(|| format!("the workload needs the `{}` plugin", recipe.plugin))?;
    let mut ctx = RunContext::new(data_dir, std::env::temp_dir());
    ctx.models_dir = crate::dirs::dir_from(&None, "DISTILL_MODELS", "models");
    let info = plugin.task_info(&recipe)?;
    let net = plugin
        .build_network(
            model.unwrap_or(&recipe.student.model),
            &BuildContext::new(&info, seed, &ctx, None),
        )
        .with_context(|| format!("building a network of {file}'s plugin"))?;
    Ok((net, info.input_shape))
}

impl Workload for DsCnnStep {
    fn step(&mut self, i: usize) -> Result<()> {
        let x = &self.inputs[i % self.inputs.len()];
        let out = self.net.forward(x, Mode::Train { seed: i as u64 })?;
        optimise(self.opt.as_mut(), &ce_loss(&out.logits, &self.labels)?)
    }
    fn samples(&self, _i: usize) -> usize {
        DSCNN_BATCH
    }
    fn schedule(&self) -> (usize, usize) {
        (50, 3)
    }
}

/// `bert_step` / `bert_kd`'s batch: sentences and tokens per sentence.
const BERT_BATCH: (usize, usize) = (32, 64);

/// The text plugin's BERT classifier (SST-2's: mean pooling, 2 classes) with `layers` layers of the MiniLM-L6
/// config in the models dir (`all-MiniLM-L6-v2/config.json`), randomly initialised from `seed`.
fn bert(reg: &Registry, data_dir: &Path, layers: usize, seed: u64) -> Result<Box<dyn Network>> {
    let (net, _) = plugin_network(
        reg,
        SST2_RECIPE,
        "sst2-distilbert.toml",
        data_dir,
        Some(&toml::toml! {
            arch = "bert"
            init = "random"
            layers = (layers as i64)
        }),
        seed,
    )?;
    Ok(net)
}

/// Token ids `1000 + (i·7919 mod 20000)` (no padding) for 4 batches, and labels `i mod 2`: the same in
/// PyTorch's script.
fn bert_inputs() -> Result<(Vec<Tensor>, Tensor)> {
    let (b, t) = BERT_BATCH;
    let inputs = (0..4)
        .map(|j| {
            let ids: Vec<u32> = (0..b * t)
                .map(|i| 1000 + ((j * b * t + i) as u32 * 7919) % 20000)
                .collect();
            Tensor::from_vec(ids, (b, t), &Device::Cpu)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let labels: Vec<u32> = (0..b as u32).map(|i| i % 2).collect();
    Ok((inputs, Tensor::new(labels, &Device::Cpu)?))
}

/// `bert_step` (no teacher) and `bert_kd` (a frozen 6-layer teacher, a 3-layer student).
struct BertStep {
    teacher: Option<Box<dyn Network>>,
    student: Box<dyn Network>,
    inputs: Vec<Tensor>,
    labels: Tensor,
    opt: Box<dyn Optimizer>,
}

impl BertStep {
    fn new(reg: &Registry, data_dir: &Path, kd: bool) -> Result<Self> {
        let (teacher, student) = if kd {
            (Some(bert(reg, data_dir, 6, 0)?), bert(reg, data_dir, 3, 1)?)
        } else {
            (None, bert(reg, data_dir, 6, 0)?)
        };
        let opt = build_optimizer(&adamw(5e-5, 0.01), trainable_vars(student.varmap()))?;
        let (inputs, labels) = bert_inputs()?;
        Ok(Self {
            teacher,
            student,
            inputs,
            labels,
            opt,
        })
    }
}

impl Workload for BertStep {
    fn step(&mut self, i: usize) -> Result<()> {
        let x = &self.inputs[i % self.inputs.len()];
        let s = self
            .student
            .forward(x, Mode::Train { seed: i as u64 })?
            .logits;
        let ce = ce_loss(&s, &self.labels)?;
        let loss = match &self.teacher {
            Some(t) => {
                let t = t.forward(x, Mode::Eval)?.logits.detach();
                (kd_loss(&s, &t, 4.0)?.affine(0.9, 0.0)? + ce.affine(0.1, 0.0)?)?
            }
            None => ce,
        };
        optimise(self.opt.as_mut(), &loss)
    }
    fn samples(&self, _i: usize) -> usize {
        BERT_BATCH.0
    }
    fn schedule(&self) -> (usize, usize) {
        (20, 2)
    }
}

/// Builds a workload with its data, model and optimiser.
pub fn build(reg: &Registry, name: &str, data_dir: &Path) -> Result<Box<dyn Workload>> {
    Ok(match name {
        "mlp_ce" => {
            let (x, y) = mnist(data_dir)?;
            Box::new(MlpCe::new(x, y)?)
        }
        "mlp_kd" => {
            let (x, y) = mnist(data_dir)?;
            Box::new(MlpKd::new(x, y)?)
        }
        "cnn_step" => {
            let (x, y) = mnist(data_dir)?;
            Box::new(Cnn::new(x, y)?)
        }
        "gcn" => Box::new(Gcn::new(reg, data_dir)?),
        "dscnn_step" => Box::new(DsCnnStep::new(reg, data_dir)?),
        "bert_step" | "bert_kd" => Box::new(BertStep::new(reg, data_dir, name == "bert_kd")?),
        other => bail!(
            "unknown speed workload `{other}` (known: {})",
            WORKLOADS.join(", ")
        ),
    })
}

/// Peak resident memory of this process in MiB (`VmHWM`; 0 where /proc is missing).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Runs one workload in this process and returns its measurement (`steps` overrides the step count).
pub fn run_worker(
    reg: &Registry,
    name: &str,
    data_dir: &Path,
    steps: Option<usize>,
) -> Result<Measurement> {
    let mut w = build(reg, name, data_dir)?;
    let (n, warm) = w.schedule();
    let n = steps.unwrap_or(n);
    for i in 0..warm {
        w.step(n + i)?;
    }
    let mut samples = 0;
    let t0 = Instant::now();
    for i in 0..n {
        w.step(i)?;
        samples += w.samples(i);
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Measurement {
        workload: name.to_string(),
        implementation: "distill".to_string(),
        samples,
        seconds,
        samples_per_s: samples as f64 / seconds,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Options of `distill bench --speed`.
pub struct SpeedOptions {
    /// Workloads to run.
    pub workloads: Vec<String>,
    /// Alternating rounds (ours, then PyTorch's, per workload per round).
    pub rounds: usize,
    /// Step-count override.
    pub steps: Option<usize>,
    /// The Python interpreter with torch, or None to skip PyTorch.
    pub python: Option<String>,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Where to write speed.json (None: nowhere).
    pub out: Option<PathBuf>,
}

fn torch_script() -> PathBuf {
    let here = PathBuf::from("bench/pytorch/speed.py");
    if here.exists() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/pytorch/speed.py")
}

/// Runs `cmd` and parses the last line of its output that starts with `{` as a `T` (the bench's child
/// processes, ours and the Python scripts, print their result as one JSON line).
pub(crate) fn run_child<T: serde::de::DeserializeOwned>(mut cmd: Command, what: &str) -> Result<T> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| anyhow!("{what} printed no JSON result: {}", text.trim()))?;
    serde_json::from_str(line).with_context(|| format!("{what}: cannot parse `{line}`"))
}

/// Whether `python -c "import MODULES"` succeeds (`modules`: comma-separated, as Python's `import` takes them).
pub(crate) fn python_imports(python: &str, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether `python` can import torch.
pub fn torch_available(python: &str) -> bool {
    python_imports(python, "torch")
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `distill bench --speed`: ours and PyTorch's, alternated, `rounds` times per workload; prints the table.
pub fn cmd_speed(opts: &SpeedOptions) -> Result<()> {
    for w in &opts.workloads {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!(
                "unknown speed workload `{w}` (known: {})",
                WORKLOADS.join(", ")
            );
        }
    }
    let exe = std::env::current_exe().context("cannot find the distill binary")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let python = opts.python.clone().filter(|p| {
        let ok = torch_available(p);
        if !ok {
            eprintln!("note: `{p} -c \"import torch\"` fails: PyTorch's side is skipped (pip install torch)");
        }
        ok
    });
    let mut all: Vec<Measurement> = Vec::new();
    for w in &opts.workloads {
        for round in 0..opts.rounds {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "--speed-worker", w])
                .arg("--data-dir")
                .arg(&opts.data_dir);
            if let Some(s) = opts.steps {
                cmd.args(["--speed-steps", &s.to_string()]);
            }
            let m: Measurement = run_child(cmd, &format!("distill's `{w}`"))?;
            eprintln!(
                "[{w} round {}] distill {:.1} samples/s ({:.2} s, {:.0} MiB)",
                round + 1,
                m.samples_per_s,
                m.seconds,
                m.peak_rss_mib
            );
            all.push(m);
            if let Some(py) = &python {
                let mut cmd = Command::new(py);
                cmd.arg(torch_script())
                    .arg(w)
                    .args(["--threads", &threads.to_string()])
                    .env("DISTILL_DATA", &opts.data_dir);
                if let Some(s) = opts.steps {
                    cmd.args(["--steps", &s.to_string()]);
                }
                let m: Measurement = run_child(cmd, &format!("PyTorch's `{w}`"))?;
                eprintln!(
                    "[{w} round {}] pytorch {:.1} samples/s ({:.2} s, {:.0} MiB)",
                    round + 1,
                    m.samples_per_s,
                    m.seconds,
                    m.peak_rss_mib
                );
                all.push(m);
            }
        }
    }
    println!("{}", render(&all, threads));
    if let Some(out) = &opts.out {
        std::fs::create_dir_all(out)?;
        let path = out.join("speed.json");
        std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The table: per workload, median seconds and samples/s of each side, time ratio ours / torch, peak memory.
pub fn render(all: &[Measurement], threads: usize) -> String {
    let mut s = String::from(
        "| workload | distill samples/s | pytorch samples/s | time distill / pytorch | distill peak MiB | pytorch peak MiB |\n|---|---|---|---|---|---|\n",
    );
    let mut ratios = Vec::new();
    let names: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for m in all {
            if !v.contains(&m.workload.as_str()) {
                v.push(&m.workload);
            }
        }
        v
    };
    for w in names {
        let pick = |imp: &str, f: fn(&Measurement) -> f64| {
            let mut v: Vec<f64> = all
                .iter()
                .filter(|m| m.workload == w && m.implementation == imp)
                .map(f)
                .collect();
            median(&mut v)
        };
        let (ours, theirs) = (
            pick("distill", |m| m.samples_per_s),
            pick("pytorch", |m| m.samples_per_s),
        );
        let ratio = theirs / ours;
        let fmt = |v: f64, p: usize| {
            if v.is_nan() {
                "–".to_string()
            } else {
                format!("{v:.p$}")
            }
        };
        if ratio.is_finite() {
            ratios.push(ratio);
        }
        s.push_str(&format!(
            "| {w} | {} | {} | {} | {} | {} |\n",
            fmt(ours, 0),
            fmt(theirs, 0),
            fmt(ratio, 2),
            fmt(pick("distill", |m| m.peak_rss_mib), 0),
            fmt(pick("pytorch", |m| m.peak_rss_mib), 0),
        ));
    }
    if ratios.is_empty() {
        s.push_str(&format!(
            "\nPyTorch was not run: no ratios ({threads} threads)."
        ));
    } else {
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let worst = ratios.iter().cloned().fold(f64::MIN, f64::max);
        s.push_str(&format!(
            "\nsummary: time distill / pytorch, geometric mean {geo:.2} over {} workloads (worst {worst:.2}), {threads} threads, medians of the rounds",
            ratios.len()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(w: &str, imp: &str, sps: f64) -> Measurement {
        Measurement {
            workload: w.into(),
            implementation: imp.into(),
            samples: 100,
            seconds: 100.0 / sps,
            samples_per_s: sps,
            peak_rss_mib: 10.0,
        }
    }

    #[test]
    fn the_table_takes_medians_and_the_summary_the_geometric_mean_of_time_ratios() {
        let all = vec![
            m("a", "distill", 100.0),
            m("a", "pytorch", 200.0),
            m("a", "distill", 300.0),
            m("a", "pytorch", 200.0),
            m("a", "distill", 200.0),
            m("a", "pytorch", 200.0),
            m("b", "distill", 100.0),
            m("b", "pytorch", 50.0),
        ];
        let t = render(&all, 2);
        // a: median 200 vs 200 -> 1.00; b: 50 / 100 = 0.50; geometric mean sqrt(0.5) = 0.71
        assert!(t.contains("| a | 200 | 200 | 1.00 |"), "{t}");
        assert!(t.contains("| b | 100 | 50 | 0.50 |"), "{t}");
        assert!(
            t.contains("geometric mean 0.71 over 2 workloads (worst 1.00)"),
            "{t}"
        );
    }

    #[test]
    fn an_unknown_workload_is_an_error_naming_the_known_ones() {
        let reg = crate::plugins::registry(None).unwrap();
        let e = build(&reg, "nope", Path::new("/nonexistent"))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("mlp_ce, mlp_kd, cnn_step, gcn, dscnn_step"),
            "{e}"
        );
    }
}
