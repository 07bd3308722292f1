//! SGD with PyTorch's semantics.

use std::{cell::RefCell, collections::BTreeMap};

use candle_core::{backprop::GradStore, Tensor, Var};

use super::*;
use crate::Result;

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
