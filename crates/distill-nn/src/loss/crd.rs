//! Contrastive representation distillation (Tian et al., ICLR 2020) after RepDistiller's `crd/` code: the
//! loss of given memory rows ([`crd_loss`], reference-tested against float64 numpy) and the state around it
//! ([`ContrastMemory`]: projection heads, memory banks, constants).

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::VarMap;

use super::{check_batch, check_temperature, shape_err, softplus};
use crate::{Error, Result, Rng};

/// CRD's `eps` in the NCE ratios (RepDistiller's `ContrastLoss`).
pub const CRD_EPS: f64 = 1e-7;

/// CRD's unnormalised contrast scores of one side: `exp([v · pos, v · negᵀ] / T)`, `[B, 1 + K]` with the
/// positive first (RepDistiller's `ContrastMemory` before dividing by its constant Z). `v` and `pos` are
/// `[B, D]` (the anchors' embeddings and the other side's memory rows of the same samples), `neg` is
/// `[K, D]` (the other side's memory rows of the negatives, shared by the batch).
pub fn crd_scores(v: &Tensor, pos: &Tensor, neg: &Tensor, t: f64) -> Result<Tensor> {
    const F: &str = "crd_scores";
    check_temperature(F, t)?;
    let (b, d) = v.dims2().map_err(|_| {
        shape_err(format!(
            "{F}: embeddings must be [batch, dim], got {:?}",
            v.dims()
        ))
    })?;
    if pos.dims() != [b, d] || neg.rank() != 2 || neg.dim(1)? != d {
        return Err(shape_err(format!(
            "{F}: embeddings {:?}, positives {:?} and negatives {:?} must be [B, D], [B, D] and [K, D]",
            v.dims(),
            pos.dims(),
            neg.dims()
        )));
    }
    let p = (v * pos)?.sum_keepdim(1)?;
    let n = v.matmul(&neg.t()?)?;
    Ok(Tensor::cat(&[p, n], 1)?.affine(1.0 / t, 0.0)?.exp()?)
}

/// `Σ softplus(a·x + b)` over every element (a fused node for f32 on the CPU).
fn softplus_sum(x: &Tensor, a: f64, b: f64) -> Result<Tensor> {
    match crate::ops::softplus_sum(x, a, b)? {
        Some(s) => Ok(s),
        None => Ok(softplus(&x.affine(a, b)?)?.sum_all()?),
    }
}

/// CRD's noise-contrastive loss of one side (RepDistiller's `ContrastLoss` on `ContrastMemory`'s output):
/// with `x = exp(s / T) / Z` the normalised scores of the similarities `s = [v · pos, v · negᵀ]` (positive
/// first), `c = K·Pn + eps` and `Pn = 1 / n_data`, the authors'
/// `−(Σ log(x₀ / (x₀ + c)) + Σ log(K·Pn / (xₖ + c))) / B`, computed as
/// `(Σ softplus(−u₀) + Σ softplus(uₖ) − B·K·log(K·Pn / c)) / B` with `u = s / T − log(Z·c)`, the same
/// numbers without forming `x` (the `[B, K]` part is one fused node).
fn crd_side(
    v: &Tensor,
    pos: &Tensor,
    neg: &Tensor,
    t: f64,
    z: f64,
    n_data: usize,
) -> Result<Tensor> {
    let (b, k) = (v.dim(0)?, neg.dim(0)?);
    if k == 0 || n_data == 0 {
        return Err(shape_err(format!(
            "crd_loss: needs at least one negative and a non-empty data set (negatives {:?}, n_data {n_data})",
            neg.dims()
        )));
    }
    let k_pn = k as f64 / n_data as f64;
    let c = k_pn + CRD_EPS;
    let shift = -(z * c).ln();
    let s_pos = (v * pos)?.sum_keepdim(1)?;
    // the fused linear: no gradient is formed for the (untracked) memory rows
    let s_neg = crate::ops::linear(v, &neg.contiguous()?, None, false)?;
    let total = (softplus_sum(&s_pos, -1.0 / t, -shift)? + softplus_sum(&s_neg, 1.0 / t, shift)?)?;
    Ok(total.affine(1.0 / b as f64, -(k as f64) * (k_pn / c).ln())?)
}

