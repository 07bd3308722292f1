//! Distillation and classification losses as functions of tensors (the loss structs, their recipe specs and
//! feature taps live in distill-core's `losses`). Each matches its PyTorch reference formulation; the KD and
//! cross-entropy terms run as single fused nodes on the CPU ([`crate::ops::kd_kl`], [`crate::ops::cross_entropy`]).

use candle_core::{DType, Tensor};

use crate::{Error, Result};

mod crd;
mod methods;
mod ofd;
mod reviewkd;
pub use crd::{crd_loss, crd_scores, ContrastMemory, CrdConfig, CRD_EPS};
pub use methods::{
    dist_loss, ls_kd_loss, nst_loss, pkt_loss, softplus, standardize_logits, vid_log_scale_init,
    vid_nll, VidRegressor, DIST_EPS, LS_EPS, PKT_EPS, VID_EPS,
};
pub use ofd::{erfc, ofd_loss, ofd_margin, OfdConnector, OFD_BN_EPS};
pub use reviewkd::{
    adaptive_avg_pool2d, hcl_loss, resize_nearest, ReviewFusion, HCL_LEVELS, REVIEWKD_BN_EPS,
};

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// `eps` of PyTorch's `F.normalize` (and of RKD's `pdist` clamp).
const NORM_EPS: f64 = 1e-12;

/// DKD's mask offset: the target logit is lowered by this much (after dividing by T) before the
/// non-target softmax, as in mdistiller.
const DKD_MASK: f64 = 1000.0;

fn shape_err(msg: String) -> Error {
    Error::Shape(msg)
}

/// A batch norm in training mode over `[B, C, ...]` (channels in dimension 1): per-channel batch statistics
/// (the biased variance, as PyTorch normalises in training), then `γ · x̂ + β` with `γ`, `β` `[C]` cast to
/// `x`'s dtype. OFD's connector and ReviewKD's fusion modules, which only run in training, normalise so.
fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    let mean = x.mean_keepdim(reduce.as_slice())?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(reduce.as_slice())?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dim(1)?;
    let dt = x.dtype();
    Ok(normed
        .broadcast_mul(&gamma.to_dtype(dt)?.reshape(shape.as_slice())?)?
        .broadcast_add(&beta.to_dtype(dt)?.reshape(shape.as_slice())?)?)
}

