//! Optimisers (SGD with momentum/Nesterov/weight decay, AdamW), learning-rate schedules and gradient clipping.
//!
//! Both optimisers follow PyTorch's update rules exactly (`torch.optim.SGD` with `dampening = 0`,
//! `torch.optim.AdamW`). On the CPU, for contiguous `f32` parameters, one step is a single fused, in-place pass
//! over the parameter, its gradient and the optimiser state (parallel over 64K-element chunks with rayon)
//! instead of a dozen out-of-place tensor operations per parameter. Parameters elsewhere (CUDA, other dtypes)
//! take a generic path of ordinary tensor operations computing the same update.
//!
//! An optimiser's [`Optimizer::state`] (step count and every buffer, keyed by parameter name) restores exactly
//! with [`Optimizer::load_state`]: a run resumed from a checkpoint continues bit-identically.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use distill_nn::optim::{build_optimizer, OptimizerConfig, OptimizerKind};
//! # fn main() -> distill_nn::Result<()> {
//! let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
//! let cfg = OptimizerConfig {
//!     kind: OptimizerKind::Sgd,
//!     lr: 0.5,
//!     momentum: 0.0,
//!     nesterov: false,
//!     weight_decay: None,
//!     betas: None,
//!     eps: None,
//!     decay_only: None,
//! };
//! let mut opt = build_optimizer(&cfg, vec![("w".to_string(), w.clone())])?;
//! let loss = w.as_tensor().sqr()?.sum_all()?; // gradient 2w
//! opt.step(&loss.backward()?)?;
//! assert_eq!(w.as_tensor().to_vec1::<f32>()?, vec![0.0, 0.0]);
//! # Ok(()) }
//! ```

use std::{cell::RefCell, collections::BTreeMap};

use candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor, Var,
};
use candle_nn::VarMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{is_buffer, Error, Result};

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent (PyTorch semantics: `v = μv + g (+ wd·w)`, `w -= lr·v`, Nesterov optional).
    Sgd,
    /// AdamW (decoupled weight decay, Loshchilov & Hutter).
    Adamw,
    /// Adam with PyTorch's `torch.optim.Adam` weight decay: L2 added to the gradient (`g += wd·w`) before
    /// the moments (Kipf & Welling's GCN recipe).
    Adam,
}

/// Optimiser settings as written in a recipe, e.g. `{ kind = "sgd", lr = 0.1, momentum = 0.9 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Which optimiser.
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum (default 0).
    #[serde(default)]
    pub momentum: f64,
    /// SGD Nesterov momentum (default false).
    #[serde(default)]
    pub nesterov: bool,
    /// Weight decay: L2 added to the gradient for SGD and Adam, decoupled for AdamW (default 0 for SGD and
    /// Adam, 0.01 for AdamW).
    pub weight_decay: Option<f64>,
    /// Only these parameters decay (PyTorch's parameter groups): names as the network names them
    /// (`layers.0.weight`), or a module prefix (`layers.0` covers `layers.0.weight` and `layers.0.bias`).
    /// Default: every parameter.
    pub decay_only: Option<Vec<String>>,
    /// AdamW β1, β2 (default 0.9, 0.999).
    pub betas: Option<[f64; 2]>,
    /// AdamW ε (default 1e-8).
    pub eps: Option<f64>,
}

/// Which learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Constant learning rate.
    Constant,
    /// Multiply by `gamma` at each epoch in `milestones` (or every `step_size` epochs).
    Step,
    /// Cosine decay from the peak to `min_lr` over the phase.
    Cosine,
    /// Linear decay from the peak to `min_lr` over the phase.
    Linear,
}

/// Learning-rate schedule settings, e.g. `{ kind = "cosine", warmup_epochs = 1 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Which schedule.
    pub kind: ScheduleKind,
    /// Linear warm-up from 0 to the peak over this many epochs (fractional allowed; default 0).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Step schedule: decay every this many epochs.
    pub step_size: Option<usize>,
    /// Step schedule: decay at these epochs.
    pub milestones: Option<Vec<usize>>,
    /// Step schedule: decay factor (default 0.1).
    pub gamma: Option<f64>,
    /// Cosine/linear: final learning rate (default 0).
    #[serde(default)]
    pub min_lr: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_epochs: 0.0,
            step_size: None,
            milestones: None,
            gamma: None,
            min_lr: 0.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------------------

fn optimizer_error(msg: String) -> Error {
    Error::config("optimizer", msg)
}

fn schedule_error(msg: String) -> Error {
    Error::config("schedule", msg)
}

impl OptimizerKind {
    /// The recipe spelling (`"sgd"`, `"adamw"`).
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Adam => "adam",
        }
    }
}

