//! The detection task loss and the detection distillation losses, as plain functions first and
//! [`DistillLoss`] structs where a recipe names them.
//!
//! Targets are the `[B, K + 6, H, W]` tensor of [`crate::data::centernet_targets`]: K Gaussian heatmaps, then
//! size (2), offset (2), centre mask and near-object region mask.
//!
//! | recipe name | what |
//! |---|---|
//! | `task` | [`centernet_loss`]: heatmap focal loss + 0.1 · size L1 + offset L1 (CenterNet's weights) |
//! | `heatmap-kd` | [`heatmap_kd_loss`]: class-score KD, a binary KL per class and location between the teacher's and student's heatmaps at temperature T, × T², summed over classes, averaged over cells |
//! | `fgfi` | [`imitation_loss`]: fine-grained feature imitation (Wang et al., CVPR 2019) on the neck, inside the near-object mask, through a 1×1 adapter |
//! | `centernet-ld` | [`centernet_ld_loss`]: localisation distillation for a CenterNet head: L1 between the student's and teacher's size and offset maps, weighted by the teacher's centre confidence |

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use distill_core::{
    losses::{DistillLoss, LossSpec},
    Batch, Error, FeatureKind, Outputs, Result,
};

use crate::data::target;

/// Names of the losses this plugin adds.
pub const LOSSES: &[&str] = &["heatmap-kd", "fgfi", "centernet-ld"];

/// Weight of the size L1 in the task loss (CenterNet's 0.1).
pub const SIZE_WEIGHT: f64 = 0.1;
/// Weight of the offset L1 in the task loss.
pub const OFFSET_WEIGHT: f64 = 1.0;

/// `log(1 + e^x)`, stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let e = x.abs()?.neg()?.exp()?;
    Ok((x.relu()? + (e + 1.0)?.log()?)?)
}

/// The heatmap channels, size, offset, centre mask and region mask of a target tensor.
struct Targets {
    heat: Tensor,
    size: Tensor,
    offset: Tensor,
    centre: Tensor,
    region: Tensor,
}

fn split_targets(targets: &Tensor, classes: usize) -> Result<Targets> {
    if targets.rank() != 4 || targets.dim(1)? != classes + target::EXTRA {
        return Err(Error::Shape(format!(
            "detection targets must be [B, {} + {}, H, W], got {:?}",
            classes,
            target::EXTRA,
            targets.dims()
        )));
    }
    let at = |c: usize, n: usize| targets.narrow(1, classes + c, n);
    Ok(Targets {
        heat: targets.narrow(1, 0, classes)?,
        size: at(target::SIZE, 2)?,
        offset: at(target::OFFSET, 2)?,
        centre: at(target::CENTRE, 1)?,
        region: at(target::REGION, 1)?,
    })
}

/// CenterNet's penalty-reduced focal loss (α = 2, β = 4) on heatmap `logits` against Gaussian `gt` heatmaps,
/// normalised by the number of peaks (cells where `gt` is 1), computed from the logits (log σ(x) =
/// −softplus(−x)) rather than from a clamped σ.
pub fn focal_loss(logits: &Tensor, gt: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let log_p = softplus(&logits.neg()?)?.neg()?;
    let log_1mp = softplus(logits)?.neg()?;
    let pos = gt.ge(1.0 - 1e-6)?.to_dtype(DType::F32)?;
    let neg = (1.0 - &pos)?;
    let pos_term = (log_p * (1.0 - &p)?.sqr()?)?.mul(&pos)?;
    let neg_w = (1.0 - gt)?.sqr()?.sqr()?;
    let neg_term = ((log_1mp * p.sqr()?)? * neg_w)?.mul(&neg)?;
    let n = pos.sum_all()?.maximum(1.0)?;
    Ok(((pos_term.sum_all()? + neg_term.sum_all()?)?.neg()? / n)?)
}

/// Σ |pred − target| · mask over every channel, divided by (Σ mask · channels + 1e-4) (CenterNet's RegL1).
pub fn masked_l1(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let c = pred.dim(1)? as f64;
    let num = (pred - target)?.abs()?.broadcast_mul(mask)?.sum_all()?;
    let den = ((mask.sum_all()? * c)? + 1e-4)?;
    Ok((num / den)?)
}