fn check_same_shape(func: &str, what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(shape_err(format!(
            "{func}: student {what} has shape {:?}, teacher {what} has shape {:?} (they must be equal)",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

fn check_temperature(func: &str, t: f64) -> Result<()> {
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::msg(format!(
            "{func}: the temperature must be finite and > 0, got {t}"
        )));
    }
    Ok(())
}

/// `[.., C]` logits as `[N, C]` rows (every leading position is one sample).
fn logit_rows(func: &str, x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 {
        return Err(shape_err(format!(
            "{func}: logits must have rank >= 2 ([batch, .., classes]), got shape {:?}",
            x.dims()
        )));
    }
    let c = x.dim(x.rank() - 1)?;
    let n = x.elem_count() / c.max(1);
    if n == 0 || c == 0 {
        return Err(shape_err(format!(
            "{func}: empty logits (shape {:?})",
            x.dims()
        )));
    }
    Ok(x.reshape((n, c))?)
}

/// `log Σ exp(x)` along `dim` (kept), with the (detached) maximum subtracted first.
fn logsumexp_keepdim(x: &Tensor, dim: usize) -> Result<Tensor> {
    // The maximum only stabilises the computation: its gradient contribution is exactly zero, so it is
    // detached rather than differentiated through (candle's max backward would route gradients to ties).
    let max = x.max_keepdim(dim)?.detach();
    let sum = x.broadcast_sub(&max)?.exp()?.sum_keepdim(dim)?;
    Ok(sum.log()?.broadcast_add(&max)?)
}

/// Numerically stable `log(softmax(x))` along `dim`, differentiable, for any float dtype.
pub fn log_softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    Ok(x.broadcast_sub(&logsumexp_keepdim(x, dim)?)?)
}

/// `Σ_c exp(log_p) · (log_p − log_q)` summed over everything: KL(p ‖ q) from log-probabilities.
fn kl_from_log_probs(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    Ok(log_p.exp()?.mul(&(log_p - log_q)?)?.sum_all()?)
}

/// PyTorch's `F.normalize(x, p=2, dim, eps=1e-12)`: `x / max(‖x‖, eps)`.
///
/// The squared norm is clamped (at eps²) *before* the square root, so an all-zero slice yields zeros with a
/// finite (zero) gradient instead of `sqrt'(0) = ∞` times zero = NaN.
pub fn l2_normalize(x: &Tensor, dim: usize) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(dim)?
        .maximum(NORM_EPS * NORM_EPS)?
        .sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// Class ids of `[..]` shape as a flat `[N]` u32 tensor, checked against the logits' shape and `c` classes
/// (the range check reads one scalar back from the device).
fn target_ids(func: &str, targets: &Tensor, logits_dims: &[usize], c: usize) -> Result<Tensor> {
    let lead = &logits_dims[..logits_dims.len() - 1];
    if targets.dims() != lead {
        return Err(shape_err(format!(
            "{func}: targets have shape {:?}, logits have shape {logits_dims:?} (targets must be {lead:?})",
            targets.dims()
        )));
    }
    if targets.dtype().is_float() {
        return Err(Error::msg(format!(
            "{func}: targets must be integer class ids, got {:?}",
            targets.dtype()
        )));
    }
    let ids = targets.flatten_all()?.to_dtype(DType::U32)?;
    let max = ids.max(0)?.to_scalar::<u32>()? as usize;
    if max >= c {
        return Err(Error::msg(format!(
            "{func}: target class {max} is out of range for {c} classes"
        )));
    }
    Ok(ids)
}

/// `[N, C]` one-hot mask (1 at each sample's target class) in `dtype`.
fn one_hot(ids: &Tensor, c: usize, dtype: DType) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, c as u32, ids.device())?.unsqueeze(0)?;
    Ok(ids.unsqueeze(1)?.broadcast_eq(&classes)?.to_dtype(dtype)?)
}

/// Smooth-L1 (Huber with δ = 1), mean over all elements, as `F.smooth_l1_loss`.
fn smooth_l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::huber(a, b, 1.0)?)
}

/// `[B, ..]` as `[B, D]`.
fn flat_rows(func: &str, x: &Tensor) -> Result<Tensor> {
    if x.rank() < 1 || x.dim(0)? == 0 {
        return Err(shape_err(format!(
            "{func}: expected a non-empty [batch, ..] tensor, got shape {:?}",
            x.dims()
        )));
    }
    if x.rank() == 1 {
        return Ok(x.unsqueeze(1)?);
    }
    Ok(x.flatten_from(1)?)
}

