//! The distillation loss library.
//!
//! Losses are plain functions first (`kd_loss(student_logits, teacher_logits, t)`), wrapped in small structs
//! implementing [`DistillLoss`] where configuration or trainable adapters are needed. A recipe names losses
//! by their [`LossSpec::name`]; [`build_core_loss`] turns a spec into a loss after a dry run has produced the
//! student's and teacher's outputs (so adapters are sized from the declared feature shapes).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::{Batch, Error, Feature, FeatureKind, Outputs, Result};

/// A distillation loss term: compares the student's outputs with the (detached) teacher's.
pub trait DistillLoss: Send + Sync {
    /// The recipe name of this loss (e.g. `"kd"`).
    fn name(&self) -> &str;
    /// The (unweighted) scalar loss for one batch.
    fn compute(&self, student: &Outputs, teacher: &Outputs, batch: &Batch) -> Result<Tensor>;
    /// Whether the loss reads intermediate features (if not, the teacher's logits may be cached).
    fn uses_features(&self) -> bool {
        false
    }
    /// Whether the loss reads the teacher at all (hard-label CE does not).
    fn uses_teacher(&self) -> bool {
        true
    }
    /// Trainable parameters owned by the loss (adapters / regressors), trained with the student.
    fn varmap(&self) -> Option<&VarMap> {
        None
    }
}

fn one() -> f64 {
    1.0
}

/// One loss term of a recipe, e.g. `{ name = "kd", weight = 0.9, temperature = 4.0 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// Loss name: one of [`CORE_LOSSES`] or a plugin's domain loss.
    pub name: String,
    /// Weight of this term in the total loss.
    #[serde(default = "one")]
    pub weight: f64,
    /// Softmax temperature T (logit losses).
    pub temperature: Option<f64>,
    /// DKD's target-class weight α.
    pub alpha: Option<f64>,
    /// DKD's non-target-class weight β.
    pub beta: Option<f64>,
    /// Student feature tap (feature losses).
    pub student_feature: Option<String>,
    /// Teacher feature tap (feature losses).
    pub teacher_feature: Option<String>,
    /// Exponent p of attention transfer.
    pub p: Option<f64>,
    /// RKD distance-term weight.
    pub distance_weight: Option<f64>,
    /// RKD angle-term weight.
    pub angle_weight: Option<f64>,
    /// Free-form parameters for plugin losses.
    pub params: Option<toml::Table>,
}

impl LossSpec {
    /// A spec with only a name and weight 1.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            weight: 1.0,
            temperature: None,
            alpha: None,
            beta: None,
            student_feature: None,
            teacher_feature: None,
            p: None,
            distance_weight: None,
            angle_weight: None,
            params: None,
        }
    }
}