impl OptimizerConfig {
    /// Weight decay with the kind's default filled in (0 for SGD, 0.01 for AdamW).
    pub fn weight_decay_or_default(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.kind {
            OptimizerKind::Sgd | OptimizerKind::Adam => 0.0,
            OptimizerKind::Adamw => 0.01,
        })
    }

    /// AdamW (β1, β2) with the default (0.9, 0.999) filled in.
    pub fn betas_or_default(&self) -> [f64; 2] {
        self.betas.unwrap_or([0.9, 0.999])
    }

    /// AdamW ε with the default 1e-8 filled in.
    pub fn eps_or_default(&self) -> f64 {
        self.eps.unwrap_or(1e-8)
    }

    /// Checks every field; the error ([`Error::Config`] with path `optimizer`) names the field and its value,
    /// e.g. `optimizer.lr must be > 0, got -1`.
    ///
    /// Rules: `lr` finite and > 0; `momentum` in [0, 1) and only for SGD; `nesterov` only for SGD with
    /// `momentum` > 0; `weight_decay` finite and >= 0; `betas` each in [0, 1) and `eps` finite and > 0, both
    /// only for AdamW.
    pub fn validate(&self) -> Result<()> {
        let kind = self.kind.as_str();
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(optimizer_error(format!(
                "optimizer.lr must be > 0, got {}",
                self.lr
            )));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(optimizer_error(format!(
                "optimizer.momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if self.kind != OptimizerKind::Sgd && self.momentum != 0.0 {
            return Err(optimizer_error(format!(
                "optimizer.momentum is only used by kind = \"sgd\" (kind is \"{kind}\"; AdamW uses betas)"
            )));
        }
        if self.nesterov && (self.kind != OptimizerKind::Sgd || self.momentum <= 0.0) {
            return Err(optimizer_error(format!(
                "optimizer.nesterov requires kind = \"sgd\" with momentum > 0 (kind is \"{kind}\", momentum {})",
                self.momentum
            )));
        }
        if let Some(wd) = self.weight_decay {
            if !(wd.is_finite() && wd >= 0.0) {
                return Err(optimizer_error(format!(
                    "optimizer.weight_decay must be >= 0, got {wd}"
                )));
            }
        }
        if let Some(patterns) = &self.decay_only {
            if patterns.is_empty() || patterns.iter().any(|p| p.trim().is_empty()) {
                return Err(optimizer_error(
                    "optimizer.decay_only must list parameter names or module prefixes (omit it for all)"
                        .to_string(),
                ));
            }
        }
        if let Some(betas) = self.betas {
            if self.kind == OptimizerKind::Sgd {
                return Err(optimizer_error(format!(
                    "optimizer.betas is only used by kind = \"adamw\" or \"adam\" (kind is \"{kind}\")"
                )));
            }
            for (i, b) in betas.iter().enumerate() {
                if !(b.is_finite() && (0.0..1.0).contains(b)) {
                    return Err(optimizer_error(format!(
                        "optimizer.betas[{i}] must be in [0, 1), got {b}"
                    )));
                }
            }
        }
        if let Some(eps) = self.eps {
            if self.kind == OptimizerKind::Sgd {
                return Err(optimizer_error(format!(
                    "optimizer.eps is only used by kind = \"adamw\" or \"adam\" (kind is \"{kind}\")"
                )));
            }
            if !(eps.is_finite() && eps > 0.0) {
                return Err(optimizer_error(format!(
                    "optimizer.eps must be > 0, got {eps}"
                )));
            }
        }
        Ok(())
    }
}

impl ScheduleConfig {
    /// Checks every field; the error ([`Error::Config`] with path `schedule`) names the field and its value.
    ///
    /// Rules: `warmup_epochs` finite and >= 0; `min_lr` finite, >= 0 and only for cosine/linear; for `step`,
    /// exactly one of `step_size` (> 0) and `milestones` (non-empty, strictly increasing), `gamma` finite
    /// and > 0; `step_size`, `milestones` and `gamma` only for `step`.
    pub fn validate(&self) -> Result<()> {
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(schedule_error(format!(
                "schedule.warmup_epochs must be >= 0, got {}",
                self.warmup_epochs
            )));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return Err(schedule_error(format!(
                "schedule.min_lr must be >= 0, got {}",
                self.min_lr
            )));
        }
        let is_step = self.kind == ScheduleKind::Step;
        if !is_step {
            for (field, set) in [
                ("step_size", self.step_size.is_some()),
                ("milestones", self.milestones.is_some()),
                ("gamma", self.gamma.is_some()),
            ] {
                if set {
                    return Err(schedule_error(format!(
                        "schedule.{field} is only used by kind = \"step\""
                    )));
                }
            }
        }
        if matches!(self.kind, ScheduleKind::Constant | ScheduleKind::Step) && self.min_lr != 0.0 {
            return Err(schedule_error(
                "schedule.min_lr is only used by kind = \"cosine\" or \"linear\"".into(),
            ));
        }
        if let Some(gamma) = self.gamma {
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(schedule_error(format!(
                    "schedule.gamma must be > 0, got {gamma}"
                )));
            }
        }
        if is_step {
            match (&self.step_size, &self.milestones) {
                (None, None) => {
                    return Err(schedule_error(
                        "schedule.kind = \"step\" needs schedule.step_size or schedule.milestones"
                            .into(),
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(schedule_error(
                        "schedule.step_size and schedule.milestones are exclusive; give one".into(),
                    ))
                }
                (Some(0), None) => {
                    return Err(schedule_error(
                        "schedule.step_size must be > 0, got 0".into(),
                    ))
                }
                (None, Some(m)) => {
                    if m.is_empty() {
                        return Err(schedule_error(
                            "schedule.milestones must not be empty".into(),
                        ));
                    }
                    if m.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(schedule_error(format!(
                            "schedule.milestones must be strictly increasing, got {m:?}"
                        )));
                    }
                }
                (Some(_), None) => {}
            }
        }
        Ok(())
    }

    /// The learning rate after `epoch_progress` epochs (fractional: step `s` of an epoch of `n` steps in
    /// epoch `e` is `e + s / n`) of a `total_epochs`-epoch run with peak `base_lr`.
    ///
    /// Warm-up scales linearly from 0 at progress 0 to 1 at `warmup_epochs`. The schedule proper:
    /// * `constant`: `base_lr`;
    /// * `step`: `base_lr · gammaᵏ` (gamma default 0.1), `k` the number of `milestones` ≤ the completed
    ///   epochs `⌊epoch_progress⌋`, or `⌊epoch_progress / step_size⌋` (absolute epochs, as PyTorch's
    ///   `MultiStepLR`/`StepLR`);
    /// * `cosine`: `min_lr + (base_lr − min_lr)·(1 + cos πq)/2`, `q` the fraction of the post-warm-up epochs
    ///   done (from `warmup_epochs` to `total_epochs`, clamped to [0, 1]; 0 if the warm-up fills the run);
    /// * `linear`: `base_lr + (min_lr − base_lr)·q`.
    pub fn lr_at(&self, base_lr: f64, epoch_progress: f64, total_epochs: usize) -> f64 {
        let p = if epoch_progress.is_finite() {
            epoch_progress.max(0.0)
        } else {
            0.0
        };
        let warmup = self.warmup_epochs.max(0.0);
        let warm = if warmup > 0.0 && p < warmup {
            p / warmup
        } else {
            1.0
        };
        let total = total_epochs as f64;
        let q = if total > warmup {
            ((p - warmup) / (total - warmup)).clamp(0.0, 1.0)
        } else {
            // the whole run is warm-up: no decay phase
            0.0
        };
        let lr = match self.kind {
            ScheduleKind::Constant => base_lr,
            ScheduleKind::Step => {
                let gamma = self.gamma.unwrap_or(0.1);
                // completed epochs; the epsilon keeps `2.9999999` (accumulated step fractions) at 3
                let done = (p + 1e-9).floor() as usize;
                let k = match (&self.milestones, self.step_size) {
                    (Some(m), _) => m.iter().filter(|&&m| m <= done).count(),
                    (None, Some(s)) if s > 0 => done / s,
                    _ => 0,
                };
                base_lr * gamma.powi(k as i32)
            }
            ScheduleKind::Cosine => {
                self.min_lr
                    + (base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * q).cos())
            }
            ScheduleKind::Linear => base_lr + (self.min_lr - base_lr) * q,
        };
        lr * warm
    }
}

