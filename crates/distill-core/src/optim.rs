//! Optimisers (SGD with momentum/Nesterov/weight decay, AdamW), learning-rate schedules and gradient clipping.

use serde::{Deserialize, Serialize};

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent (PyTorch semantics: `v = μv + g (+ wd·w)`, `w -= lr·v`, Nesterov optional).
    Sgd,
    /// AdamW (decoupled weight decay, Loshchilov & Hutter).
    Adamw,
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
    /// Weight decay: L2 added to the gradient for SGD, decoupled for AdamW (default 0 for SGD, 0.01 for AdamW).
    pub weight_decay: Option<f64>,
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

// ---- TEMPORARY STUBS (replaced by the optimiser branch) ----
use crate::Result;
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::BTreeMap;
/// stub
pub trait Optimizer: Send {
    /// stub
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// stub
    fn learning_rate(&self) -> f64;
    /// stub
    fn set_learning_rate(&mut self, lr: f64);
    /// stub
    fn state(&self) -> Result<BTreeMap<String, Tensor>>;
    /// stub
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()>;
}
struct SgdStub {
    vars: Vec<(String, Var)>,
    lr: f64,
}
impl Optimizer for SgdStub {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (_, v) in &self.vars {
            if let Some(g) = grads.get(v) {
                v.set(&(v.as_tensor() - (g * self.lr)?)?)?;
            }
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr
    }
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(BTreeMap::new())
    }
    fn load_state(&mut self, _s: &BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}
/// stub
pub fn build_optimizer(cfg: &OptimizerConfig, vars: Vec<(String, Var)>) -> Result<Box<dyn Optimizer>> {
    Ok(Box::new(SgdStub { vars, lr: cfg.lr }))
}
/// stub
pub fn clip_grad_norm(_g: &mut GradStore, _v: &[(String, Var)], _m: f64) -> Result<f64> {
    Ok(0.0)
}
impl OptimizerConfig {
    /// stub
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0) {
            return Err(crate::Error::config("optimizer", format!("lr must be > 0, got {}", self.lr)));
        }
        Ok(())
    }
}
impl ScheduleConfig {
    /// stub
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// stub
    pub fn lr_at(&self, base: f64, _p: f64, _e: usize) -> f64 {
        base
    }
}