/// Names of the losses distill-core provides.
pub const CORE_LOSSES: &[&str] = &["kd", "ce", "dkd", "hint", "at", "sp", "rkd"];

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
fn l2_normalize(x: &Tensor, dim: usize) -> Result<Tensor> {
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
    if let Some(fused) = distill_nn::ops::kd_kl(&s, &tt, t)? {
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
    if let Some(fused) = distill_nn::ops::cross_entropy(&rows, &ids)? {
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
fn attached_zero(x: &Tensor) -> Result<Tensor> {
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

/// `[N, N, N]` cosines `⟨e_ij, e_ik⟩` of the unit difference vectors `e_ij = normalize(x_j − x_i)`.
fn rkd_angles(x: &Tensor) -> Result<Tensor> {
    let diff = x.unsqueeze(0)?.broadcast_sub(&x.unsqueeze(1)?)?;
    let e = l2_normalize(&diff, 2)?;
    Ok(e.matmul(&e.transpose(1, 2)?.contiguous()?)?)
}

/// RKD angle loss (Park et al., CVPR 2019): smooth-L1 (mean over all `N³` triplets) between the student's
/// and teacher's angle tensors `cos ∠(x_j − x_i, x_k − x_i)` (zero where a difference vector is zero).
///
/// Inputs are `[N, *]` (flattened to `[N, D]`; widths may differ). Memory is `O(N² · D)`.
pub fn rkd_angle_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    const F: &str = "rkd_angle_loss";
    check_batch(F, student, teacher)?;
    let s = flat_rows(F, student)?;
    let t = flat_rows(F, teacher)?;
    smooth_l1(&rkd_angles(&s)?, &rkd_angles(&t)?)
}

// ---------------------------------------------------------------------------------------------------------
// Loss structs
// ---------------------------------------------------------------------------------------------------------

/// Hinton KD on the logits ([`kd_loss`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Kd {
    /// Softmax temperature T.
    pub t: f64,
}

impl DistillLoss for Kd {
    fn name(&self) -> &str {
        "kd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        kd_loss(&student.logits, &teacher.logits, self.t)
    }
}

/// Hard-label cross-entropy of the student ([`ce_loss`]); does not read the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ce;

impl DistillLoss for Ce {
    fn name(&self) -> &str {
        "ce"
    }
    fn compute(&self, student: &Outputs, _teacher: &Outputs, batch: &Batch) -> Result<Tensor> {
        ce_loss(&student.logits, &batch.targets)
    }
    fn uses_teacher(&self) -> bool {
        false
    }
}

/// Decoupled KD on the logits ([`dkd_loss`]), using the batch's targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Dkd {
    /// Target-class (TCKD) weight α.
    pub alpha: f64,
    /// Non-target-class (NCKD) weight β.
    pub beta: f64,
    /// Softmax temperature T.
    pub t: f64,
}

impl DistillLoss for Dkd {
    fn name(&self) -> &str {
        "dkd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, batch: &Batch) -> Result<Tensor> {
        dkd_loss(
            &student.logits,
            &teacher.logits,
            &batch.targets,
            self.alpha,
            self.beta,
            self.t,
        )
    }
}

/// The learnable regressor of a hint: a linear map over the last dimension or a 1×1 convolution over
/// channels.
enum Adapter {
    Linear(candle_nn::Linear),
    Conv(candle_nn::Conv2d),
}

/// Which dimension holds a feature's width (the dimension a hint adapter maps).
pub fn feature_width_dim(kind: FeatureKind) -> usize {
    match kind {
        // channels (maps) / heads (attention) / the vector width (vectors, nodes)
        FeatureKind::Map | FeatureKind::Attention | FeatureKind::Vector | FeatureKind::Nodes => 1,
        FeatureKind::Sequence => 2,
    }
}

/// FitNets hint ([`hint_loss`]) between a student and a teacher feature, through a learnable adapter
/// (student width → teacher width) when the widths differ.
///
/// The adapter is a `Linear` over the last dimension for [`FeatureKind::Vector`], [`FeatureKind::Sequence`]
/// and [`FeatureKind::Nodes`] features, and a 1×1 `conv2d` over channels for [`FeatureKind::Map`] (and
/// [`FeatureKind::Attention`], over heads). Its parameters (`adapter.weight`, `adapter.bias`, f32) live in the
/// loss's own [`VarMap`], returned by [`DistillLoss::varmap`] so the trainer optimises them with the student.
pub struct Hint {
    /// Student feature tap.
    pub student_feature: String,
    /// Teacher feature tap.
    pub teacher_feature: String,
    adapter: Option<Adapter>,
    varmap: Option<VarMap>,
}

impl std::fmt::Debug for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hint")
            .field("student_feature", &self.student_feature)
            .field("teacher_feature", &self.teacher_feature)
            .field("adapter", &self.has_adapter())
            .finish()
    }
}

impl Hint {
    /// A hint for features of layout `kind` and widths `student_width` / `teacher_width` (see
    /// [`feature_width_dim`]). An adapter is created, initialised from `seed` on `device`, only when the
    /// widths differ.
    pub fn new(
        student_feature: &str,
        teacher_feature: &str,
        kind: FeatureKind,
        student_width: usize,
        teacher_width: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (adapter, varmap) = if student_width == teacher_width {
            (None, None)
        } else {
            let varmap = VarMap::new();
            let vb = distill_nn::init::seeded_var_builder(&varmap, seed, device).pp("adapter");
            let adapter = match kind {
                FeatureKind::Map | FeatureKind::Attention => Adapter::Conv(candle_nn::conv2d(
                    student_width,
                    teacher_width,
                    1,
                    Default::default(),
                    vb,
                )?),
                FeatureKind::Vector | FeatureKind::Sequence | FeatureKind::Nodes => {
                    Adapter::Linear(candle_nn::linear(student_width, teacher_width, vb)?)
                }
            };
            (Some(adapter), Some(varmap))
        };
        Ok(Self {
            student_feature: student_feature.to_string(),
            teacher_feature: teacher_feature.to_string(),
            adapter,
            varmap,
        })
    }

    /// Whether the widths differ, so a learnable adapter maps the student feature.
    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// The student feature mapped to the teacher's width (unchanged without an adapter).
    pub fn adapt(&self, student_feat: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        Ok(match &self.adapter {
            None => student_feat.clone(),
            Some(Adapter::Linear(l)) => l.forward(student_feat)?,
            Some(Adapter::Conv(c)) => c.forward(student_feat)?,
        })
    }
}

impl DistillLoss for Hint {
    fn name(&self) -> &str {
        "hint"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let s = &student.feature(&self.student_feature)?.tensor;
        let t = &teacher.feature(&self.teacher_feature)?.tensor;
        let adapted = self.adapt(s)?;
        hint_loss(&adapted, t).map_err(|e| {
            shape_err(format!(
                "loss `hint`: student feature `{}` {:?} (adapted {:?}) vs teacher feature `{}` {:?}: {e}",
                self.student_feature,
                s.dims(),
                adapted.dims(),
                self.teacher_feature,
                t.dims()
            ))
        })
    }
    fn uses_features(&self) -> bool {
        true
    }
    fn varmap(&self) -> Option<&VarMap> {
        self.varmap.as_ref()
    }
}

