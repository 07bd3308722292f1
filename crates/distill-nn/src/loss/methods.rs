//! The methods KD papers compare against, beyond the classic ones in [`super`]: PKT, NST, DIST, logit
//! standardisation and VID's likelihood (CRD is in its own module). Each follows its authors' published PyTorch code (named in its doc);
//! `crates/distill-core/tests/fixtures/losses/make_reference.py` re-implements them in float64 numpy for the
//! reference tests.

use candle_core::Tensor;

use super::{
    check_batch, check_same_shape, check_temperature, flat_rows, kd_loss, log_softmax, logit_rows,
    shape_err, NORM_EPS,
};
use crate::{Error, Result};

/// PKT's `eps` (Passalis & Tefas' code): added to the norms and inside the log ratio.
pub const PKT_EPS: f64 = 1e-7;
/// DIST's `eps` in the Pearson correlation's denominator (Huang et al.'s code).
pub const DIST_EPS: f64 = 1e-8;
/// Logit standardisation's `eps` added to the standard deviation (Sun et al.'s code).
pub const LS_EPS: f64 = 1e-7;

/// `sqrt(x)` with `x` clamped at `NORM_EPS²` first, so a zero (a constant row, a zero feature) has a finite
/// gradient; the value changes only below `1e-12`.
fn safe_sqrt(x: &Tensor) -> Result<Tensor> {
    Ok(x.maximum(NORM_EPS * NORM_EPS)?.sqrt()?)
}

/// PKT's conditional probabilities of `[B, D]` features: cosine similarities of the rows (each divided by
/// its norm + eps), shifted to `[0, 1]` and normalised to sum 1 per row.
fn pkt_probs(f: &Tensor) -> Result<Tensor> {
    let norm = safe_sqrt(&f.sqr()?.sum_keepdim(1)?)?.affine(1.0, PKT_EPS)?;
    let unit = f.broadcast_div(&norm)?;
    let sim = unit.matmul(&unit.t()?)?.affine(0.5, 0.5)?;
    Ok(sim.broadcast_div(&sim.sum_keepdim(1)?)?)
}

/// Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), the authors' `cosine_similarity_loss`:
/// `mean(P_t · log((P_t + eps) / (P_s + eps)))` over the `B × B` conditional probabilities of the cosine
/// similarities between the batch's samples (see `pkt_probs`).
///
/// Inputs are `[B, *]` (flattened to `[B, D]`); widths may differ, batches must match.
pub fn pkt_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    const F: &str = "pkt_loss";
    check_batch(F, student, teacher)?;
    let s = pkt_probs(&flat_rows(F, student)?)?;
    let t = pkt_probs(&flat_rows(F, teacher)?)?;
    let log_ratio = (t.affine(1.0, PKT_EPS)?.log()? - s.affine(1.0, PKT_EPS)?.log()?)?;
    Ok((t * log_ratio)?.mean_all()?)
}

/// `[B, C, N]` rows L2-normalised along the positions, as `F.normalize(x.view(B, C, -1), dim=2)`.
fn nst_rows(x: &Tensor) -> Result<Tensor> {
    super::l2_normalize(&x.flatten_from(2)?, 2)
}

/// `mean((a · bᵀ)²)` over `[B, Ca, Cb]`: NST's polynomial kernel (degree 2, c = 0) averaged.
fn poly_mean(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.matmul(&b.transpose(1, 2)?.contiguous()?)?
        .sqr()?
        .mean_all()?)
}

/// Neuron selectivity transfer (Huang & Wang, 2017), as torchdistill's / RepDistiller's `NSTLoss`: the
/// squared MMD with a degree-2 polynomial kernel between the channels of the two maps, each channel's
/// activations over positions L2-normalised: `mean(k(t,t)) + mean(k(s,s)) − 2 mean(k(s,t))`,
/// `k(a,b) = (a·b)²` (the teacher-only term carries no gradient).
///
/// Maps are `[B, C, H, W]` (any rank ≥ 3: dimension 1 is channels, the rest positions). Channel counts may
/// differ; batch and spatial sizes must match.
pub fn nst_loss(student_map: &Tensor, teacher_map: &Tensor) -> Result<Tensor> {
    const F: &str = "nst_loss";
    let (s, t) = (student_map, teacher_map);
    if s.rank() < 3
        || t.rank() != s.rank()
        || s.dim(0)? != t.dim(0)?
        || s.dims()[2..] != t.dims()[2..]
    {
        return Err(shape_err(format!(
            "{F}: expected [B, C, H, W] maps with the same batch and spatial sizes (only channels may \
             differ), got student {:?} and teacher {:?}",
            s.dims(),
            t.dims()
        )));
    }
    let (s, t) = (nst_rows(s)?, nst_rows(t)?);
    let tt = poly_mean(&t, &t)?.detach();
    let ss = poly_mean(&s, &s)?;
    let st = poly_mean(&s, &t)?;
    Ok((tt + ss)?.sub(&st.affine(2.0, 0.0)?)?)
}