// ---------------------------------------------------------------------------------------------------------
// The optimiser trait and its construction
// ---------------------------------------------------------------------------------------------------------

/// An optimiser over a fixed set of named parameters.
pub trait Optimizer: Send {
    /// Applies one update from `grads`. Parameters without a gradient in `grads` are left alone (and their
    /// state is not advanced).
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The learning rate the next [`step`](Optimizer::step) uses.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate (a schedule calls this before every step).
    fn set_learning_rate(&mut self, lr: f64);
    /// The complete optimiser state: `step` (the number of steps taken, a 1-element `i64` tensor) and every
    /// buffer keyed by kind and parameter name (`momentum.fc1.weight`; `adam_m.…`, `adam_v.…` and the
    /// per-parameter step count `adam_step.…`). Tensors are copies, safe to save while training goes on.
    fn state(&self) -> Result<BTreeMap<String, Tensor>>;
    /// Replaces the state with one produced by [`state`](Optimizer::state) (possibly after a safetensors
    /// round trip): the following steps are bit-identical to an uninterrupted run. Unknown keys, unknown
    /// parameters and mismatched shapes are errors.
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()>;
}

/// Builds the optimiser `cfg` describes (after [`OptimizerConfig::validate`]) over `vars`.
///
/// Buffers ([`is_buffer`], e.g. batch-norm running statistics) are dropped from `vars`: they are never
/// optimised.
pub fn build_optimizer(
    cfg: &OptimizerConfig,
    vars: Vec<(String, Var)>,
) -> Result<Box<dyn Optimizer>> {
    cfg.validate()?;
    let only = cfg.decay_only.as_deref();
    Ok(match cfg.kind {
        OptimizerKind::Sgd => Box::new(
            Sgd::new(
                vars,
                SgdParams {
                    lr: cfg.lr,
                    momentum: cfg.momentum,
                    nesterov: cfg.nesterov,
                    weight_decay: cfg.weight_decay_or_default(),
                },
            )?
            .decay_only(only),
        ),
        OptimizerKind::Adamw | OptimizerKind::Adam => {
            let [beta1, beta2] = cfg.betas_or_default();
            Box::new(
                AdamW::new(
                    vars,
                    AdamWParams {
                        lr: cfg.lr,
                        beta1,
                        beta2,
                        eps: cfg.eps_or_default(),
                        weight_decay: cfg.weight_decay_or_default(),
                        coupled: cfg.kind == OptimizerKind::Adam,
                    },
                )?
                .decay_only(only),
            )
        }
    })
}

/// The trainable variables of `varmap` (buffers excluded), sorted by name: what [`build_optimizer`] and
/// [`clip_grad_norm`] take.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(k, _)| !is_buffer(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

// ---------------------------------------------------------------------------------------------------------
// Parameters and state buffers
// ---------------------------------------------------------------------------------------------------------

const STEP_KEY: &str = "step";
/// Elements per rayon task in the fused kernels and the norm computation.
const CHUNK: usize = 1 << 16;

struct Param {
    name: String,
    var: Var,
    /// A contiguous f32 CPU tensor: eligible for the fused kernels.
    cpu_f32: bool,
    /// Whether weight decay applies to it ([`OptimizerConfig::decay_only`]).
    decay: bool,
}

/// Whether the parameter `name` (as the optimiser sees it: `model.` and `loss{i}.` prefixes allowed) is one
/// that `patterns` (names or module prefixes of the network's parameters) select.
fn selected(name: &str, patterns: &[String]) -> bool {
    let local = name.strip_prefix("model.").unwrap_or(name);
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('.');
        local == p || local.strip_prefix(p).is_some_and(|r| r.starts_with('.'))
    })
}

/// Marks which of `params` decay: all of them when `only` is `None`.
fn mark_decay(params: &mut [Param], only: Option<&[String]>) {
    for p in params {
        p.decay = only.is_none_or(|pats| selected(&p.name, pats));
    }
}

impl Param {
    fn list(vars: Vec<(String, Var)>) -> Result<Vec<Param>> {
        let mut seen = std::collections::HashSet::new();
        let mut params = Vec::new();
        for (name, var) in vars {
            if is_buffer(&name) {
                continue;
            }
            if !seen.insert(name.clone()) {
                return Err(Error::msg(format!(
                    "optimizer: parameter `{name}` given twice"
                )));
            }
            let t = var.as_tensor();
            if !t.dtype().is_float() {
                return Err(Error::msg(format!(
                    "optimizer: parameter `{name}` has dtype {:?}, not a float type",
                    t.dtype()
                )));
            }
            let cpu_f32 = t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous();
            params.push(Param {
                name,
                var,
                cpu_f32,
                decay: true,
            });
        }
        Ok(params)
    }