/// Attention transfer ([`at_loss`]) between two feature maps.
#[derive(Debug, Clone, PartialEq)]
pub struct At {
    /// Student feature tap (`[B, C, H, W]`).
    pub student_feature: String,
    /// Teacher feature tap (`[B, C', H, W]`).
    pub teacher_feature: String,
    /// Exponent p (default 2).
    pub p: f64,
}

impl DistillLoss for At {
    fn name(&self) -> &str {
        "at"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        at_loss(
            &student.feature(&self.student_feature)?.tensor,
            &teacher.feature(&self.teacher_feature)?.tensor,
            self.p,
        )
    }
    fn uses_features(&self) -> bool {
        true
    }
}

/// Similarity-preserving KD ([`sp_loss`]) between two features.
#[derive(Debug, Clone, PartialEq)]
pub struct Sp {
    /// Student feature tap.
    pub student_feature: String,
    /// Teacher feature tap.
    pub teacher_feature: String,
}

impl DistillLoss for Sp {
    fn name(&self) -> &str {
        "sp"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        sp_loss(
            &student.feature(&self.student_feature)?.tensor,
            &teacher.feature(&self.teacher_feature)?.tensor,
        )
    }
    fn uses_features(&self) -> bool {
        true
    }
}

/// Relational KD: `distance_weight · rkd_distance_loss + angle_weight · rkd_angle_loss` on a pair of
/// features, or on the logits when no feature names are given.
#[derive(Debug, Clone, PartialEq)]
pub struct Rkd {
    /// Weight of the distance term (default 25).
    pub distance_weight: f64,
    /// Weight of the angle term (default 50).
    pub angle_weight: f64,
    /// Student feature tap; `None` (with `teacher_feature` `None`) uses the logits.
    pub student_feature: Option<String>,
    /// Teacher feature tap; `None` (with `student_feature` `None`) uses the logits.
    pub teacher_feature: Option<String>,
}

impl Rkd {
    fn inputs<'a>(
        &self,
        student: &'a Outputs,
        teacher: &'a Outputs,
    ) -> Result<(&'a Tensor, &'a Tensor)> {
        Ok(match (&self.student_feature, &self.teacher_feature) {
            (Some(s), Some(t)) => (&student.feature(s)?.tensor, &teacher.feature(t)?.tensor),
            _ => (&student.logits, &teacher.logits),
        })
    }
}

impl DistillLoss for Rkd {
    fn name(&self) -> &str {
        "rkd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let (s, t) = self.inputs(student, teacher)?;
        let mut total: Option<Tensor> = None;
        if self.distance_weight != 0.0 {
            total = Some(rkd_distance_loss(s, t)?.affine(self.distance_weight, 0.0)?);
        }
        if self.angle_weight != 0.0 {
            let a = rkd_angle_loss(s, t)?.affine(self.angle_weight, 0.0)?;
            total = Some(match total {
                Some(d) => (d + a)?,
                None => a,
            });
        }
        match total {
            Some(t) => Ok(t),
            None => attached_zero(s),
        }
    }
    fn uses_features(&self) -> bool {
        self.student_feature.is_some()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Building losses from specs
// ---------------------------------------------------------------------------------------------------------

/// Default temperature of `kd` and `dkd`.
pub const DEFAULT_TEMPERATURE: f64 = 4.0;
/// Default DKD α (mdistiller's CIFAR-100 setting).
pub const DEFAULT_DKD_ALPHA: f64 = 1.0;
/// Default DKD β (mdistiller's CIFAR-100 setting).
pub const DEFAULT_DKD_BETA: f64 = 8.0;
/// Default attention-transfer exponent.
pub const DEFAULT_AT_P: f64 = 2.0;
/// Default RKD distance weight (Park et al.).
pub const DEFAULT_RKD_DISTANCE_WEIGHT: f64 = 25.0;
/// Default RKD angle weight (Park et al.).
pub const DEFAULT_RKD_ANGLE_WEIGHT: f64 = 50.0;

/// The spec fields (besides `name` and `weight`) each core loss accepts.
fn allowed_fields(name: &str) -> &'static [&'static str] {
    match name {
        "kd" => &["temperature"],
        "ce" => &[],
        "dkd" => &["temperature", "alpha", "beta"],
        "hint" | "sp" => &["student_feature", "teacher_feature"],
        "at" => &["student_feature", "teacher_feature", "p"],
        "rkd" => &[
            "student_feature",
            "teacher_feature",
            "distance_weight",
            "angle_weight",
        ],
        _ => &[],
    }
}

struct SpecCtx<'a> {
    spec: &'a LossSpec,
    student: &'a Outputs,
    teacher: &'a Outputs,
}

