//! The parameters an optimiser updates and its state buffers (host memory for the fused kernels).

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, CpuStorage, DType, Device, Storage, Tensor, Var};

use crate::{is_buffer, Error, Result};

// ---------------------------------------------------------------------------------------------------------
// Parameters and state buffers
// ---------------------------------------------------------------------------------------------------------

pub(crate) const STEP_KEY: &str = "step";
/// Elements per rayon task in the fused kernels and the norm computation.
pub(crate) const CHUNK: usize = 1 << 16;

pub(crate) struct Param {
    pub(crate) name: String,
    pub(crate) var: Var,
    /// A contiguous f32 CPU tensor: eligible for the fused kernels.
    pub(crate) cpu_f32: bool,
    /// Whether weight decay applies to it ([`OptimizerConfig::decay_only`]).
    pub(crate) decay: bool,
}

/// Whether the parameter `name` (as the optimiser sees it: `model.` and `loss{i}.` prefixes allowed) is one
/// that `patterns` (names or module prefixes of the network's parameters) select.
pub(crate) fn selected(name: &str, patterns: &[String]) -> bool {
    let local = name.strip_prefix("model.").unwrap_or(name);
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('.');
        local == p || local.strip_prefix(p).is_some_and(|r| r.starts_with('.'))
    })
}

/// Marks which of `params` decay: all of them when `only` is `None`.
pub(crate) fn mark_decay(params: &mut [Param], only: Option<&[String]>) {
    for p in params {
        p.decay = only.is_none_or(|pats| selected(&p.name, pats));
    }
}

impl Param {
    pub(crate) fn list(vars: Vec<(String, Var)>) -> Result<Vec<Param>> {
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
    pub(crate) fn grad(&self, grads: &GradStore) -> Result<Option<Tensor>> {
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
pub(crate) fn cpu_f32_ptr(t: &Tensor) -> Option<usize> {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v.as_ptr() as usize),
        _ => None,
    }
}

/// One optimiser buffer of one parameter.
#[derive(Clone)]
pub(crate) enum Buf {
    /// Not created yet (no step with a gradient so far).
    Empty,
    /// Host memory, for the fused kernels.
    Host(Vec<f32>),
    /// A tensor on the parameter's device and dtype, for the generic path.
    Dev(Tensor),
}

impl Buf {
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Buf::Empty)
    }

    /// The buffer as a tensor of the parameter's shape (a copy for host buffers), `None` if empty.
    pub(crate) fn to_tensor(&self, p: &Param) -> Result<Option<Tensor>> {
        Ok(match self {
            Buf::Empty => None,
            Buf::Host(v) => Some(Tensor::from_slice(v, p.var.shape(), &Device::Cpu)?),
            Buf::Dev(t) => Some(t.clone()),
        })
    }

    /// Makes the buffer host-resident (zeros if empty) and returns it.
    pub(crate) fn host(&mut self, p: &Param) -> Result<&mut Vec<f32>> {
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
    pub(crate) fn dev(&mut self, p: &Param) -> Result<Option<Tensor>> {
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
    pub(crate) fn load(t: &Tensor, p: &Param, fused: bool, key: &str) -> Result<Buf> {
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

pub(crate) fn count_tensor(n: u64) -> Result<Tensor> {
    Ok(Tensor::new(&[n as i64], &Device::Cpu)?)
}

pub(crate) fn read_count(t: &Tensor, key: &str) -> Result<u64> {
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    match v.as_slice() {
        [x] if *x >= 0.0 && x.fract() == 0.0 => Ok(*x as u64),
        _ => Err(Error::msg(format!(
            "optimizer state `{key}` must be one non-negative integer, got {v:?}"
        ))),
    }
}

/// Splits a state key `kind.param.name` and finds the parameter.
pub(crate) fn state_param<'k>(
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

pub(crate) fn read_step(state: &BTreeMap<String, Tensor>) -> Result<u64> {
    let t = state
        .get(STEP_KEY)
        .ok_or_else(|| Error::msg(format!("optimizer state has no `{STEP_KEY}` entry")))?;
    read_count(t, STEP_KEY)
}