/// The task loss: [`focal_loss`] + 0.1 · size L1 + offset L1 at object centres.
pub fn centernet_loss(out: &Outputs, targets: &Tensor) -> Result<Tensor> {
    let classes = out.logits.dim(1)?;
    let t = split_targets(targets, classes)?;
    let hm = focal_loss(&out.logits, &t.heat)?;
    let size = masked_l1(&out.feature("size")?.tensor, &t.size, &t.centre)?;
    let off = masked_l1(&out.feature("offset")?.tensor, &t.offset, &t.centre)?;
    Ok(((hm + (size * SIZE_WEIGHT)?)? + (off * OFFSET_WEIGHT)?)?)
}

/// Class-score KD on heatmaps: Σ over classes and cells of KL(Bernoulli(σ(t/T)) ‖ Bernoulli(σ(s/T))) · T²,
/// divided by `norm` (at least 1; the recipe loss passes the number of heatmap cells B·H·W).
pub fn heatmap_kd_loss(
    student: &Tensor,
    teacher: &Tensor,
    t: f64,
    norm: &Tensor,
) -> Result<Tensor> {
    if student.dims() != teacher.dims() {
        return Err(Error::Shape(format!(
            "heatmap-kd: student heatmap {:?} and teacher heatmap {:?} differ",
            student.dims(),
            teacher.dims()
        )));
    }
    let s = (student / t)?;
    let tt = (teacher / t)?;
    let pt = candle_nn::ops::sigmoid(&tt)?;
    // log σ(x) = −softplus(−x), log(1 − σ(x)) = −softplus(x)
    let (lt, l1t) = (softplus(&tt.neg()?)?.neg()?, softplus(&tt)?.neg()?);
    let (ls, l1s) = (softplus(&s.neg()?)?.neg()?, softplus(&s)?.neg()?);
    let kl = ((&pt * (lt - ls)?)? + ((1.0 - &pt)? * (l1t - l1s)?)?)?;
    Ok(((kl.sum_all()? * (t * t))? / norm.maximum(1.0)?)?)
}

/// Fine-grained feature imitation: Σ over masked cells and channels of (adapted − teacher)², divided by
/// 2 · (number of masked cells) (Wang et al., CVPR 2019, eq. 3). `mask` is `[B, 1, H, W]`.
pub fn imitation_loss(adapted: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if adapted.dims() != teacher.dims() {
        return Err(Error::Shape(format!(
            "fgfi: adapted student feature {:?} and teacher feature {:?} differ",
            adapted.dims(),
            teacher.dims()
        )));
    }
    let num = (adapted - teacher)?.sqr()?.broadcast_mul(mask)?.sum_all()?;
    let den = (mask.sum_all()?.maximum(1.0)? * 2.0)?;
    Ok((num / den)?)
}

/// Localisation distillation for a CenterNet head: Σ w · (size_weight · |Δsize| + offset_weight · |Δoffset|)
/// over cells (both channels), divided by Σ w · 2, where w = max over classes of σ(teacher heatmap) — the
/// teacher's confidence that an object is centred there.
pub fn centernet_ld_loss(
    student: &Outputs,
    teacher: &Outputs,
    size_weight: f64,
    offset_weight: f64,
) -> Result<Tensor> {
    let w = candle_nn::ops::sigmoid(&teacher.logits)?
        .max_keepdim(1)?
        .detach();
    let d = |name: &str| -> Result<Tensor> {
        let s = &student.feature(name)?.tensor;
        let t = &teacher.feature(name)?.tensor;
        if s.dims() != t.dims() {
            return Err(Error::Shape(format!(
                "centernet-ld: student `{name}` {:?} and teacher `{name}` {:?} differ",
                s.dims(),
                t.dims()
            )));
        }
        Ok((s - t)?.abs()?.broadcast_mul(&w)?.sum_all()?)
    };
    let num = ((d("size")? * size_weight)? + (d("offset")? * offset_weight)?)?;
    let den = ((w.sum_all()? * 2.0)? + 1e-4)?;
    Ok((num / den)?)
}

/// [`heatmap_kd_loss`] as a recipe loss (`temperature`, default 2).
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapKd {
    /// Temperature T.
    pub t: f64,
}

impl DistillLoss for HeatmapKd {
    fn name(&self) -> &str {
        "heatmap-kd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        // averaged over heatmap cells (summed over classes): normalised by the number of objects instead, as
        // the focal loss is, the background cells' small divergences add up to hundreds and drown the task loss
        let (b, _, h, w) = student.logits.dims4()?;
        let cells = Tensor::new((b * h * w) as f32, student.logits.device())?;
        heatmap_kd_loss(&student.logits, &teacher.logits, self.t, &cells)
    }
}