/// Contrastive representation distillation (Tian et al., ICLR 2020), the loss of RepDistiller's `CRDLoss`
/// given its memory rows: the embeddings `e_s`, `e_t` (`[B, D]`, L2-normalised here as the authors' `Embed`
/// does) are scored against the other side's memory (`pos_*` the samples' own rows `[B, D]`, `neg_*` the
/// negatives' rows `[K, D]`), each side's scores divided by its constant `z_*`, and the two NCE losses
/// (`crd_side`) added. The authors draw `K` negatives per sample; here the batch shares one draw, so the
/// score matrix is one product (their code with every row of `contrast_idx` alike).
#[allow(clippy::too_many_arguments)]
pub fn crd_loss(
    e_s: &Tensor,
    e_t: &Tensor,
    pos_s: &Tensor,
    pos_t: &Tensor,
    neg_s: &Tensor,
    neg_t: &Tensor,
    t: f64,
    z_s: f64,
    z_t: f64,
    n_data: usize,
) -> Result<Tensor> {
    const F: &str = "crd_loss";
    check_batch(F, e_s, e_t)?;
    for (name, z) in [("z_s", z_s), ("z_t", z_t)] {
        if !(z.is_finite() && z > 0.0) {
            return Err(Error::msg(format!(
                "{F}: {name} must be finite and > 0, got {z}"
            )));
        }
    }
    check_temperature(F, t)?;
    let v_s = super::l2_normalize(e_s, 1)?;
    let v_t = super::l2_normalize(e_t, 1)?;
    let (b, d) = v_s.dims2().map_err(|_| {
        shape_err(format!(
            "{F}: embeddings must be [batch, dim], got {:?} and {:?}",
            e_s.dims(),
            e_t.dims()
        ))
    })?;
    for (name, x, rows) in [
        ("pos_s", pos_s, Some(b)),
        ("pos_t", pos_t, Some(b)),
        ("neg_s", neg_s, None),
        ("neg_t", neg_t, None),
    ] {
        let fits = x.rank() == 2 && x.dim(1)? == d && rows.is_none_or(|r| x.dim(0).ok() == Some(r));
        if !fits || v_t.dims() != [b, d] {
            return Err(shape_err(format!(
                "{F}: embeddings {:?} / {:?}; {name} is {:?} (expected [{}, {d}])",
                e_s.dims(),
                e_t.dims(),
                x.dims(),
                rows.map_or("K".to_string(), |r| r.to_string())
            )));
        }
    }
    // the student's embedding against the teacher's memory, and the teacher's against the student's
    Ok((crd_side(&v_s, pos_t, neg_t, t, z_s, n_data)?
        + crd_side(&v_t, pos_s, neg_s, t, z_t, n_data)?)?)
}

/// CRD's settings; [`CrdConfig::DEFAULT`] is RepDistiller's (`feat_dim`, `nce_k`, `nce_t`, `nce_m`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrdConfig {
    /// Width both projection heads map to.
    pub embed_dim: usize,
    /// Negatives drawn per batch.
    pub negatives: usize,
    /// Temperature τ of the scores.
    pub temperature: f64,
    /// Memory momentum μ: a sample's row becomes `normalise(μ · row + (1 − μ) · v)`.
    pub momentum: f64,
}

impl CrdConfig {
    /// The authors' defaults: 128, 16384, 0.07, 0.5.
    pub const DEFAULT: Self = Self {
        embed_dim: 128,
        negatives: 16384,
        temperature: 0.07,
        momentum: 0.5,
    };
}

