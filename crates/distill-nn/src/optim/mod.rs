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

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use candle_nn::VarMap;
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

mod adamw;
mod clip;
mod kernels;
mod params;
mod sgd;
#[cfg(test)]
mod tests;

pub use adamw::*;
pub use clip::*;
pub(crate) use kernels::*;
pub(crate) use params::*;
pub use sgd::*;