    /// The gradient of this parameter in `grads`, checked against its shape and converted to its dtype.
    fn grad(&self, grads: &GradStore) -> Result<Option<Tensor>> {
        let Some(g) = grads.get(self.var.as_tensor()) else {
            return Ok(None);
        };
        if g.dims() != self.var.dims() {
            return Err(Error::Shape(format!(
                "gradient of `{}` has shape {:?}, the parameter {:?}",
                self.name,
                g.dims(),
                self.var.dims()
            )));
        }
        let mut g = g.to_dtype(self.var.dtype())?;
        if self.cpu_f32 && cpu_f32_ptr(&g) == cpu_f32_ptr(self.var.as_tensor()) {
            // the gradient shares the parameter's storage (only possible for hand-made grad stores): the
            // in-place update cannot read it while writing, so read a copy
            g = g.copy()?;
        }
        Ok(Some(g))
    }
}

/// Address of a CPU f32 tensor's storage, to detect aliasing.
fn cpu_f32_ptr(t: &Tensor) -> Option<usize> {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v.as_ptr() as usize),
        _ => None,
    }
}

/// One optimiser buffer of one parameter.
#[derive(Clone)]
enum Buf {
    /// Not created yet (no step with a gradient so far).
    Empty,
    /// Host memory, for the fused kernels.
    Host(Vec<f32>),
    /// A tensor on the parameter's device and dtype, for the generic path.
    Dev(Tensor),
}

impl Buf {
    fn is_empty(&self) -> bool {
        matches!(self, Buf::Empty)
    }

    /// The buffer as a tensor of the parameter's shape (a copy for host buffers), `None` if empty.
    fn to_tensor(&self, p: &Param) -> Result<Option<Tensor>> {
        Ok(match self {
            Buf::Empty => None,
            Buf::Host(v) => Some(Tensor::from_slice(v, p.var.shape(), &Device::Cpu)?),
            Buf::Dev(t) => Some(t.clone()),
        })
    }

    /// Makes the buffer host-resident (zeros if empty) and returns it.
    fn host(&mut self, p: &Param) -> Result<&mut Vec<f32>> {
        match self {
            Buf::Host(_) => {}
            Buf::Empty => *self = Buf::Host(vec![0.0; p.var.elem_count()]),
            Buf::Dev(t) => {
                *self = Buf::Host(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            }
        }
        match self {
            Buf::Host(v) => Ok(v),
            _ => unreachable!(),
        }
    }

    /// Makes a non-empty buffer device-resident; returns it (`None` if empty).
    fn dev(&mut self, p: &Param) -> Result<Option<Tensor>> {
        if let Buf::Host(v) = self {
            let t = Tensor::from_slice(v, p.var.shape(), &Device::Cpu)?
                .to_dtype(p.var.dtype())?
                .to_device(p.var.device())?;
            *self = Buf::Dev(t);
        }
        Ok(match self {
            Buf::Dev(t) => Some(t.clone()),
            _ => None,
        })
    }

    /// A buffer restored from a state tensor saved under `key`.
    fn load(t: &Tensor, p: &Param, fused: bool, key: &str) -> Result<Buf> {
        if t.dims() != p.var.dims() {
            return Err(Error::Shape(format!(
                "optimizer state `{key}` has shape {:?}, the parameter `{}` {:?}",
                t.dims(),
                p.name,
                p.var.dims()
            )));
        }
        Ok(if fused && p.cpu_f32 {
            Buf::Host(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        } else {
            // a fresh copy: the caller's tensor is never shared with the optimiser
            Buf::Dev(
                t.to_dtype(p.var.dtype())?
                    .to_device(p.var.device())?
                    .copy()?,
            )
        })
    }
}

fn count_tensor(n: u64) -> Result<Tensor> {
    Ok(Tensor::new(&[n as i64], &Device::Cpu)?)
}

fn read_count(t: &Tensor, key: &str) -> Result<u64> {
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    match v.as_slice() {
        [x] if *x >= 0.0 && x.fract() == 0.0 => Ok(*x as u64),
        _ => Err(Error::msg(format!(
            "optimizer state `{key}` must be one non-negative integer, got {v:?}"
        ))),
    }
}

/// Splits a state key `kind.param.name` and finds the parameter.
fn state_param<'k>(
    key: &'k str,
    index: &BTreeMap<&str, usize>,
    kinds: &[&str],
    optimizer: &str,
) -> Result<(&'k str, usize)> {
    let known = || {
        let mut k: Vec<String> = kinds.iter().map(|k| format!("{k}.<param>")).collect();
        k.insert(0, STEP_KEY.into());
        k.join(", ")
    };
    let Some((kind, name)) = key.split_once('.').filter(|(k, _)| kinds.contains(k)) else {
        return Err(Error::msg(format!(
            "optimizer state has `{key}`, which {optimizer} does not keep (it keeps {})",
            known()
        )));
    };
    match index.get(name) {
        Some(&i) => Ok((kind, i)),
        None => Err(Error::msg(format!(
            "optimizer state has `{key}`, but the optimiser has no parameter `{name}`"
        ))),
    }
}

fn read_step(state: &BTreeMap<String, Tensor>) -> Result<u64> {
    let t = state
        .get(STEP_KEY)
        .ok_or_else(|| Error::msg(format!("optimizer state has no `{STEP_KEY}` entry")))?;
    read_count(t, STEP_KEY)
}

// ---------------------------------------------------------------------------------------------------------
// Fused CPU kernels
// ---------------------------------------------------------------------------------------------------------

/// The contiguous f32 elements of a parameter's storage.
fn param_slice<'s>(
    s: &'s mut CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'s mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: the parameter is not f32")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the parameter is not contiguous")
    };
    Ok(&mut v[start..end])
}

/// Read access to a gradient in any (strided) layout, in the parameter's row-major element order.
enum GradView<'a> {
    Contiguous(&'a [f32]),
    Strided {
        data: &'a [f32],
        dims: &'a [usize],
        strides: &'a [usize],
        offset: usize,
    },
}