/// Mean over rows of the Pearson correlation between the rows of `a` and `b` (`[N, M]`), as DIST's
/// `pearson_correlation(a, b).mean()`: the centred rows' dot product over (norm · norm + eps).
fn mean_row_pearson(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = a.broadcast_sub(&a.mean_keepdim(1)?)?;
    let b = b.broadcast_sub(&b.mean_keepdim(1)?)?;
    let dot = (&a * &b)?.sum_keepdim(1)?;
    let na = safe_sqrt(&a.sqr()?.sum_keepdim(1)?)?;
    let nb = safe_sqrt(&b.sqr()?.sum_keepdim(1)?)?;
    Ok(dot.div(&(na * nb)?.affine(1.0, DIST_EPS)?)?.mean_all()?)
}

/// DIST (Huang et al., NeurIPS 2022), the authors' `DIST` module: with `y = softmax(z / τ)`,
/// `τ² · (β · (1 − ρ̄_inter) + γ · (1 − ρ̄_intra))`, where `ρ̄_inter` is the Pearson correlation between the
/// student's and teacher's class distributions averaged over samples and `ρ̄_intra` the correlation between
/// their per-class columns (over the batch) averaged over classes.
///
/// Logits are `[B, C]` (higher ranks are flattened to rows, as in [`kd_loss`]); the authors' defaults are
/// β = γ = τ = 1 (ImageNet), β = γ = 2, τ = 4 on CIFAR-100.
pub fn dist_loss(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    beta: f64,
    gamma: f64,
    tau: f64,
) -> Result<Tensor> {
    const F: &str = "dist_loss";
    check_temperature(F, tau)?;
    check_same_shape(F, "logits", student_logits, teacher_logits)?;
    let probs = |x: &Tensor| -> Result<Tensor> {
        let rows = logit_rows(F, x)?;
        Ok(log_softmax(&rows.affine(1.0 / tau, 0.0)?, 1)?.exp()?)
    };
    let (ys, yt) = (probs(student_logits)?, probs(teacher_logits)?);
    let inter = mean_row_pearson(&ys, &yt)?.affine(-1.0, 1.0)?;
    let intra =
        mean_row_pearson(&ys.t()?.contiguous()?, &yt.t()?.contiguous()?)?.affine(-1.0, 1.0)?;
    let k = tau * tau;
    Ok((inter.affine(beta * k, 0.0)? + intra.affine(gamma * k, 0.0)?)?)
}

/// Each row z-scored, as logit standardisation's `normalize`: `(z − mean) / (eps + std)` with the
/// unbiased standard deviation (`torch.std`'s default) over the last dimension.
pub fn standardize_logits(x: &Tensor) -> Result<Tensor> {
    const F: &str = "standardize_logits";
    let rows = logit_rows(F, x)?;
    let c = rows.dim(1)?;
    if c < 2 {
        return Err(shape_err(format!(
            "{F}: needs at least 2 classes to standardise, logits have shape {:?}",
            x.dims()
        )));
    }
    let centred = rows.broadcast_sub(&rows.mean_keepdim(1)?)?;
    let var = centred
        .sqr()?
        .sum_keepdim(1)?
        .affine(1.0 / (c - 1) as f64, 0.0)?;
    let std = safe_sqrt(&var)?.affine(1.0, LS_EPS)?;
    Ok(centred.broadcast_div(&std)?.reshape(x.shape())?)
}

/// KD with logit standardisation (Sun et al., CVPR 2024): [`kd_loss`] between the z-scored logits of
/// student and teacher ([`standardize_logits`]), so the student matches the teacher's logit *relations*
/// rather than their scale. The authors' CIFAR-100 runs use T = 2 and a KD weight of 9.
pub fn ls_kd_loss(student_logits: &Tensor, teacher_logits: &Tensor, t: f64) -> Result<Tensor> {
    const F: &str = "ls_kd_loss";
    check_temperature(F, t)?;
    check_same_shape(F, "logits", student_logits, teacher_logits)?;
    kd_loss(
        &standardize_logits(student_logits)?,
        &standardize_logits(teacher_logits)?,
        t,
    )
}

/// `softplus(x) = log(1 + exp(x))`, computed as `max(x, 0) + log(1 + exp(−|x|))` (no overflow).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?)
}