/// [`imitation_loss`] as a recipe loss, with its 1×1 adapter (student width → teacher width).
pub struct Fgfi {
    /// Student feature tap.
    pub student_feature: String,
    /// Teacher feature tap.
    pub teacher_feature: String,
    adapter: candle_nn::Conv2d,
    varmap: VarMap,
}

impl DistillLoss for Fgfi {
    fn name(&self) -> &str {
        "fgfi"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, batch: &Batch) -> Result<Tensor> {
        let classes = student.logits.dim(1)?;
        let t = split_targets(&batch.targets, classes)?;
        let s = self
            .adapter
            .forward(&student.feature(&self.student_feature)?.tensor)?;
        imitation_loss(
            &s,
            &teacher.feature(&self.teacher_feature)?.tensor,
            &t.region,
        )
    }
    fn uses_features(&self) -> bool {
        true
    }
    fn varmap(&self) -> Option<&VarMap> {
        Some(&self.varmap)
    }
}

/// [`centernet_ld_loss`] as a recipe loss (`params = { size_weight = 0.1, offset_weight = 1.0 }`).
#[derive(Debug, Clone, PartialEq)]
pub struct CenterNetLd {
    /// Weight of the size term.
    pub size_weight: f64,
    /// Weight of the offset term.
    pub offset_weight: f64,
}

impl DistillLoss for CenterNetLd {
    fn name(&self) -> &str {
        "centernet-ld"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        centernet_ld_loss(student, teacher, self.size_weight, self.offset_weight)
    }
    fn uses_features(&self) -> bool {
        true
    }
}

fn only_fields(spec: &LossSpec, allowed: &[&str]) -> Result<()> {
    let set = [
        ("temperature", spec.temperature.is_some()),
        ("alpha", spec.alpha.is_some()),
        ("beta", spec.beta.is_some()),
        ("student_feature", spec.student_feature.is_some()),
        ("teacher_feature", spec.teacher_feature.is_some()),
        ("p", spec.p.is_some()),
        ("distance_weight", spec.distance_weight.is_some()),
        ("angle_weight", spec.angle_weight.is_some()),
        ("params", spec.params.is_some()),
    ];
    for (k, on) in set {
        if on && !allowed.contains(&k) {
            return Err(Error::msg(format!(
                "loss `{}` takes no `{k}` (it takes: {})",
                spec.name,
                if allowed.is_empty() {
                    "nothing but weight".to_string()
                } else {
                    allowed.join(", ")
                }
            )));
        }
    }
    Ok(())
}

fn positive(spec: &LossSpec, key: &str, v: Option<f64>, default: f64) -> Result<f64> {
    let v = v.unwrap_or(default);
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::msg(format!(
            "loss `{}`: `{key}` must be finite and >= 0, got {v}",
            spec.name
        )));
    }
    Ok(v)
}

fn param(spec: &LossSpec, key: &str, default: f64, known: &[&str]) -> Result<f64> {
    let Some(t) = &spec.params else {
        return Ok(default);
    };
    if let Some(k) = t.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Error::msg(format!(
            "loss `{}`: unknown parameter `{k}` (known: {})",
            spec.name,
            known.join(", ")
        )));
    }
    match t.get(key) {
        None => Ok(default),
        Some(toml::Value::Float(f)) => positive(spec, key, Some(*f), default),
        Some(toml::Value::Integer(i)) => positive(spec, key, Some(*i as f64), default),
        Some(v) => Err(Error::msg(format!(
            "loss `{}`: `{key}` must be a number, got {v}",
            spec.name
        ))),
    }
}