impl<'a> GradView<'a> {
    fn new(
        s: &'a CpuStorage,
        l: &'a Layout,
        n: usize,
        op: &'static str,
    ) -> candle_core::Result<Self> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("{op}: the gradient is not f32")
        };
        if l.shape().elem_count() != n {
            candle_core::bail!(
                "{op}: the gradient has {} elements, the parameter {n}",
                l.shape().elem_count()
            )
        }
        Ok(match l.contiguous_offsets() {
            Some((start, end)) => GradView::Contiguous(&v[start..end]),
            None => GradView::Strided {
                data: v,
                dims: l.dims(),
                strides: l.stride(),
                offset: l.start_offset(),
            },
        })
    }

    /// Elements `start..start + len`, gathered into `scratch` when strided.
    fn chunk<'s>(&'s self, start: usize, len: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            GradView::Contiguous(g) => &g[start..start + len],
            GradView::Strided {
                data,
                dims,
                strides,
                offset,
            } => {
                scratch.resize(len, 0.0);
                gather(data, dims, strides, *offset, start, scratch);
                scratch
            }
        }
    }
}

/// Copies the row-major elements `start..start + out.len()` of the strided view `(dims, strides, offset)` of
/// `data` into `out`.
fn gather(
    data: &[f32],
    dims: &[usize],
    strides: &[usize],
    offset: usize,
    start: usize,
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    let rank = dims.len();
    if rank == 0 {
        out[0] = data[offset];
        return;
    }
    let mut idx = vec![0usize; rank];
    let mut rem = start;
    for d in (0..rank).rev() {
        idx[d] = rem % dims[d];
        rem /= dims[d];
    }
    let mut pos = offset + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
    let last = rank - 1;
    let (n_in, s_in) = (dims[last], strides[last]);
    let mut k = 0;
    while k < out.len() {
        let run = (n_in - idx[last]).min(out.len() - k);
        for (j, o) in out[k..k + run].iter_mut().enumerate() {
            *o = data[pos + j * s_in];
        }
        k += run;
        idx[last] += run;
        pos += run * s_in;
        if idx[last] == n_in && k < out.len() {
            // carry into the outer dimensions
            pos -= n_in * s_in;
            idx[last] = 0;
            let mut d = last;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                pos += strides[d];
                if idx[d] < dims[d] {
                    break;
                }
                pos -= dims[d] * strides[d];
                idx[d] = 0;
            }
        }
    }
}

/// Fused SGD: `g += wd·w; buf = μ·buf + g (buf = g at first); g = nesterov ? g + μ·buf : buf; w -= lr·g`.
struct SgdKernel<'a> {
    /// The momentum buffer (`None` without momentum).
    buf: RefCell<Option<&'a mut [f32]>>,
    /// Whether `buf` is being created by this step (PyTorch: `buf = g`).
    first: bool,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
}

impl SgdKernel<'_> {
    const NAME: &'static str = "distill-fused-sgd";
}

impl InplaceOp2 for SgdKernel<'_> {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let w = param_slice(s1, l1, Self::NAME)?;
        let grad = GradView::new(s2, l2, w.len(), Self::NAME)?;
        let (lr, mu, wd, nesterov, first) = (
            self.lr,
            self.momentum,
            self.weight_decay,
            self.nesterov,
            self.first,
        );
        let mut buf = self.buf.borrow_mut();
        // one chunk: elements `c * CHUNK ..` of the parameter and (when there is momentum) of the buffer
        let run = |c: usize, w: &mut [f32], b: Option<&mut [f32]>| {
            let mut scratch = Vec::new();
            let g = grad.chunk(c * CHUNK, w.len(), &mut scratch);
            match b {
                None => {
                    for (w, &g) in w.iter_mut().zip(g) {
                        let d = g + wd * *w;
                        *w += -lr * d;
                    }
                }
                Some(b) => {
                    for ((w, b), &g) in w.iter_mut().zip(b.iter_mut()).zip(g) {
                        let d = g + wd * *w;
                        let nb = if first { d } else { mu * *b + d };
                        *b = nb;
                        let u = if nesterov { d + mu * nb } else { nb };
                        *w += -lr * u;
                    }
                }
            }
        };
        match buf.as_deref_mut() {
            None if w.len() <= CHUNK => run(0, w, None),
            None => w
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, w)| run(c, w, None)),
            Some(b) if b.len() != w.len() => {
                candle_core::bail!("{}: momentum buffer size mismatch", Self::NAME)
            }
            Some(b) if w.len() <= CHUNK => run(0, w, Some(b)),
            Some(b) => w
                .par_chunks_mut(CHUNK)
                .zip(b.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, (w, b))| run(c, w, Some(b))),
        }
        Ok(())
    }
}

/// Fused AdamW (PyTorch's order of operations):
/// `w *= 1 − lr·wd; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; w −= step_size · m / (√v / √bc2 + ε)`.
struct AdamWKernel<'a> {
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
    decay: f32,
    /// Adam's coupled L2 (`g += l2·w`); 0 for AdamW.
    l2: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl AdamWKernel<'_> {
    const NAME: &'static str = "distill-fused-adamw";
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let w = param_slice(s1, l1, Self::NAME)?;
        let grad = GradView::new(s2, l2, w.len(), Self::NAME)?;
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let (m, v): (&mut [f32], &mut [f32]) = (&mut m, &mut v);
        if m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!("{}: state buffer size mismatch", Self::NAME)
        }
        let (decay, l2, b1, b2, step_size, bc2_sqrt, eps) = (
            self.decay,
            self.l2,
            self.beta1,
            self.beta2,
            self.step_size,
            self.bc2_sqrt,
            self.eps,
        );
        let (one_b1, one_b2) = (1.0 - b1, 1.0 - b2);
        let run = |c: usize, w: &mut [f32], m: &mut [f32], v: &mut [f32]| {
            let mut scratch = Vec::new();
            let g = grad.chunk(c * CHUNK, w.len(), &mut scratch);
            for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                let g = if l2 != 0.0 { g + l2 * *w } else { g };
                let nm = b1 * *m + one_b1 * g;
                let nv = b2 * *v + one_b2 * (g * g);
                *m = nm;
                *v = nv;
                let denom = nv.sqrt() / bc2_sqrt + eps;
                *w = *w * decay + -step_size * (nm / denom);
            }
        };
        if w.len() <= CHUNK {
            // no rayon round trip for small tensors (biases, norms)
            run(0, w, m, v);
        } else {
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, ((w, m), v))| run(c, w, m, v));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------------------------------------