fn check_batch(func: &str, s: &Tensor, t: &Tensor) -> Result<()> {
    if s.rank() == 0 || t.rank() == 0 || s.dim(0)? != t.dim(0)? {
        return Err(shape_err(format!(
            "{func}: student shape {:?} and teacher shape {:?} must have the same batch (first) dimension",
            s.dims(),
            t.dims()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Loss functions
// ---------------------------------------------------------------------------------------------------------

/// Hinton et al.'s knowledge-distillation loss: `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`,
/// summed over classes and averaged over samples.
///
/// Equals PyTorch's `F.kl_div(F.log_softmax(s/T, 1), F.softmax(t/T, 1), reduction="batchmean") * T * T`.
/// Logits are `[B, C]`; higher-rank logits `[B, .., C]` are treated as `B·..` samples of `C` classes.
/// The teacher is not detached here (the [`Teacher`](crate::Teacher) already detaches its outputs).
pub fn kd_loss(student_logits: &Tensor, teacher_logits: &Tensor, t: f64) -> Result<Tensor> {
    const F: &str = "kd_loss";
    check_temperature(F, t)?;
    check_same_shape(F, "logits", student_logits, teacher_logits)?;
    let s = logit_rows(F, student_logits)?;
    let tt = logit_rows(F, teacher_logits)?;
    if let Some(fused) = crate::ops::kd_kl(&s, &tt, t)? {
        return Ok(fused);
    }
    let n = s.dim(0)?;
    let log_q = log_softmax(&s.affine(1.0 / t, 0.0)?, 1)?;
    let log_p = log_softmax(&tt.affine(1.0 / t, 0.0)?, 1)?;
    Ok(kl_from_log_probs(&log_p, &log_q)?.affine(t * t / n as f64, 0.0)?)
}

/// Mean cross-entropy of `[B, C]` logits against `[B]` integer class ids (u8, u32 or i64).
///
/// Higher-rank logits `[B, .., C]` take targets `[B, ..]`, averaged over every position.
pub fn ce_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const F: &str = "ce_loss";
    let rows = logit_rows(F, logits)?;
    let (n, c) = rows.dims2()?;
    let ids = target_ids(F, targets, logits.dims(), c)?;
    if let Some(fused) = crate::ops::cross_entropy(&rows, &ids)? {
        return Ok(fused);
    }
    let log_p = log_softmax(&rows, 1)?;
    let picked = log_p.gather(&ids.unsqueeze(1)?, 1)?;
    Ok(picked.sum_all()?.affine(-1.0 / n as f64, 0.0)?)
}

/// Decoupled knowledge distillation (Zhao et al., CVPR 2022), mdistiller's formulation:
/// `alpha · TCKD + beta · NCKD`, averaged over the batch.
///
/// * TCKD is `T² · KL` between the teacher's and student's binary distributions
///   `[p_target, 1 − p_target]` at temperature `T`;
/// * NCKD is `T² · KL` between their distributions over the non-target classes, obtained by lowering the
///   target logit by 1000 (after dividing by `T`) before the softmax.
///
/// The binary log-probabilities are computed from log-sum-exps (not as `log(Σ p)`), so a confident
/// prediction does not produce `log 0`. Targets are `[B]` integer class ids; there must be at least 2 classes.
pub fn dkd_loss(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    targets: &Tensor,
    alpha: f64,
    beta: f64,
    t: f64,
) -> Result<Tensor> {
    const F: &str = "dkd_loss";
    check_temperature(F, t)?;
    check_same_shape(F, "logits", student_logits, teacher_logits)?;
    let s = logit_rows(F, student_logits)?;
    let tt = logit_rows(F, teacher_logits)?;
    let (n, c) = s.dims2()?;
    if c < 2 {
        return Err(shape_err(format!(
            "{F}: needs at least 2 classes, logits have shape {:?}",
            student_logits.dims()
        )));
    }
    let ids = target_ids(F, targets, student_logits.dims(), c)?;
    let gt = one_hot(&ids, c, s.dtype())?;
    let offset = gt.affine(DKD_MASK, 0.0)?;
    // (binary [target, non-target] log-probs, non-target log-probs) of one side.
    let parts = |logits: &Tensor| -> Result<(Tensor, Tensor)> {
        let z = logits.affine(1.0 / t, 0.0)?;
        let lse_all = logsumexp_keepdim(&z, 1)?;
        let z_nt = (&z - &offset)?;
        let lse_nt = logsumexp_keepdim(&z_nt, 1)?;
        let log_p_gt = (&z * &gt)?.sum_keepdim(1)?.sub(&lse_all)?;
        let log_p_other = (&lse_nt - &lse_all)?;
        let binary = Tensor::cat(&[&log_p_gt, &log_p_other], 1)?;
        let non_target = z_nt.broadcast_sub(&lse_nt)?;
        Ok((binary, non_target))
    };
    let (s_bin, s_nt) = parts(&s)?;
    let (t_bin, t_nt) = parts(&tt)?;
    let tckd = kl_from_log_probs(&t_bin, &s_bin)?;
    let nckd = kl_from_log_probs(&t_nt, &s_nt)?;
    let scale = t * t / n as f64;
    Ok((tckd.affine(alpha * scale, 0.0)? + nckd.affine(beta * scale, 0.0)?)?)
}

/// FitNets' hint loss: mean squared error over all elements between the (adapted) student feature and the
/// teacher feature, which must have the same shape.
pub fn hint_loss(student_feat: &Tensor, teacher_feat: &Tensor) -> Result<Tensor> {
    check_same_shape("hint_loss", "feature", student_feat, teacher_feat)?;
    Ok((student_feat - teacher_feat)?.sqr()?.mean_all()?)
}

/// Attention map of Zagoruyko & Komodakis: `normalize(mean_C(|x|^p).flatten())` per sample.
fn attention_map(x: &Tensor, p: f64) -> Result<Tensor> {
    let a = if p == 2.0 {
        x.sqr()?
    } else if p == 1.0 {
        x.abs()?
    } else {
        x.abs()?.powf(p)?
    };
    l2_normalize(&a.mean(1)?.flatten_from(1)?, 1)
}

/// Attention transfer (Zagoruyko & Komodakis, ICLR 2017): `mean((a_s − a_t)²)` over batch and positions,
/// where `a = normalize_L2(mean_over_channels(|x|^p).flatten())` per sample.
///
/// Maps are `[B, C, H, W]` (any rank ≥ 3 works: dimension 1 is averaged, the rest are positions). Channel
/// counts may differ; batch and spatial sizes must match. `p` must be finite and > 0 (the paper uses 2).
pub fn at_loss(student_map: &Tensor, teacher_map: &Tensor, p: f64) -> Result<Tensor> {
    const F: &str = "at_loss";
    if !(p.is_finite() && p > 0.0) {
        return Err(Error::msg(format!(
            "{F}: p must be finite and > 0, got {p}"
        )));
    }
    let (s, t) = (student_map, teacher_map);
    if s.rank() < 3 || t.rank() != s.rank() {
        return Err(shape_err(format!(
            "{F}: expected [B, C, H, W] maps of equal rank, got student {:?} and teacher {:?}",
            s.dims(),
            t.dims()
        )));
    }
    if s.dim(0)? != t.dim(0)? || s.dims()[2..] != t.dims()[2..] {
        return Err(shape_err(format!(
            "{F}: student map {:?} and teacher map {:?} must have the same batch size and spatial size \
             (only channels may differ)",
            s.dims(),
            t.dims()
        )));
    }
    Ok((attention_map(s, p)? - attention_map(t, p)?)?
        .sqr()?
        .mean_all()?)
}

/// Row-normalised batch similarity `normalize(f · fᵀ)` of `[B, D]` features.
fn similarity(f: &Tensor) -> Result<Tensor> {
    let g = f.matmul(&f.t()?)?;
    l2_normalize(&g, 1)
}

/// Similarity-preserving KD (Tung & Mori, ICCV 2019): `‖G_s − G_t‖_F² / B²`, where `G = normalize(f·fᵀ)`
/// (rows L2-normalised) over features flattened to `[B, *]`. Feature widths may differ; batches must match.
pub fn sp_loss(student_feat: &Tensor, teacher_feat: &Tensor) -> Result<Tensor> {
    const F: &str = "sp_loss";
    check_batch(F, student_feat, teacher_feat)?;
    let s = flat_rows(F, student_feat)?;
    let t = flat_rows(F, teacher_feat)?;
    let b = s.dim(0)? as f64;
    Ok((similarity(&s)? - similarity(&t)?)?
        .sqr()?
        .sum_all()?
        .affine(1.0 / (b * b), 0.0)?)
}

/// RKD's `pdist`: `[N, N]` Euclidean distances via `‖a‖² + ‖b‖² − 2a·b`, clamped at 1e-12 before the
/// square root, with a zero diagonal (and no gradient through it).
fn pdist(e: &Tensor) -> Result<Tensor> {
    let n = e.dim(0)?;
    let sq = e.sqr()?.sum_keepdim(1)?;
    let prod = e.matmul(&e.t()?)?;
    let d2 = sq
        .broadcast_add(&sq.t()?)?
        .sub(&prod.affine(2.0, 0.0)?)?
        .maximum(NORM_EPS)?;
    let off_diag = Tensor::eye(n, e.dtype(), e.device())?.affine(-1.0, 1.0)?;
    Ok(d2.sqrt()?.mul(&off_diag)?)
}

/// Distances normalised by their mean over the `N(N−1)` off-diagonal pairs.
fn normalized_pdist(e: &Tensor) -> Result<Tensor> {
    let n = e.dim(0)? as f64;
    let d = pdist(e)?;
    let mean = d.sum_all()?.affine(1.0 / (n * (n - 1.0)), 0.0)?;
    Ok(d.broadcast_div(&mean)?)
}

/// A zero scalar still attached to `x`'s graph (losses that are undefined for a single sample).
pub fn attached_zero(x: &Tensor) -> Result<Tensor> {
    Ok(x.sum_all()?.affine(0.0, 0.0)?)
}

/// RKD distance loss (Park et al., CVPR 2019): smooth-L1 (mean over all `N²` entries) between the student's
/// and teacher's pairwise-distance matrices, each normalised by its mean off-diagonal distance.
///
/// Inputs are `[N, *]` (flattened to `[N, D]`; widths may differ). A batch of one sample has no pairs: the
/// loss is then 0.
pub fn rkd_distance_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    const F: &str = "rkd_distance_loss";
    check_batch(F, student, teacher)?;
    let s = flat_rows(F, student)?;
    let t = flat_rows(F, teacher)?;
    if s.dim(0)? < 2 {
        return attached_zero(&s);
    }
    smooth_l1(&normalized_pdist(&s)?, &normalized_pdist(&t)?)
}

/// `[N, N, N]` cosines `⟨e_ij, e_ik⟩` of the unit difference vectors `e_ij = normalize(x_j − x_i)`, from the
/// `N × N` Gram matrix `G` of the batch-centred rows (angles of differences do not move with the centre):
/// `⟨x_j − x_i, x_k − x_i⟩ = G_jk − G_ij − G_ik + G_ii` and `|x_j − x_i|² = G_ii + G_jj − 2 G_ij`. That is
/// `O(N³ + N²·D)` instead of forming `[N, N, D]` differences and an `N³·D` product. A pair whose squared
/// distance is below `100 ε` (the dtype's epsilon) of `G_ii + G_jj` counts as a zero difference, whose unit
/// vector `F.normalize` makes zero: its cosines are 0, as in the authors' code.
fn rkd_angles(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let x = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let g = x.matmul(&x.t()?)?;
    let r = x.sqr()?.sum_keepdim(1)?; // G_ii, [N, 1]
    let sum_r = r.broadcast_add(&r.t()?)?;
    let sq = (&sum_r - g.affine(2.0, 0.0)?)?.relu()?;
    let eps = match x.dtype() {
        DType::F64 => f64::EPSILON,
        _ => f32::EPSILON as f64,
    };
    let valid = sq
        .gt(&sum_r.affine(100.0 * eps, 0.0)?)?
        .to_dtype(x.dtype())?;
    // 1 where the pair is a zero difference, so the division stays finite; its cosines are masked to 0
    let m = (sq.maximum(NORM_EPS * NORM_EPS)?.sqrt()? * &valid)?
        .broadcast_add(&valid.affine(-1.0, 1.0)?)?;
    let num = g
        .unsqueeze(0)?
        .broadcast_sub(&g.unsqueeze(2)?)?
        .broadcast_sub(&g.unsqueeze(1)?)?
        .broadcast_add(&r.reshape((n, 1, 1))?)?;
    let den = m.unsqueeze(2)?.broadcast_mul(&m.unsqueeze(1)?)?;
    let mask = valid.unsqueeze(2)?.broadcast_mul(&valid.unsqueeze(1)?)?;
    Ok((num / den)?.mul(&mask)?)
}

/// RKD angle loss (Park et al., CVPR 2019): smooth-L1 (mean over all `N³` triplets) between the student's
/// and teacher's angle tensors `cos ∠(x_j − x_i, x_k − x_i)` (zero where a difference vector is zero).
///
/// Inputs are `[N, *]` (flattened to `[N, D]`; widths may differ). Memory is `O(N³)`.
pub fn rkd_angle_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    const F: &str = "rkd_angle_loss";
    check_batch(F, student, teacher)?;
    let s = flat_rows(F, student)?;
    let t = flat_rows(F, teacher)?;
    smooth_l1(&rkd_angles(&s)?, &rkd_angles(&t)?)
}

#[cfg(test)]
mod tests;