/// CRD's state (RepDistiller's `Embed` heads and `ContrastMemory`): a linear head per side (`embed_s`,
/// `embed_t`: flattened feature width → `embed_dim`, trained with the student), a memory bank per side
/// (`memory_s`, `memory_t`: one L2-normalised row per training sample, uniform in ±1/√(embed_dim/3) at the
/// start, moved with momentum by each batch's embeddings, never by the optimiser: no gradient reaches them)
/// and `state` = `[Z_s, Z_t, batches seen]` (the constants are set from the first batch, as the authors' code
/// does). All of it lives in the [`VarMap`] given to [`ContrastMemory::new`], so a checkpoint holds it.
///
/// Each batch draws `negatives` sample indices uniformly with replacement from the training split, from a
/// stream seeded by the seed and the batch count, and the batch shares them. The authors draw `K` per sample,
/// from the other classes' samples; a batch-shared draw makes the scores one matrix product.
pub struct ContrastMemory {
    embed_s: candle_nn::Linear,
    embed_t: candle_nn::Linear,
    memory_s: Var,
    memory_t: Var,
    state: Var,
    config: CrdConfig,
    n_data: usize,
    seed: u64,
}

impl ContrastMemory {
    /// The state for flattened feature widths `widths` (student, teacher) over a training split of `n_data`
    /// samples, created in `varmap` and initialised from `seed`.
    pub fn new(
        varmap: &VarMap,
        config: CrdConfig,
        widths: (usize, usize),
        n_data: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let vb = crate::init::seeded_var_builder(varmap, seed, device);
        let d = config.embed_dim;
        let embed_s = candle_nn::linear(widths.0, d, vb.pp("embed_s"))?;
        let embed_t = candle_nn::linear(widths.1, d, vb.pp("embed_t"))?;
        let stdv = 1.0 / (d as f64 / 3.0).sqrt();
        let uniform = candle_nn::Init::Uniform {
            lo: -stdv,
            up: stdv,
        };
        vb.get_with_hints((n_data, d), "memory_s", uniform)?;
        vb.get_with_hints((n_data, d), "memory_t", uniform)?;
        vb.get_with_hints(3, "state", candle_nn::Init::Const(0.0))?;
        let var = |name: &str| varmap.data().lock().expect("varmap lock")[name].clone();
        Ok(Self {
            embed_s,
            embed_t,
            memory_s: var("memory_s"),
            memory_t: var("memory_t"),
            state: var("state"),
            config,
            n_data,
            seed,
        })
    }

    /// The negatives of batch number `step`: `negatives` indices below `n_data`.
    pub fn negatives(&self, step: u64) -> Vec<u32> {
        let mut rng = Rng::derive(self.seed, &[&"crd negatives", &step]);
        (0..self.config.negatives)
            .map(|_| rng.below(self.n_data) as u32)
            .collect()
    }