/// Builds a detection loss from its recipe spec after a dry run (`student`/`teacher` outputs on zeros), or
/// `Ok(None)` if the name is not one of [`LOSSES`].
pub fn build_detection_loss(
    spec: &LossSpec,
    student: &Outputs,
    teacher: &Outputs,
    seed: u64,
) -> Result<Option<Box<dyn DistillLoss>>> {
    let same_heatmaps = || -> Result<()> {
        if student.logits.dims() != teacher.logits.dims() {
            return Err(Error::Shape(format!(
                "loss `{}`: student heatmaps {:?} and teacher heatmaps {:?} differ (same classes and input size needed)",
                spec.name,
                student.logits.dims(),
                teacher.logits.dims()
            )));
        }
        Ok(())
    };
    let loss: Box<dyn DistillLoss> = match spec.name.as_str() {
        "heatmap-kd" => {
            only_fields(spec, &["temperature"])?;
            same_heatmaps()?;
            let t = spec.temperature.unwrap_or(2.0);
            if !(t.is_finite() && t > 0.0) {
                return Err(Error::msg(format!(
                    "loss `heatmap-kd`: the temperature must be finite and > 0, got {t}"
                )));
            }
            Box::new(HeatmapKd { t })
        }
        "fgfi" => {
            only_fields(spec, &["student_feature", "teacher_feature"])?;
            let sn = spec.student_feature.as_deref().unwrap_or("neck");
            let tn = spec.teacher_feature.as_deref().unwrap_or("neck");
            let (sf, tf) = (student.feature(sn)?, teacher.feature(tn)?);
            for (side, name, f) in [("student", sn, sf), ("teacher", tn, tf)] {
                if f.kind != FeatureKind::Map {
                    return Err(Error::Shape(format!(
                        "loss `fgfi`: {side} feature `{name}` is a {:?}; feature imitation needs a Map",
                        f.kind
                    )));
                }
            }
            let (sd, td) = (sf.tensor.dims(), tf.tensor.dims());
            if sd[2..] != td[2..] || sd[2..] != student.logits.dims()[2..] {
                return Err(Error::Shape(format!(
                    "loss `fgfi`: student `{sn}` {sd:?} and teacher `{tn}` {td:?} must both have the heatmap's spatial size {:?} (the near-object mask is drawn there)",
                    &student.logits.dims()[2..]
                )));
            }
            let varmap = VarMap::new();
            let device: &Device = student.logits.device();
            let vb = distill_nn::init::seeded_var_builder(&varmap, seed, device).pp("adapter");
            let adapter = candle_nn::conv2d(sd[1], td[1], 1, Default::default(), vb)?;
            Box::new(Fgfi {
                student_feature: sn.to_string(),
                teacher_feature: tn.to_string(),
                adapter,
                varmap,
            })
        }
        "centernet-ld" => {
            only_fields(spec, &["params"])?;
            same_heatmaps()?;
            let known = ["size_weight", "offset_weight"];
            let size_weight = param(spec, "size_weight", SIZE_WEIGHT, &known)?;
            let offset_weight = param(spec, "offset_weight", OFFSET_WEIGHT, &known)?;
            for n in ["size", "offset"] {
                student.feature(n)?;
                teacher.feature(n)?;
            }
            Box::new(CenterNetLd {
                size_weight,
                offset_weight,
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(loss))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn scalar(x: Tensor) -> f64 {
        x.to_scalar::<f32>().unwrap() as f64
    }

    // The expected numbers come from this numpy snippet:
    //   sig = lambda x: 1 / (1 + np.exp(-x))
    //   x = np.array([[2.0, -1.0], [0.5, -3.0]]); gt = np.array([[1.0, 0.5], [0.0, 0.2]])
    //   p = sig(x); pos = (gt == 1).astype(float)
    //   -(np.sum(np.log(p) * (1 - p)**2 * pos) + np.sum(np.log(1 - p) * p**2 * (1 - gt)**4 * (1 - pos))) / max(pos.sum(), 1)
    //   # 0.38067605473864335
    //   s = np.array([[0.3, -1.2], [2.0, 0.0]]); t = np.array([[1.0, -2.0], [0.5, 0.7]]); T = 2.0
    //   ps, pt = sig(s / T), sig(t / T)
    //   np.sum(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))) * T * T   # 0.4486463747480152
    //   a = np.array([[[1.0, 2.0]], [[0.5, -1.0]]]); tt = np.array([[[0.0, 2.0]], [[1.5, 3.0]]]); m = np.array([[1.0, 0.0]])
    //   np.sum((a - tt)**2 * m) / (2 * m.sum())                                          # 1.0
    //   tl = np.array([[[0.0, -2.0]], [[1.0, -3.0]]]); w = sig(tl).max(0)
    //   ss = np.array([[[3.0, 1.0]], [[2.0, 2.0]]]); ts = np.array([[[2.0, 1.5]], [[2.5, 0.0]]])
    //   so = np.array([[[0.1, 0.2]], [[0.3, 0.4]]]); to = np.array([[[0.5, 0.2]], [[0.0, 0.9]]])
    //   (0.1 * np.sum(np.abs(ss - ts) * w) + np.sum(np.abs(so - to) * w)) / (2 * w.sum() + 1e-4)  # 0.41796564130143055

    #[test]
    fn focal_loss_matches_numpy() {
        let x = t(&[2.0, -1.0, 0.5, -3.0], &[1, 1, 2, 2]);
        let gt = t(&[1.0, 0.5, 0.0, 0.2], &[1, 1, 2, 2]);
        let l = scalar(focal_loss(&x, &gt).unwrap());
        assert!((l - 0.380_676_054_738_643_35).abs() < 1e-6, "{l}");
    }

    #[test]
    fn heatmap_kd_matches_numpy_and_is_zero_for_equal_maps() {
        let s = t(&[0.3, -1.2, 2.0, 0.0], &[1, 1, 2, 2]);
        let tt = t(&[1.0, -2.0, 0.5, 0.7], &[1, 1, 2, 2]);
        let one = t(&[1.0], &[1]).sum_all().unwrap();
        let l = scalar(heatmap_kd_loss(&s, &tt, 2.0, &one).unwrap());
        assert!((l - 0.448_646_374_748_015_2).abs() < 1e-6, "{l}");
        assert!(scalar(heatmap_kd_loss(&s, &s, 2.0, &one).unwrap()).abs() < 1e-6);
    }

    #[test]
    fn imitation_and_ld_match_numpy() {
        let a = t(&[1.0, 2.0, 0.5, -1.0], &[1, 2, 1, 2]);
        let tt = t(&[0.0, 2.0, 1.5, 3.0], &[1, 2, 1, 2]);
        let m = t(&[1.0, 0.0], &[1, 1, 1, 2]);
        assert!((scalar(imitation_loss(&a, &tt, &m).unwrap()) - 1.0).abs() < 1e-6);

        let outs = |logits: &[f32], size: &[f32], off: &[f32]| {
            Outputs::logits(t(logits, &[1, 2, 1, 2]))
                .with_feature("size", FeatureKind::Map, t(size, &[1, 2, 1, 2]))
                .unwrap()
                .with_feature("offset", FeatureKind::Map, t(off, &[1, 2, 1, 2]))
                .unwrap()
        };
        let teacher = outs(
            &[0.0, -2.0, 1.0, -3.0],
            &[2.0, 1.5, 2.5, 0.0],
            &[0.5, 0.2, 0.0, 0.9],
        );
        let student = outs(&[0.0; 4], &[3.0, 1.0, 2.0, 2.0], &[0.1, 0.2, 0.3, 0.4]);
        let l = scalar(centernet_ld_loss(&student, &teacher, 0.1, 1.0).unwrap());
        assert!((l - 0.417_965_641_301_430_55).abs() < 1e-6, "{l}");
    }

    #[test]
    fn specs_are_checked() {
        let dev = Device::Cpu;
        let out = |c: usize| {
            Outputs::logits(Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap())
                .with_feature(
                    "neck",
                    FeatureKind::Map,
                    Tensor::zeros((2, c, 4, 4), DType::F32, &dev).unwrap(),
                )
                .unwrap()
                .with_feature(
                    "pooled",
                    FeatureKind::Vector,
                    Tensor::zeros((2, c), DType::F32, &dev).unwrap(),
                )
                .unwrap()
        };
        let (s, te) = (out(4), out(8));
        let mut spec = LossSpec::named("heatmap-kd");
        spec.temperature = Some(0.0);
        let e = build_detection_loss(&spec, &s, &te, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("temperature"), "{e}");
        let mut spec = LossSpec::named("fgfi");
        spec.temperature = Some(2.0);
        let e = build_detection_loss(&spec, &s, &te, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("takes no `temperature`"), "{e}");
        let mut spec = LossSpec::named("fgfi");
        spec.student_feature = Some("pooled".into());
        let e = build_detection_loss(&spec, &s, &te, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs a Map"), "{e}");
        let spec = LossSpec::named("fgfi");
        let l = build_detection_loss(&spec, &s, &te, 0).unwrap().unwrap();
        assert!(
            l.varmap().is_some(),
            "the 1x1 adapter is trained with the student"
        );
        let mut spec = LossSpec::named("centernet-ld");
        spec.params = Some(toml::toml! { sizes = 1.0 });
        let e = build_detection_loss(&spec, &s, &te, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown parameter `sizes`"), "{e}");
        assert!(build_detection_loss(&LossSpec::named("kd"), &s, &te, 0)
            .unwrap()
            .is_none());
    }
}