impl<'a> SpecCtx<'a> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn config(&self, msg: String) -> Error {
        Error::config(format!("loss `{}`", self.spec.name), msg)
    }

    fn shape(&self, msg: String) -> Error {
        Error::Shape(format!("loss `{}`: {msg}", self.spec.name))
    }

    fn check_fields(&self) -> Result<()> {
        let s = self.spec;
        let set = [
            ("temperature", s.temperature.is_some()),
            ("alpha", s.alpha.is_some()),
            ("beta", s.beta.is_some()),
            ("student_feature", s.student_feature.is_some()),
            ("teacher_feature", s.teacher_feature.is_some()),
            ("p", s.p.is_some()),
            ("distance_weight", s.distance_weight.is_some()),
            ("angle_weight", s.angle_weight.is_some()),
            ("params", s.params.is_some()),
        ];
        let allowed = allowed_fields(self.name());
        for (field, is_set) in set {
            if is_set && !allowed.contains(&field) {
                let takes = if allowed.is_empty() {
                    "no parameters".to_string()
                } else {
                    allowed.join(", ")
                };
                return Err(self.config(format!(
                    "`{field}` does not apply to loss `{}` (it takes: {takes})",
                    self.name()
                )));
            }
        }
        Ok(())
    }

    /// A positive finite number (or `default` when unset).
    fn positive(&self, field: &str, value: Option<f64>, default: f64) -> Result<f64> {
        let v = value.unwrap_or(default);
        if !(v.is_finite() && v > 0.0) {
            return Err(self.config(format!("`{field}` must be finite and > 0, got {v}")));
        }
        Ok(v)
    }

    /// A non-negative finite number (or `default` when unset).
    fn non_negative(&self, field: &str, value: Option<f64>, default: f64) -> Result<f64> {
        let v = value.unwrap_or(default);
        if !(v.is_finite() && v >= 0.0) {
            return Err(self.config(format!("`{field}` must be finite and >= 0, got {v}")));
        }
        Ok(v)
    }

    fn lookup(&self, side: &str, outputs: &'a Outputs, feature: &str) -> Result<&'a Feature> {
        outputs.features.get(feature).ok_or_else(|| {
            let available = if outputs.features.is_empty() {
                "it exposes no features".to_string()
            } else {
                let names = outputs.features.keys().cloned().collect::<Vec<_>>();
                format!("available: {}", names.join(", "))
            };
            self.config(format!(
                "{side}_feature = \"{feature}\": the {side} has no feature `{feature}` ({available})"
            ))
        })
    }

    /// The required student/teacher feature pair.
    fn features(&self) -> Result<(&'a str, &'a Feature, &'a str, &'a Feature)> {
        let s = self.spec;
        let (Some(sn), Some(tn)) = (&s.student_feature, &s.teacher_feature) else {
            let missing = if s.student_feature.is_none() {
                "student_feature"
            } else {
                "teacher_feature"
            };
            return Err(self.config(format!(
                "`{missing}` is required (loss `{}` needs both `student_feature` and `teacher_feature`)",
                self.name()
            )));
        };
        let sf = self.lookup("student", self.student, sn)?;
        let tf = self.lookup("teacher", self.teacher, tn)?;
        if sf.tensor.rank() == 0
            || tf.tensor.rank() == 0
            || sf.tensor.dim(0)? != tf.tensor.dim(0)?
        {
            return Err(self.shape(format!(
                "student feature `{sn}` {:?} and teacher feature `{tn}` {:?} have different batch (first) dimensions",
                sf.tensor.dims(),
                tf.tensor.dims()
            )));
        }
        Ok((sn, sf, tn, tf))
    }

    fn same_kind(&self, sn: &str, sf: &Feature, tn: &str, tf: &Feature) -> Result<()> {
        if sf.kind != tf.kind {
            return Err(self.shape(format!(
                "student feature `{sn}` is a {:?} {:?} but teacher feature `{tn}` is a {:?} {:?}",
                sf.kind,
                sf.tensor.dims(),
                tf.kind,
                tf.tensor.dims()
            )));
        }
        Ok(())
    }

    /// Student and teacher logits of the same shape, rank >= 2, with at least `min_classes` classes.
    fn logits(&self, min_classes: usize) -> Result<()> {
        let (s, t) = (&self.student.logits, &self.teacher.logits);
        if s.dims() != t.dims() || s.rank() < 2 {
            return Err(self.shape(format!(
                "student logits {:?} and teacher logits {:?} must have the same [batch, .., classes] shape",
                s.dims(),
                t.dims()
            )));
        }
        let c = s.dim(s.rank() - 1)?;
        if c < min_classes {
            return Err(self.shape(format!(
                "needs at least {min_classes} classes, the logits have shape {:?}",
                s.dims()
            )));
        }
        Ok(())
    }
}