/// SGD hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    /// Learning rate.
    pub lr: f64,
    /// Momentum μ (0 for none).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay, added to the gradient (`g += wd·w`).
    pub weight_decay: f64,
}

/// Stochastic gradient descent with PyTorch's semantics (`torch.optim.SGD`, dampening 0):
/// `g += wd·w`; with momentum `buf = μ·buf + g` (`buf = g` on a parameter's first step), then
/// `g = g + μ·buf` (Nesterov) or `g = buf`; finally `w -= lr·g`.
pub struct Sgd {
    params: Vec<Param>,
    momentum: Vec<Buf>,
    cfg: SgdParams,
    step: u64,
    fused: bool,
}

impl Sgd {
    /// SGD over `vars` (buffers as per [`is_buffer`] are dropped).
    pub fn new(vars: Vec<(String, Var)>, cfg: SgdParams) -> Result<Self> {
        let params = Param::list(vars)?;
        Ok(Self {
            momentum: vec![Buf::Empty; params.len()],
            params,
            cfg,
            step: 0,
            fused: true,
        })
    }

    /// Whether contiguous f32 CPU parameters use the fused in-place kernel (default `true`). Off, every
    /// parameter takes the generic tensor-op path used on other devices (for tests and comparisons).
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Weight decay for the parameters `only` selects ([`OptimizerConfig::decay_only`]); all when `None`.
    pub fn decay_only(mut self, only: Option<&[String]>) -> Self {
        mark_decay(&mut self.params, only);
        self
    }

    /// The hyper-parameters (with the current learning rate).
    pub fn params(&self) -> SgdParams {
        self.cfg
    }

