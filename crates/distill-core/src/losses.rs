//! The distillation loss library.
//!
//! Losses are plain functions first (`kd_loss(student_logits, teacher_logits, t)`), wrapped in small structs
//! implementing [`DistillLoss`] where configuration or trainable adapters are needed. A recipe names losses
//! by their [`LossSpec::name`]; [`build_core_loss`] turns a spec into a loss after a dry run has produced the
//! student's and teacher's outputs (so adapters are sized from the declared feature shapes).

use candle_core::Tensor;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::{Batch, Outputs, Result};

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

// ---- TEMPORARY STUBS (replaced by the loss-library branch) ----
/// stub
pub fn kd_loss(student: &Tensor, teacher: &Tensor, t: f64) -> Result<Tensor> {
    let ls = candle_nn::ops::log_softmax(&(student / t)?, 1)?;
    let lt = candle_nn::ops::log_softmax(&(teacher / t)?, 1)?;
    let pt = lt.exp()?;
    let b = student.dim(0)? as f64;
    Ok(((pt * (lt - ls)?)?.sum_all()? * (t * t / b))?)
}
/// stub
pub fn ce_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, targets)?)
}
struct KdStub(f64);
impl DistillLoss for KdStub {
    fn name(&self) -> &str {
        "kd"
    }
    fn compute(&self, s: &Outputs, t: &Outputs, _b: &Batch) -> Result<Tensor> {
        kd_loss(&s.logits, &t.logits, self.0)
    }
}
struct CeStub;
impl DistillLoss for CeStub {
    fn name(&self) -> &str {
        "ce"
    }
    fn compute(&self, s: &Outputs, _t: &Outputs, b: &Batch) -> Result<Tensor> {
        ce_loss(&s.logits, &b.targets)
    }
    fn uses_teacher(&self) -> bool {
        false
    }
}
/// stub
pub fn build_core_loss(
    spec: &LossSpec,
    _s: &Outputs,
    _t: &Outputs,
    _seed: u64,
) -> Result<Option<Box<dyn DistillLoss>>> {
    Ok(match spec.name.as_str() {
        "kd" => Some(Box::new(KdStub(spec.temperature.unwrap_or(4.0)))),
        "ce" => Some(Box::new(CeStub)),
        _ => None,
    })
}