/// Builds the core loss a spec names, checking it against a dry run's student and teacher outputs.
///
/// Returns `Ok(None)` when `spec.name` is not one of [`CORE_LOSSES`] (the caller then asks the plugins).
/// Otherwise checks that only the fields the loss takes are set, that numbers are in range (temperature
/// finite and > 0, …), that the named features exist (the error lists those available) and that their kinds
/// and shapes fit together, and builds the loss; a hint adapter is sized from the dry-run shapes and
/// initialised from `seed`. Defaults: `kd`/`dkd` temperature [`DEFAULT_TEMPERATURE`], DKD α/β
/// [`DEFAULT_DKD_ALPHA`]/[`DEFAULT_DKD_BETA`], AT `p` [`DEFAULT_AT_P`], RKD weights
/// [`DEFAULT_RKD_DISTANCE_WEIGHT`]/[`DEFAULT_RKD_ANGLE_WEIGHT`]. `spec.weight` is not applied here.
pub fn build_core_loss(
    spec: &LossSpec,
    student: &Outputs,
    teacher: &Outputs,
    seed: u64,
) -> Result<Option<Box<dyn DistillLoss>>> {
    if !CORE_LOSSES.contains(&spec.name.as_str()) {
        return Ok(None);
    }
    let cx = SpecCtx {
        spec,
        student,
        teacher,
    };
    cx.check_fields()?;
    let loss: Box<dyn DistillLoss> = match spec.name.as_str() {
        "kd" => {
            let t = cx.positive("temperature", spec.temperature, DEFAULT_TEMPERATURE)?;
            cx.logits(1)?;
            Box::new(Kd { t })
        }
        "ce" => {
            let l = &student.logits;
            if l.rank() < 2 {
                return Err(cx.shape(format!(
                    "student logits must be [batch, .., classes], got {:?}",
                    l.dims()
                )));
            }
            Box::new(Ce)
        }
        "dkd" => {
            let t = cx.positive("temperature", spec.temperature, DEFAULT_TEMPERATURE)?;
            let alpha = cx.non_negative("alpha", spec.alpha, DEFAULT_DKD_ALPHA)?;
            let beta = cx.non_negative("beta", spec.beta, DEFAULT_DKD_BETA)?;
            cx.logits(2)?;
            Box::new(Dkd { alpha, beta, t })
        }
        "hint" => {
            let (sn, sf, tn, tf) = cx.features()?;
            cx.same_kind(sn, sf, tn, tf)?;
            let (sd, td) = (sf.tensor.dims(), tf.tensor.dims());
            let wd = feature_width_dim(sf.kind);
            let other_dims_match =
                sd.len() == td.len() && (0..sd.len()).all(|i| i == wd || sd[i] == td[i]);
            if !other_dims_match {
                return Err(cx.shape(format!(
                    "student feature `{sn}` {sd:?} and teacher feature `{tn}` {td:?} ({:?}) may differ only in \
                     dimension {wd} (the width the adapter maps)",
                    sf.kind
                )));
            }
            Box::new(Hint::new(
                sn,
                tn,
                sf.kind,
                sd[wd],
                td[wd],
                seed,
                student.logits.device(),
            )?)
        }
        "at" => {
            let p = cx.positive("p", spec.p, DEFAULT_AT_P)?;
            let (sn, sf, tn, tf) = cx.features()?;
            for (side, name, f) in [("student", sn, sf), ("teacher", tn, tf)] {
                if !matches!(f.kind, FeatureKind::Map | FeatureKind::Attention) {
                    return Err(cx.shape(format!(
                        "{side} feature `{name}` is a {:?} {:?}; attention transfer needs a Map [B, C, H, W] \
                         (or Attention) feature",
                        f.kind,
                        f.tensor.dims()
                    )));
                }
            }
            let (sd, td) = (sf.tensor.dims(), tf.tensor.dims());
            if sd.len() != td.len() || sd[2..] != td[2..] {
                return Err(cx.shape(format!(
                    "student feature `{sn}` {sd:?} and teacher feature `{tn}` {td:?} have different spatial \
                     sizes {:?} vs {:?} (attention transfer compares maps position by position)",
                    &sd[2.min(sd.len())..],
                    &td[2.min(td.len())..]
                )));
            }
            Box::new(At {
                student_feature: sn.to_string(),
                teacher_feature: tn.to_string(),
                p,
            })
        }
        "sp" => {
            let (sn, _, tn, _) = cx.features()?;
            Box::new(Sp {
                student_feature: sn.to_string(),
                teacher_feature: tn.to_string(),
            })
        }
        "rkd" => {
            let distance_weight = cx.non_negative(
                "distance_weight",
                spec.distance_weight,
                DEFAULT_RKD_DISTANCE_WEIGHT,
            )?;
            let angle_weight =
                cx.non_negative("angle_weight", spec.angle_weight, DEFAULT_RKD_ANGLE_WEIGHT)?;
            if distance_weight == 0.0 && angle_weight == 0.0 {
                return Err(cx.config(
                    "`distance_weight` and `angle_weight` are both 0: the loss would be identically zero"
                        .to_string(),
                ));
            }
            let (student_feature, teacher_feature) = if spec.student_feature.is_none()
                && spec.teacher_feature.is_none()
            {
                let (s, t) = (&student.logits, &teacher.logits);
                if s.rank() == 0 || t.rank() == 0 || s.dim(0)? != t.dim(0)? {
                    return Err(cx.shape(format!(
                            "student logits {:?} and teacher logits {:?} have different batch (first) dimensions",
                            s.dims(),
                            t.dims()
                        )));
                }
                (None, None)
            } else if spec.student_feature.is_none() || spec.teacher_feature.is_none() {
                return Err(cx.config(
                        "set both `student_feature` and `teacher_feature`, or neither (to use the logits)"
                            .to_string(),
                    ));
            } else {
                let (sn, _, tn, _) = cx.features()?;
                (Some(sn.to_string()), Some(tn.to_string()))
            };
            Box::new(Rkd {
                distance_weight,
                angle_weight,
                student_feature,
                teacher_feature,
            })
        }
        other => {
            return Err(Error::msg(format!(
                "loss `{other}` is listed in CORE_LOSSES but has no builder"
            )))
        }
    };
    Ok(Some(loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    fn val(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    fn zeros(dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
    }

    fn outputs(features: &[(&str, FeatureKind, &[usize])]) -> Outputs {
        let mut o = Outputs::logits(zeros(&[4, 10]));
        for (name, kind, dims) in features {
            o = o.with_feature(name, *kind, zeros(dims)).unwrap();
        }
        o
    }

    fn spec(name: &str, sf: Option<&str>, tf: Option<&str>) -> LossSpec {
        let mut s = LossSpec::named(name);
        s.student_feature = sf.map(str::to_string);
        s.teacher_feature = tf.map(str::to_string);
        s
    }

    fn build_err(spec: &LossSpec, s: &Outputs, t: &Outputs) -> String {
        match build_core_loss(spec, s, t, 0) {
            Ok(_) => panic!("spec {spec:?} should be rejected"),
            Err(e) => {
                eprintln!("{}: {e}", spec.name);
                e.to_string()
            }
        }
    }

    #[test]
    fn kd_of_identical_logits_is_zero() -> Result<()> {
        let x = Tensor::new(
            &[[1.0f32, -2.0, 0.5, 3.0], [0.0, 0.0, 10.0, -10.0]],
            &Device::Cpu,
        )?;
        for t in [0.5, 1.0, 4.0, 20.0] {
            assert!(val(&kd_loss(&x, &x, t)?).abs() < 1e-6, "T = {t}");
        }
        // and it is positive otherwise
        assert!(val(&kd_loss(&x, &x.affine(0.5, 0.0)?, 4.0)?) > 1e-4);
        Ok(())
    }

    /// Two classes: softmax(z/T) = (1 − σ(Δ/T), σ(Δ/T)) with Δ = z₁ − z₀, so the loss has a closed form; for
    /// large T it tends to Δ-difference² / 8 because of the T² factor (without it, the loss would vanish as 1/T²).
    #[test]
    fn kd_two_class_closed_form_and_t_squared_scaling() -> Result<()> {
        let (ds, dt) = (0.7f64, 2.3f64);
        let s = t2(&[[0.0, ds as f32], [1.0, 1.0 - ds as f32]]);
        let t = t2(&[[0.0, dt as f32], [1.0, 1.0 - dt as f32]]);
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let kl2 = |p: f64, q: f64| p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        for temp in [1.0, 2.0, 4.0, 8.0] {
            // both rows give the same KL (the second is the first mirrored)
            let want = temp * temp * kl2(sigmoid(dt / temp), sigmoid(ds / temp));
            let got = val(&kd_loss(&s, &t, temp)?);
            assert!(
                (got - want).abs() < 1e-5 * want.max(1.0),
                "T={temp}: {got} vs {want}"
            );
        }
        // the limit needs f64: T²·KL is a difference of nearly equal terms of size ~1/T² there
        let limit = (dt - ds).powi(2) / 8.0;
        let (s, t) = (s.to_dtype(DType::F64)?, t.to_dtype(DType::F64)?);
        let got = val(&kd_loss(&s, &t, 200.0)?);
        assert!(
            (got - limit).abs() < 1e-3 * limit,
            "T²·KL → Δ²/8: {got} vs {limit}"
        );
        Ok(())
    }

    #[test]
    fn ce_matches_closed_form_and_checks_targets() -> Result<()> {
        let logits = t2(&[[0.0, 0.0], [2.0, 0.0]]);
        let targets = Tensor::new(&[1u32, 0], &Device::Cpu)?;
        let want = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
        assert!((val(&ce_loss(&logits, &targets)?) - want).abs() < 1e-6);
        let bad = Tensor::new(&[1u32, 2], &Device::Cpu)?;
        assert!(ce_loss(&logits, &bad)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        let short = Tensor::new(&[1u32], &Device::Cpu)?;
        assert!(ce_loss(&logits, &short).is_err());
        Ok(())
    }

    #[test]
    fn dkd_of_identical_logits_is_zero_and_confident_students_stay_finite() -> Result<()> {
        let x = Tensor::new(&[[1.0f32, -2.0, 0.5], [0.0, 3.0, -1.0]], &Device::Cpu)?;
        let y = Tensor::new(&[2u32, 1], &Device::Cpu)?;
        assert!(val(&dkd_loss(&x, &x, &y, 1.0, 8.0, 4.0)?).abs() < 1e-5);
        // p(target) rounds to 1 in f32: mdistiller's log(Σ non-target p) would be log 0
        let s = Tensor::new(&[[0.0f32, 0.0, 200.0], [0.0, 150.0, 0.0]], &Device::Cpu)?;
        let l = val(&dkd_loss(&s, &x, &y, 1.0, 8.0, 1.0)?);
        assert!(l.is_finite() && l > 0.0, "{l}");
        Ok(())
    }

    #[test]
    fn shape_mismatches_are_errors_naming_both_shapes() {
        let a = zeros(&[4, 10]);
        let b = zeros(&[4, 9]);
        let e = kd_loss(&a, &b, 4.0).unwrap_err().to_string();
        assert!(e.contains("[4, 10]") && e.contains("[4, 9]"), "{e}");
        let e = at_loss(&zeros(&[2, 3, 4, 4]), &zeros(&[2, 3, 8, 8]), 2.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[2, 3, 4, 4]") && e.contains("[2, 3, 8, 8]"),
            "{e}"
        );
        assert!(hint_loss(&a, &b).is_err());
        assert!(sp_loss(&zeros(&[4, 3]), &zeros(&[5, 3])).is_err());
        assert!(rkd_distance_loss(&zeros(&[4, 3]), &zeros(&[5, 3])).is_err());
        assert!(kd_loss(&a, &a, 0.0).is_err());
        assert!(at_loss(&zeros(&[2, 3, 4, 4]), &zeros(&[2, 3, 4, 4]), -1.0).is_err());
    }

    #[test]
    fn non_core_names_are_left_to_plugins() {
        let o = outputs(&[]);
        assert!(build_core_loss(&LossSpec::named("crf_kd"), &o, &o, 0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn every_core_loss_builds_with_defaults() {
        let s = outputs(&[("feat", FeatureKind::Map, &[4, 3, 4, 4])]);
        let t = outputs(&[("feat", FeatureKind::Map, &[4, 6, 4, 4])]);
        for name in CORE_LOSSES {
            let sp = if matches!(*name, "hint" | "at" | "sp") {
                spec(name, Some("feat"), Some("feat"))
            } else {
                LossSpec::named(name)
            };
            let loss = build_core_loss(&sp, &s, &t, 0).unwrap().unwrap();
            assert_eq!(loss.name(), *name);
            assert_eq!(loss.uses_teacher(), *name != "ce");
            assert_eq!(loss.uses_features(), matches!(*name, "hint" | "at" | "sp"));
        }
    }

    #[test]
    fn unknown_feature_names_list_the_available_ones() {
        let s = outputs(&[
            ("hidden1", FeatureKind::Vector, &[4, 8]),
            ("hidden2", FeatureKind::Vector, &[4, 8]),
        ]);
        let t = outputs(&[("penultimate", FeatureKind::Vector, &[4, 16])]);
        let e = build_err(&spec("hint", Some("hiden1"), Some("penultimate")), &s, &t);
        assert!(
            e.contains("hint") && e.contains("hiden1") && e.contains("hidden1, hidden2"),
            "{e}"
        );
        let e = build_err(&spec("sp", Some("hidden1"), Some("layer3")), &s, &t);
        assert!(
            e.contains("teacher") && e.contains("layer3") && e.contains("penultimate"),
            "{e}"
        );
        let e = build_err(&spec("at", Some("x"), Some("y")), &outputs(&[]), &t);
        assert!(e.contains("no features"), "{e}");
        let e = build_err(&spec("hint", Some("hidden1"), None), &s, &t);
        assert!(
            e.contains("teacher_feature") && e.contains("required"),
            "{e}"
        );
        let e = build_err(&spec("rkd", Some("hidden1"), None), &s, &t);
        assert!(e.contains("neither"), "{e}");
    }

    #[test]
    fn bad_temperatures_and_weights_are_rejected() {
        let o = outputs(&[]);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            for name in ["kd", "dkd"] {
                let mut s = LossSpec::named(name);
                s.temperature = Some(bad);
                let e = build_err(&s, &o, &o);
                assert!(e.contains("temperature") && e.contains(name), "{e}");
            }
        }
        let mut s = LossSpec::named("dkd");
        s.beta = Some(-8.0);
        assert!(build_err(&s, &o, &o).contains("beta"));
        let mut s = LossSpec::named("rkd");
        s.angle_weight = Some(f64::NAN);
        assert!(build_err(&s, &o, &o).contains("angle_weight"));
        let mut s = LossSpec::named("rkd");
        (s.angle_weight, s.distance_weight) = (Some(0.0), Some(0.0));
        assert!(build_err(&s, &o, &o).contains("both 0"));
    }

    #[test]
    fn fields_that_do_not_apply_are_rejected() {
        let o = outputs(&[("f", FeatureKind::Map, &[4, 3, 4, 4])]);
        let mut s = LossSpec::named("kd");
        s.p = Some(2.0);
        let e = build_err(&s, &o, &o);
        assert!(
            e.contains("`p`") && e.contains("`kd`") && e.contains("temperature"),
            "{e}"
        );
        let mut s = LossSpec::named("ce");
        s.temperature = Some(4.0);
        let e = build_err(&s, &o, &o);
        assert!(
            e.contains("temperature") && e.contains("no parameters"),
            "{e}"
        );
        let mut s = spec("hint", Some("f"), Some("f"));
        s.params = Some(toml::Table::new());
        assert!(build_err(&s, &o, &o).contains("params"));
    }

    #[test]
    fn at_rejects_mismatched_spatial_sizes_and_non_maps() {
        let s = outputs(&[
            ("layer2", FeatureKind::Map, &[4, 16, 8, 8]),
            ("emb", FeatureKind::Vector, &[4, 16]),
        ]);
        let t = outputs(&[("layer3", FeatureKind::Map, &[4, 32, 4, 4])]);
        let e = build_err(&spec("at", Some("layer2"), Some("layer3")), &s, &t);
        assert!(
            e.contains("at")
                && e.contains("layer2")
                && e.contains("layer3")
                && e.contains("[4, 16, 8, 8]")
                && e.contains("[4, 32, 4, 4]"),
            "{e}"
        );
        let e = build_err(&spec("at", Some("emb"), Some("layer3")), &s, &t);
        assert!(e.contains("emb") && e.contains("Vector"), "{e}");
        // channels may differ
        let t = outputs(&[("layer3", FeatureKind::Map, &[4, 32, 8, 8])]);
        assert!(build_core_loss(&spec("at", Some("layer2"), Some("layer3")), &s, &t, 0).is_ok());
    }

    #[test]
    fn feature_kinds_and_batches_must_fit() {
        let s = outputs(&[
            ("seq", FeatureKind::Sequence, &[4, 7, 8]),
            ("emb", FeatureKind::Vector, &[4, 8]),
            ("small_batch", FeatureKind::Vector, &[2, 8]),
        ]);
        let t = outputs(&[
            ("seq", FeatureKind::Sequence, &[4, 9, 16]),
            ("emb", FeatureKind::Vector, &[4, 16]),
        ]);
        let e = build_err(&spec("hint", Some("seq"), Some("emb")), &s, &t);
        assert!(e.contains("Sequence") && e.contains("Vector"), "{e}");
        let e = build_err(&spec("hint", Some("seq"), Some("seq")), &s, &t);
        assert!(e.contains("[4, 7, 8]") && e.contains("[4, 9, 16]"), "{e}");
        let e = build_err(&spec("sp", Some("small_batch"), Some("emb")), &s, &t);
        assert!(e.contains("[2, 8]") && e.contains("batch"), "{e}");
    }

    #[test]
    fn hint_adapter_exists_only_when_widths_differ() -> Result<()> {
        let s = outputs(&[
            ("map", FeatureKind::Map, &[4, 3, 5, 5]),
            ("emb", FeatureKind::Vector, &[4, 8]),
            ("seq", FeatureKind::Sequence, &[4, 7, 8]),
        ]);
        let t = outputs(&[
            ("map", FeatureKind::Map, &[4, 6, 5, 5]),
            ("map3", FeatureKind::Map, &[4, 3, 5, 5]),
            ("emb", FeatureKind::Vector, &[4, 12]),
            ("seq", FeatureKind::Sequence, &[4, 7, 12]),
        ]);
        let batch = Batch {
            inputs: zeros(&[4, 1]),
            targets: Tensor::zeros(4, DType::U32, &Device::Cpu)?,
            indices: vec![0, 1, 2, 3],
        };
        for (sf, tf, adapter, weight_dims) in [
            ("map", "map", true, vec![6, 3, 1, 1]),
            ("emb", "emb", true, vec![12, 8]),
            ("seq", "seq", true, vec![12, 8]),
            ("map", "map3", false, vec![]),
        ] {
            let loss = build_core_loss(&spec("hint", Some(sf), Some(tf)), &s, &t, 1)?.unwrap();
            assert_eq!(loss.varmap().is_some(), adapter, "{sf} -> {tf}");
            if let Some(vm) = loss.varmap() {
                let data = vm.data().lock().unwrap();
                assert_eq!(data["adapter.weight"].dims(), weight_dims.as_slice());
                assert_eq!(data["adapter.bias"].dims(), &[weight_dims[0]]);
            }
            assert!(val(&loss.compute(&s, &t, &batch)?).is_finite());
        }
        let hint = Hint::new("map", "map", FeatureKind::Map, 3, 6, 1, &Device::Cpu)?;
        assert!(hint.has_adapter());
        assert_eq!(hint.adapt(&zeros(&[4, 3, 5, 5]))?.dims(), &[4, 6, 5, 5]);
        let hint = Hint::new("seq", "seq", FeatureKind::Sequence, 8, 12, 1, &Device::Cpu)?;
        assert_eq!(hint.adapt(&zeros(&[4, 7, 8]))?.dims(), &[4, 7, 12]);
        let same = Hint::new("emb", "emb", FeatureKind::Vector, 8, 8, 1, &Device::Cpu)?;
        assert!(!same.has_adapter() && same.varmap().is_none());
        // the adapter is seeded: same seed, same weights
        let w = |seed| -> Vec<f32> {
            let h = Hint::new("e", "e", FeatureKind::Vector, 8, 12, seed, &Device::Cpu).unwrap();
            let vm = h.varmap().unwrap().data().lock().unwrap()["adapter.weight"].clone();
            vm.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(w(5), w(5));
        assert_ne!(w(5), w(6));
        Ok(())
    }
}
