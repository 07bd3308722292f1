//! AdamW (decoupled weight decay) and Adam (L2 added to the gradient) with PyTorch's semantics.

use std::{cell::RefCell, collections::BTreeMap};

use candle_core::{backprop::GradStore, Tensor, Var};

use super::*;
use crate::{Error, Result};

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