    /// The loss of one training batch: features `[B, ..]` (flattened) of the samples `indices` of the
    /// training split; then the samples' memory rows move and the batch count advances.
    pub fn loss(&self, student: &Tensor, teacher: &Tensor, indices: &[usize]) -> Result<Tensor> {
        let rows = |x: &Tensor| -> Result<Tensor> {
            Ok(if x.rank() == 1 {
                x.unsqueeze(1)?
            } else {
                x.flatten_from(1)?
            })
        };
        let e_s = self.embed_s.forward(&rows(student)?)?;
        let e_t = self.embed_t.forward(&rows(teacher)?.detach())?;
        if let Some(&i) = indices.iter().find(|&&i| i >= self.n_data) {
            return Err(shape_err(format!(
                "sample index {i} is outside the training split's {} samples (CRD keys its memory bank by \
                 training sample)",
                self.n_data
            )));
        }
        if indices.len() != e_s.dim(0)? {
            return Err(shape_err(format!(
                "the batch lists {} samples, the features have {} rows",
                indices.len(),
                e_s.dim(0)?
            )));
        }
        let dev = self.state.device();
        let ids: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec(ids, indices.len(), dev)?;
        let state: Vec<f32> = self
            .state
            .as_tensor()
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let step = state[2] as u64;
        let neg = Tensor::from_vec(self.negatives(step), self.config.negatives, dev)?;
        let mem_s = self.memory_s.as_tensor().detach();
        let mem_t = self.memory_t.as_tensor().detach();
        let (pos_s, pos_t) = (mem_s.index_select(&ids, 0)?, mem_t.index_select(&ids, 0)?);
        let (neg_s, neg_t) = (mem_s.index_select(&neg, 0)?, mem_t.index_select(&neg, 0)?);
        let v_s = super::l2_normalize(&e_s.detach(), 1)?;
        let v_t = super::l2_normalize(&e_t.detach(), 1)?;
        let t = self.config.temperature;
        let (mut z_s, mut z_t) = (state[0] as f64, state[1] as f64);
        if step == 0 {
            // the first batch sets the constants: mean score × data size (RepDistiller's Z), kept as the
            // state keeps them (f32), so a resumed run uses the same numbers
            let z = |v: &Tensor, pos: &Tensor, negs: &Tensor| -> Result<f64> {
                let m = crd_scores(v, pos, negs, t)?.mean_all()?;
                let m = m.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                Ok((m * self.n_data as f64) as f32 as f64)
            };
            z_s = z(&v_s, &pos_t, &neg_t)?;
            z_t = z(&v_t, &pos_s, &neg_s)?;
        }
        let loss = crd_loss(
            &e_s,
            &e_t,
            &pos_s,
            &pos_t,
            &neg_s,
            &neg_t,
            t,
            z_s,
            z_t,
            self.n_data,
        )?;
        let m = self.config.momentum;
        let moved = |pos: &Tensor, v: &Tensor| -> Result<Tensor> {
            super::l2_normalize(&(pos.affine(m, 0.0)? + v.affine(1.0 - m, 0.0)?)?, 1)
        };
        crate::ops::set_rows(&self.memory_s, indices, &moved(&pos_s, &v_s)?)?;
        crate::ops::set_rows(&self.memory_t, indices, &moved(&pos_t, &v_t)?)?;
        let next = Tensor::new(&[z_s as f32, z_t as f32, (step + 1) as f32], dev)?;
        self.state.set(&next.to_dtype(self.state.dtype())?)?;
        Ok(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(t: &Tensor) -> f64 {
        t.to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// The heads train, the memory banks and constants do not (no gradient); the first batch sets Z, later
    /// ones keep it; the batch's memory rows move to `normalize(m · row + (1 − m) · v)` and no other row
    /// changes; the loss is [`crd_loss`] of the rows as they were, with the negatives of
    /// [`ContrastMemory::negatives`]; a memory rebuilt from a checkpoint of the state continues identically.
    #[test]
    fn crd_keeps_its_memory_constants_and_resumes_exactly() {
        let dev = Device::Cpu;
        let s = Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let t = Tensor::randn(0f32, 2.0, (4, 9), &dev).unwrap();
        let config = CrdConfig {
            embed_dim: 5,
            negatives: 7,
            momentum: 0.25,
            ..CrdConfig::DEFAULT
        };
        let n = 30;
        let vm = VarMap::new();
        let crd = ContrastMemory::new(&vm, config, (6, 9), n, 11, &dev).unwrap();
        let snapshot =
            |vm: &VarMap, name: &str| vm.data().lock().unwrap()[name].as_tensor().copy().unwrap();
        let idx = [2usize, 29, 0, 13];
        let (mem_s0, mem_t0) = (snapshot(&vm, "memory_s"), snapshot(&vm, "memory_t"));
        assert_eq!(mem_s0.dims(), &[n, 5]);
        let l1 = crd.loss(&s, &t, &idx).unwrap();
        let grads = l1.backward().unwrap();
        let data = vm.data().lock().unwrap();
        for name in [
            "embed_s.weight",
            "embed_s.bias",
            "embed_t.weight",
            "embed_t.bias",
        ] {
            let g = grads.get(data[name].as_tensor());
            assert!(
                g.is_some_and(|g| val(&g.abs().unwrap().sum_all().unwrap()) > 0.0),
                "{name} gets no gradient"
            );
        }
        for name in ["memory_s", "memory_t", "state"] {
            assert!(
                grads.get(data[name].as_tensor()).is_none(),
                "{name} must not be trained"
            );
        }
        drop(data);
        // the value: crd_loss of the rows before the call, the first batch's constants, the drawn negatives
        let neg = Tensor::new(crd.negatives(0).as_slice(), &dev).unwrap();
        assert!(crd.negatives(0).iter().all(|&i| (i as usize) < n));
        assert_ne!(crd.negatives(0), crd.negatives(1));
        let ids = Tensor::new(&[2u32, 29, 0, 13], &dev).unwrap();
        let head = |side: &str, x: &Tensor| {
            let w = snapshot(&vm, &format!("embed_{side}.weight"));
            let b = snapshot(&vm, &format!("embed_{side}.bias"));
            x.matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
        };
        let (e_s, e_t) = (head("s", &s), head("t", &t));
        let rows = |m: &Tensor, i: &Tensor| m.index_select(i, 0).unwrap();
        let state = snapshot(&vm, "state").to_vec1::<f32>().unwrap();
        assert_eq!(state[2], 1.0, "one batch seen");
        let unit = |x: &Tensor| {
            x.broadcast_div(&x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
                .unwrap()
        };
        let z = |v: &Tensor, pos: &Tensor, negs: &Tensor| {
            val(&crd_scores(v, pos, negs, 0.07).unwrap().mean_all().unwrap()) * n as f64
        };
        let z_s = z(&unit(&e_s), &rows(&mem_t0, &ids), &rows(&mem_t0, &neg));
        let z_t = z(&unit(&e_t), &rows(&mem_s0, &ids), &rows(&mem_s0, &neg));
        assert!(
            (state[0] as f64 - z_s).abs() < 1e-4 * z_s,
            "Z_s {} vs {z_s}",
            state[0]
        );
        assert!(
            (state[1] as f64 - z_t).abs() < 1e-4 * z_t,
            "Z_t {} vs {z_t}",
            state[1]
        );
        let want = crd_loss(
            &e_s,
            &e_t,
            &rows(&mem_s0, &ids),
            &rows(&mem_t0, &ids),
            &rows(&mem_s0, &neg),
            &rows(&mem_t0, &neg),
            0.07,
            state[0] as f64,
            state[1] as f64,
            n,
        )
        .unwrap();
        assert!(
            (val(&l1) - val(&want)).abs() < 1e-4,
            "{} vs {}",
            val(&l1),
            val(&want)
        );
        // memory: the batch's rows moved with momentum 0.25, the rest kept
        let mem_s1 = snapshot(&vm, "memory_s");
        let moved = unit(
            &(rows(&mem_s0, &ids).affine(0.25, 0.0).unwrap()
                + unit(&e_s).affine(0.75, 0.0).unwrap())
            .unwrap(),
        );
        let diff = (rows(&mem_s1, &ids) - moved).unwrap().abs().unwrap();
        assert!(val(&diff.max_all().unwrap()) < 1e-5);
        for r in (0..n).filter(|r| !idx.contains(r)) {
            let a = mem_s1.get(r).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                a,
                mem_s0.get(r).unwrap().to_vec1::<f32>().unwrap(),
                "row {r}"
            );
        }
        // a checkpoint of the state, loaded into a freshly built memory, continues identically
        let saved: Vec<(String, Tensor)> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
            .collect();
        let l2 = val(&crd.loss(&s, &t, &idx).unwrap());
        let vm2 = VarMap::new();
        let resumed = ContrastMemory::new(&vm2, config, (6, 9), n, 11, &dev).unwrap();
        for (k, v) in &saved {
            vm2.data().lock().unwrap()[k].set(v).unwrap();
        }
        assert_eq!(val(&resumed.loss(&s, &t, &idx).unwrap()), l2);
        let state2 = snapshot(&vm, "state").to_vec1::<f32>().unwrap();
        assert_eq!((state2[0], state2[1], state2[2]), (state[0], state[1], 2.0));
        // a sample index beyond the split, or a batch of another size, is refused
        let e = crd.loss(&s, &t, &[2, 30, 0, 13]).unwrap_err().to_string();
        assert!(e.contains("30") && e.contains("30 samples"), "{e}");
        assert!(crd.loss(&s, &t, &[2, 3, 0]).is_err());
    }
}