/// VID's negative log-likelihood (Ahn et al., CVPR 2019, RepDistiller's `VIDLoss`): the teacher feature
/// under a Gaussian with the student's regressed mean and a learned per-channel variance
/// `σ² = softplus(log_scale) + eps`: `mean(½ · ((μ − t)² / σ² + log σ²))`, constant `½ log 2π` left out.
///
/// `pred_mean` and `target` have the same shape; `log_scale` is `[C]` with `C` the size of dimension `dim`
/// of `target` (1 for `[B, C, H, W]` maps, the last for `[B, .., C]` vectors).
pub fn vid_nll(
    pred_mean: &Tensor,
    target: &Tensor,
    log_scale: &Tensor,
    dim: usize,
    eps: f64,
) -> Result<Tensor> {
    const F: &str = "vid_nll";
    check_same_shape(F, "feature", pred_mean, target)?;
    if dim >= target.rank() || log_scale.dims() != [target.dim(dim)?] {
        return Err(shape_err(format!(
            "{F}: log_scale has shape {:?}, expected [{}] (dimension {dim} of the feature {:?})",
            log_scale.dims(),
            target.dims().get(dim).copied().unwrap_or(0),
            target.dims()
        )));
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::msg(format!(
            "{F}: eps must be finite and > 0, got {eps}"
        )));
    }
    let mut shape = vec![1; target.rank()];
    shape[dim] = target.dim(dim)?;
    let var = softplus(log_scale)?.affine(1.0, eps)?.reshape(shape)?;
    let sq = (pred_mean - target)?.sqr()?.broadcast_div(&var)?;
    Ok(sq
        .broadcast_add(&var.log()?)?
        .mean_all()?
        .affine(0.5, 0.0)?)
}

/// The `log_scale` that gives VID's initial variance `init_var` (RepDistiller: `log(exp(init − eps) − 1)`,
/// the inverse of softplus).
pub fn vid_log_scale_init(init_var: f64, eps: f64) -> f64 {
    ((init_var - eps).exp() - 1.0).ln()
}

/// VID's variance floor `eps` (RepDistiller's default).
pub const VID_EPS: f64 = 1e-5;

/// VID's trainable part (RepDistiller's `VIDLoss(s, t, t)`): a regressor of three bias-free layers (1×1
/// convolutions for maps, linear maps otherwise, ReLU between; student width → teacher width → teacher width
/// → teacher width) predicts the teacher feature's mean, and a learned per-channel variance scores it
/// ([`vid_nll`]). Parameters `regressor.{0,2,4}.weight` and `log_scale`, in the [`candle_nn::VarMap`] given to
/// [`VidRegressor::new`].
pub struct VidRegressor {
    layers: Vec<Box<dyn candle_core::Module + Send + Sync>>,
    log_scale: Tensor,
    width_dim: usize,
}

impl VidRegressor {
    /// The regressor for widths `(student, teacher)` in dimension `width_dim` of the features (`maps`: 1×1
    /// convolutions), its layers initialised from `seed` and its variance starting at `init_var`.
    pub fn new(
        varmap: &candle_nn::VarMap,
        maps: bool,
        widths: (usize, usize),
        width_dim: usize,
        init_var: f64,
        seed: u64,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let vb = crate::init::seeded_var_builder(varmap, seed, device);
        let tw = widths.1;
        let mut layers: Vec<Box<dyn candle_core::Module + Send + Sync>> = Vec::new();
        for (i, from) in [(0, widths.0), (2, tw), (4, tw)] {
            let vb = vb.pp(format!("regressor.{i}"));
            layers.push(if maps {
                Box::new(candle_nn::conv2d_no_bias(
                    from,
                    tw,
                    1,
                    Default::default(),
                    vb,
                )?)
            } else {
                Box::new(candle_nn::linear_no_bias(from, tw, vb)?)
            });
        }
        let init = candle_nn::Init::Const(vid_log_scale_init(init_var, VID_EPS));
        let log_scale = vb.get_with_hints(tw, "log_scale", init)?;
        Ok(Self {
            layers,
            log_scale,
            width_dim,
        })
    }

    /// The regressed mean of the teacher feature.
    pub fn regress(&self, student_feat: &Tensor) -> Result<Tensor> {
        let mut h = student_feat.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                h = h.relu()?;
            }
            h = layer.forward(&h)?;
        }
        Ok(h)
    }

    /// VID's loss of a feature pair: [`vid_nll`] of the regressed mean.
    pub fn nll(&self, student_feat: &Tensor, teacher_feat: &Tensor) -> Result<Tensor> {
        vid_nll(
            &self.regress(student_feat)?,
            teacher_feat,
            &self.log_scale,
            self.width_dim,
            VID_EPS,
        )
    }
}