    /// The number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    fn step_fused(&mut self, i: usize, grad: &Tensor) -> Result<()> {
        let p = &self.params[i];
        let c = &self.cfg;
        let use_momentum = c.momentum != 0.0;
        let first = self.momentum[i].is_empty();
        let buf = if use_momentum {
            Some(self.momentum[i].host(p)?.as_mut_slice())
        } else {
            None
        };
        let kernel = SgdKernel {
            buf: RefCell::new(buf),
            first,
            lr: c.lr as f32,
            momentum: c.momentum as f32,
            weight_decay: if p.decay { c.weight_decay as f32 } else { 0.0 },
            nesterov: c.nesterov,
        };
        p.var.as_tensor().inplace_op2(grad, &kernel)?;
        Ok(())
    }

    fn step_generic(&mut self, i: usize, grad: &Tensor) -> Result<()> {
        let p = &self.params[i];
        let c = self.cfg;
        let w = p.var.as_tensor();
        let mut d = grad.clone();
        if c.weight_decay != 0.0 && p.decay {
            d = (d + w.affine(c.weight_decay, 0.0)?)?;
        }
        if c.momentum != 0.0 {
            let buf = match self.momentum[i].dev(p)? {
                None => d.clone(),
                Some(b) => (b.affine(c.momentum, 0.0)? + &d)?,
            };
            self.momentum[i] = Buf::Dev(buf.clone());
            d = if c.nesterov {
                (d + buf.affine(c.momentum, 0.0)?)?
            } else {
                buf
            };
        }
        p.var.set(&(w + d.affine(-c.lr, 0.0)?)?)?;
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for i in 0..self.params.len() {
            let Some(grad) = self.params[i].grad(grads)? else {
                continue;
            };
            if self.fused && self.params[i].cpu_f32 {
                self.step_fused(i, &grad)?;
            } else {
                self.step_generic(i, &grad)?;
            }
        }
        self.step += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        out.insert(STEP_KEY.to_string(), count_tensor(self.step)?);
        for (p, b) in self.params.iter().zip(&self.momentum) {
            if let Some(t) = b.to_tensor(p)? {
                out.insert(format!("momentum.{}", p.name), t);
            }
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let step = read_step(state)?;
        let index: BTreeMap<&str, usize> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut momentum = vec![Buf::Empty; self.params.len()];
        for (key, t) in state {
            if key == STEP_KEY {
                continue;
            }
            let (_, i) = state_param(key, &index, &["momentum"], "SGD")?;
            momentum[i] = Buf::load(t, &self.params[i], self.fused, key)?;
        }
        self.momentum = momentum;
        self.step = step;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// AdamW
// ---------------------------------------------------------------------------------------------------------

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// Learning rate.
    pub lr: f64,
    /// β1, the first-moment decay.
    pub beta1: f64,
    /// β2, the second-moment decay.
    pub beta2: f64,
    /// ε, added after `√v̂`.
    pub eps: f64,
    /// Weight decay: decoupled (`w *= 1 − lr·wd`), or with `coupled` added to the gradient (`g += wd·w`,
    /// PyTorch's `Adam`).
    pub weight_decay: f64,
    /// Adam's L2 (`torch.optim.Adam`) instead of AdamW's decoupled decay.
    pub coupled: bool,
}

/// AdamW with PyTorch's semantics (`torch.optim.AdamW`, `amsgrad = False`): per parameter and step `t`,
/// `w *= 1 − lr·wd; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
/// w −= lr/(1−β1ᵗ) · m / (√v / √(1−β2ᵗ) + ε)`.
pub struct AdamW {
    params: Vec<Param>,
    m: Vec<Buf>,
    v: Vec<Buf>,
    /// Per-parameter step counts (a parameter without a gradient does not advance).
    steps: Vec<u64>,
    cfg: AdamWParams,
    step: u64,
    fused: bool,
}

impl AdamW {
    /// AdamW over `vars` (buffers as per [`is_buffer`] are dropped).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWParams) -> Result<Self> {
        let params = Param::list(vars)?;
        let n = params.len();
        Ok(Self {
            params,
            m: vec![Buf::Empty; n],
            v: vec![Buf::Empty; n],
            steps: vec![0; n],
            cfg,
            step: 0,
            fused: true,
        })
    }

    /// Whether contiguous f32 CPU parameters use the fused in-place kernel (default `true`). Off, every
    /// parameter takes the generic tensor-op path used on other devices (for tests and comparisons).
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Weight decay for the parameters `only` selects ([`OptimizerConfig::decay_only`]); all when `None`.
    pub fn decay_only(mut self, only: Option<&[String]>) -> Self {
        mark_decay(&mut self.params, only);
        self
    }

    /// The hyper-parameters (with the current learning rate).
    pub fn params(&self) -> AdamWParams {
        self.cfg
    }

    /// The number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// `(1 − lr·wd, lr / (1 − β1ᵗ), √(1 − β2ᵗ), l2)` for parameter `i`'s step `t`: the decoupled decay factor
    /// (1 when coupled or not decaying) and the coupled L2 coefficient (0 unless coupled and decaying).
    fn factors(&self, i: usize, t: u64) -> (f64, f64, f64, f64) {
        let c = &self.cfg;
        let t = t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let wd = if self.params[i].decay {
            c.weight_decay
        } else {
            0.0
        };
        let (decay, l2) = if c.coupled {
            (1.0, wd)
        } else {
            (1.0 - c.lr * wd, 0.0)
        };
        (decay, c.lr / bc1, bc2.sqrt(), l2)
    }

    fn step_fused(&mut self, i: usize, grad: &Tensor) -> Result<()> {
        let (decay, step_size, bc2_sqrt, l2) = self.factors(i, self.steps[i]);
        let c = self.cfg;
        let p = &self.params[i];
        let (m, v) = (&mut self.m[i], &mut self.v[i]);
        let kernel = AdamWKernel {
            m: RefCell::new(m.host(p)?.as_mut_slice()),
            v: RefCell::new(v.host(p)?.as_mut_slice()),
            decay: decay as f32,
            l2: l2 as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            step_size: step_size as f32,
            bc2_sqrt: bc2_sqrt as f32,
            eps: c.eps as f32,
        };
        p.var.as_tensor().inplace_op2(grad, &kernel)?;
        Ok(())
    }

    fn step_generic(&mut self, i: usize, grad: &Tensor) -> Result<()> {
        let (decay, step_size, bc2_sqrt, l2) = self.factors(i, self.steps[i]);
        let c = self.cfg;
        let p = &self.params[i];
        let w = p.var.as_tensor();
        let coupled;
        let grad = if l2 != 0.0 {
            coupled = (grad + w.affine(l2, 0.0)?)?;
            &coupled
        } else {
            grad
        };
        let m = match self.m[i].dev(p)? {
            None => grad.affine(1.0 - c.beta1, 0.0)?,
            Some(m) => (m.affine(c.beta1, 0.0)? + grad.affine(1.0 - c.beta1, 0.0)?)?,
        };
        let g2 = grad.sqr()?.affine(1.0 - c.beta2, 0.0)?;
        let v = match self.v[i].dev(p)? {
            None => g2,
            Some(v) => (v.affine(c.beta2, 0.0)? + g2)?,
        };
        let denom = (v.sqrt()? / bc2_sqrt)?.affine(1.0, c.eps)?;
        let update = (m.div(&denom)?).affine(-step_size, 0.0)?;
        p.var.set(&(w.affine(decay, 0.0)? + update)?)?;
        self.m[i] = Buf::Dev(m);
        self.v[i] = Buf::Dev(v);
        Ok(())
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for i in 0..self.params.len() {
            let Some(grad) = self.params[i].grad(grads)? else {
                continue;
            };
            self.steps[i] += 1;
            if self.fused && self.params[i].cpu_f32 {
                self.step_fused(i, &grad)?;
            } else {
                self.step_generic(i, &grad)?;
            }
        }
        self.step += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        out.insert(STEP_KEY.to_string(), count_tensor(self.step)?);
        for (i, p) in self.params.iter().enumerate() {
            if self.steps[i] == 0 {
                continue;
            }
            let (Some(m), Some(v)) = (self.m[i].to_tensor(p)?, self.v[i].to_tensor(p)?) else {
                return Err(Error::msg(format!(
                    "AdamW: parameter `{}` has taken steps but has no moment buffers",
                    p.name
                )));
            };
            out.insert(format!("adam_m.{}", p.name), m);
            out.insert(format!("adam_v.{}", p.name), v);
            out.insert(
                format!("adam_step.{}", p.name),
                count_tensor(self.steps[i])?,
            );
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let step = read_step(state)?;
        let index: BTreeMap<&str, usize> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let n = self.params.len();
        let (mut m, mut v, mut steps) = (vec![Buf::Empty; n], vec![Buf::Empty; n], vec![0; n]);
        for (key, t) in state {
            if key == STEP_KEY {
                continue;
            }
            let (kind, i) = state_param(key, &index, &["adam_m", "adam_v", "adam_step"], "AdamW")?;
            let p = &self.params[i];
            match kind {
                "adam_m" => m[i] = Buf::load(t, p, self.fused, key)?,
                "adam_v" => v[i] = Buf::load(t, p, self.fused, key)?,
                _ => steps[i] = read_count(t, key)?,
            }
        }
        for (i, p) in self.params.iter().enumerate() {
            let complete = m[i].is_empty() == v[i].is_empty() && m[i].is_empty() == (steps[i] == 0);
            if !complete {
                return Err(Error::msg(format!(
                    "optimizer state for `{}` is incomplete: AdamW needs adam_m, adam_v and a non-zero adam_step together",
                    p.name
                )));
            }
        }
        self.m = m;
        self.v = v;
        self.steps = steps;
        self.step = step;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Gradient norms and clipping
// ---------------------------------------------------------------------------------------------------------

/// Σx² in f64 over a chunk, with eight fixed accumulators (vectorisable and deterministic).
fn sum_sq(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            let v = c[k] as f64;
            acc[k] += v * v;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in it.remainder() {
        s += (v as f64) * (v as f64);
    }
    s
}

/// Σx² of a CPU f32 tensor (parallel, deterministic order), `None` for other tensors.
fn cpu_sum_sq(t: &Tensor) -> Option<f64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        return None;
    };
    let n = layout.shape().elem_count();
    let gathered;
    let data: &[f32] = match layout.contiguous_offsets() {
        Some((start, end)) => &v[start..end],
        None => {
            let mut out = vec![0f32; n];
            gather(
                v,
                layout.dims(),
                layout.stride(),
                layout.start_offset(),
                0,
                &mut out,
            );
            gathered = out;
            &gathered
        }
    };
    if data.len() <= CHUNK {
        return Some(sum_sq(data));
    }
    let parts: Vec<f64> = data.par_chunks(CHUNK).map(sum_sq).collect();
    Some(parts.iter().sum())
}

/// The global L2 norm of the gradients of `vars` in `grads` (variables without a gradient and buffers are
/// skipped), accumulated in f64.
pub fn grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64> {
    let mut total = 0f64;
    let mut device_parts = Vec::new();
    for (name, var) in vars {
        if is_buffer(name) {
            continue;
        }
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        match cpu_sum_sq(g) {
            Some(s) => total += s,
            None => device_parts.push(g.to_dtype(DType::F64)?.sqr()?.sum_all()?),
        }
    }
    if !device_parts.is_empty() {
        total += Tensor::stack(&device_parts, 0)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Clips gradients by their global L2 norm, as PyTorch's `clip_grad_norm_`: computes the norm of the
/// gradients of `vars` ([`grad_norm`]) and, if it exceeds `max_norm`, replaces each gradient in `grads` by
/// `g · max_norm / (norm + 1e-6)`. Returns the norm *before* clipping. A non-finite norm leaves the
/// gradients untouched (the caller decides whether that is divergence).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::msg(format!(
            "clip_grad_norm: max_norm must be > 0, got {max_norm}"
        )));
    }
    let norm = grad_norm(grads, vars)?;
    if norm.is_finite() && norm > max_norm {
        let coef = max_norm / (norm + 1e-6);
        for (name, var) in vars {
            if is_buffer(name) {
                continue;
            }
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = g.affine(coef, 0.0)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod decay_tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f32]) -> Var {
        Var::new(v, &Device::Cpu).unwrap()
    }

    fn cfg(kind: OptimizerKind, wd: f64, only: Option<&[&str]>) -> OptimizerConfig {
        OptimizerConfig {
            kind,
            lr: 0.05,
            momentum: 0.0,
            nesterov: false,
            weight_decay: Some(wd),
            betas: None,
            eps: None,
            decay_only: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// `(a, b)` after 5 steps of loss `Σ(a·x)² + Σ(b·x)²` with `opt`, adding `extra_l2·a` to `a`'s gradient
    /// by hand when given.
    fn run(opt_cfg: &OptimizerConfig, extra_l2: f64) -> (Vec<f32>, Vec<f32>) {
        let (a, b) = (var(&[1.0, -2.0, 0.5]), var(&[0.3, 0.7, -1.1]));
        // the last input is 0: without decay, the last weights get no gradient and stay put
        let x = Tensor::new(&[0.5f32, 1.5, 0.0], &Device::Cpu).unwrap();
        let vars = vec![
            ("model.layers.0.weight".to_string(), a.clone()),
            ("model.layers.1.weight".to_string(), b.clone()),
        ];
        let mut opt = build_optimizer(opt_cfg, vars).unwrap();
        for _ in 0..5 {
            let loss = (a
                .as_tensor()
                .mul(&x)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                + b.as_tensor()
                    .mul(&x)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap())
            .unwrap();
            let mut g = loss.backward().unwrap();
            if extra_l2 != 0.0 {
                let ga = g.get(a.as_tensor()).unwrap().clone();
                let ga = (ga + a.as_tensor().affine(extra_l2, 0.0).unwrap()).unwrap();
                g.insert(a.as_tensor(), ga);
            }
            opt.step(&g).unwrap();
        }
        (
            a.as_tensor().to_vec1().unwrap(),
            b.as_tensor().to_vec1().unwrap(),
        )
    }

    fn close(x: &[f32], y: &[f32]) {
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-6, "{x:?} vs {y:?}");
        }
    }

    /// Adam's coupled L2 on the selected parameter equals AdamW without decay fed `g + wd·w` by hand; the
    /// unselected parameter trains as if there were no decay at all.
    #[test]
    fn adam_l2_on_selected_parameters_equals_the_gradient_term_by_hand() {
        let wd = 0.3;
        let ours = run(&cfg(OptimizerKind::Adam, wd, Some(&["layers.0"])), 0.0);
        let by_hand = run(&cfg(OptimizerKind::Adamw, 0.0, None), wd);
        close(&ours.0, &by_hand.0);
        close(&ours.1, &by_hand.1);
        // the decay moved the selected parameter's weight that has no data gradient, and only that one
        let none = run(&cfg(OptimizerKind::Adamw, 0.0, None), 0.0);
        assert_eq!((none.0[2], none.1[2]), (0.5, -1.1));
        assert!((ours.0[2] - 0.5).abs() > 0.1, "{ours:?}");
        assert_eq!(ours.1[2], -1.1);
        // SGD: the same selection
        let sgd = run(
            &cfg(OptimizerKind::Sgd, wd, Some(&["layers.0.weight"])),
            0.0,
        );
        let sgd_hand = run(&cfg(OptimizerKind::Sgd, 0.0, None), wd);
        close(&sgd.0, &sgd_hand.0);
        close(&sgd.1, &sgd_hand.1);
    }

    #[test]
    fn decay_only_selects_names_and_module_prefixes() {
        let pats = vec!["layers.0".to_string(), "fc.weight".to_string()];
        assert!(selected("model.layers.0.weight", &pats));
        assert!(selected("layers.0.bias", &pats));
        assert!(!selected("model.layers.01.weight", &pats));
        assert!(selected("model.fc.weight", &pats));
        assert!(!selected("model.fc.bias", &pats));
        let mut bad = cfg(OptimizerKind::Adam, 0.1, Some(&[]));
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("decay_only"));
        bad.decay_only = None;
        bad.validate().unwrap();
    }
}
