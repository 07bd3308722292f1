//! The distillation loss library.
//!
//! Losses are plain functions first (`kd_loss(student_logits, teacher_logits, t)`), wrapped in small structs
//! implementing [`DistillLoss`] where configuration or trainable adapters are needed. A recipe names losses
//! by their [`LossSpec::name`]; [`build_core_loss`] turns a spec into a loss after a dry run has produced the
//! student's and teacher's outputs (so adapters are sized from the declared feature shapes).

use candle_core::{Device, Tensor};
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
    /// DKD's non-target-class weight β; DIST's inter-class weight β.
    pub beta: Option<f64>,
    /// DIST's intra-class weight γ.
    pub gamma: Option<f64>,
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
    /// VID's initial variance σ² (before training its log-scale).
    pub init_var: Option<f64>,
    /// CRD's embedding width (both sides' projection heads map to it).
    pub embed_dim: Option<usize>,
    /// CRD's number of negatives drawn per batch from the memory bank.
    pub negatives: Option<usize>,
    /// CRD's memory momentum: a sample's row becomes `momentum · row + (1 − momentum) · embedding`.
    pub momentum: Option<f64>,
    /// ReviewKD's student stages (map taps, shallowest first).
    pub student_features: Option<Vec<String>>,
    /// ReviewKD's teacher stages (map taps, shallowest first; as many as the student's).
    pub teacher_features: Option<Vec<String>>,
    /// ReviewKD's channels inside each fusion module.
    pub mid_channels: Option<usize>,
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
            gamma: None,
            student_feature: None,
            teacher_feature: None,
            p: None,
            distance_weight: None,
            angle_weight: None,
            init_var: None,
            embed_dim: None,
            negatives: None,
            momentum: None,
            student_features: None,
            teacher_features: None,
            mid_channels: None,
            params: None,
        }
    }
}

/// Names of the losses distill-core provides.
pub const CORE_LOSSES: &[&str] = &[
    "kd", "ce", "dkd", "hint", "at", "sp", "rkd", "pkt", "nst", "dist", "ls_kd", "vid", "crd",
    "ofd", "reviewkd",
];

pub use distill_nn::loss::{
    at_loss, ce_loss, crd_loss, crd_scores, dist_loss, dkd_loss, hint_loss, kd_loss, log_softmax,
    ls_kd_loss, nst_loss, ofd_loss, ofd_margin, pkt_loss, rkd_angle_loss, rkd_distance_loss,
    sp_loss, standardize_logits, vid_nll, ContrastMemory, CrdConfig, OfdConnector, VidRegressor,
    VID_EPS,
};
pub use distill_nn::loss::{hcl_loss, ReviewFusion};

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

impl Adapter {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        Ok(match self {
            Adapter::Linear(l) => l.forward(x)?,
            Adapter::Conv(c) => c.forward(x)?,
        })
    }
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
        match &self.adapter {
            None => Ok(student_feat.clone()),
            Some(a) => a.forward(student_feat),
        }
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
            Error::Shape(format!(
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

/// The named feature pair, or the logits when no feature is named (RKD, PKT).
fn pair_inputs<'a>(
    names: (&Option<String>, &Option<String>),
    student: &'a Outputs,
    teacher: &'a Outputs,
) -> Result<(&'a Tensor, &'a Tensor)> {
    Ok(match names {
        (Some(s), Some(t)) => (&student.feature(s)?.tensor, &teacher.feature(t)?.tensor),
        _ => (&student.logits, &teacher.logits),
    })
}

impl DistillLoss for Rkd {
    fn name(&self) -> &str {
        "rkd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let (s, t) = pair_inputs(
            (&self.student_feature, &self.teacher_feature),
            student,
            teacher,
        )?;
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
            None => distill_nn::loss::attached_zero(s),
        }
    }
    fn uses_features(&self) -> bool {
        self.student_feature.is_some()
    }
}

/// A loss of a student and a teacher tensor with no options: PKT ([`pkt_loss`]; a feature pair, or the
/// logits when none is named) and NST ([`nst_loss`]; a pair of maps or sequences).
#[derive(Debug, Clone)]
pub struct PairLoss {
    name: &'static str,
    f: fn(&Tensor, &Tensor) -> Result<Tensor>,
    /// Student feature tap; `None` (with `teacher_feature` `None`) uses the logits.
    pub student_feature: Option<String>,
    /// Teacher feature tap.
    pub teacher_feature: Option<String>,
    /// `[B, T, H]` sequence features, compared as `[B, H, T]` (channels first, as NST reads maps).
    channels_last: bool,
}

impl DistillLoss for PairLoss {
    fn name(&self) -> &str {
        self.name
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let (s, t) = pair_inputs(
            (&self.student_feature, &self.teacher_feature),
            student,
            teacher,
        )?;
        if self.channels_last {
            (self.f)(&s.transpose(1, 2)?, &t.transpose(1, 2)?)
        } else {
            (self.f)(s, t)
        }
    }
    fn uses_features(&self) -> bool {
        self.student_feature.is_some()
    }
}

/// DIST's relation loss on the logits ([`dist_loss`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Dist {
    /// Inter-class (per-sample) relation weight β.
    pub beta: f64,
    /// Intra-class (per-class, over the batch) relation weight γ.
    pub gamma: f64,
    /// Softmax temperature τ.
    pub t: f64,
}

impl DistillLoss for Dist {
    fn name(&self) -> &str {
        "dist"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        dist_loss(
            &student.logits,
            &teacher.logits,
            self.beta,
            self.gamma,
            self.t,
        )
    }
}

/// KD between z-scored logits ([`ls_kd_loss`], logit standardisation).
#[derive(Debug, Clone, PartialEq)]
pub struct LsKd {
    /// Softmax temperature T (applied to the standardised logits).
    pub t: f64,
}

impl DistillLoss for LsKd {
    fn name(&self) -> &str {
        "ls_kd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        ls_kd_loss(&student.logits, &teacher.logits, self.t)
    }
}

/// Variational information distillation ([`vid_nll`]) through a [`VidRegressor`] (its three layers and
/// learned variance in the loss's own [`VarMap`]).
pub struct Vid {
    /// Student feature tap.
    pub student_feature: String,
    /// Teacher feature tap.
    pub teacher_feature: String,
    regressor: VidRegressor,
    varmap: VarMap,
}

impl DistillLoss for Vid {
    fn name(&self) -> &str {
        "vid"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let s = &student.feature(&self.student_feature)?.tensor;
        let t = &teacher.feature(&self.teacher_feature)?.tensor;
        self.regressor.nll(s, t)
    }
    fn uses_features(&self) -> bool {
        true
    }
    fn varmap(&self) -> Option<&VarMap> {
        Some(&self.varmap)
    }
}

/// Contrastive representation distillation ([`crd_loss`]) on a feature pair (or the logits): the heads, memory
/// banks and constants are a [`ContrastMemory`] in the loss's own [`VarMap`], so a checkpoint holds them.
pub struct Crd {
    /// Student feature tap (`None`: the logits).
    pub student_feature: Option<String>,
    /// Teacher feature tap (`None`: the logits).
    pub teacher_feature: Option<String>,
    memory: ContrastMemory,
    varmap: VarMap,
}

impl DistillLoss for Crd {
    fn name(&self) -> &str {
        "crd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, batch: &Batch) -> Result<Tensor> {
        let (s, t) = pair_inputs(
            (&self.student_feature, &self.teacher_feature),
            student,
            teacher,
        )?;
        self.memory
            .loss(s, t, &batch.indices)
            .map_err(|e| Error::Shape(format!("loss `crd`: {e}")))
    }
    fn uses_features(&self) -> bool {
        self.student_feature.is_some()
    }
    fn varmap(&self) -> Option<&VarMap> {
        Some(&self.varmap)
    }
}

/// OFD ([`ofd_loss`]) on pre-ReLU features through an [`OfdConnector`] (its weights and the margins in the
/// loss's own [`VarMap`]).
pub struct Ofd {
    /// Student feature tap.
    pub student_feature: String,
    /// Teacher feature tap.
    pub teacher_feature: String,
    connector: OfdConnector,
    varmap: VarMap,
}

impl DistillLoss for Ofd {
    fn name(&self) -> &str {
        "ofd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let s = &student
            .feature(&self.student_feature)
            .map_err(|e| {
                Error::msg(format!(
                    "loss `ofd`: {e} in the student's training pass (a network may give pre-ReLU taps in \
                     training only when its model asks for them: the vision MLP's `pre_activations = true`)"
                ))
            })?
            .tensor;
        let t = &teacher.feature(&self.teacher_feature)?.tensor;
        self.connector.loss(s, t)
    }
    fn uses_features(&self) -> bool {
        true
    }
    fn varmap(&self) -> Option<&VarMap> {
        Some(&self.varmap)
    }
}

/// ReviewKD ([`hcl_loss`] after a [`ReviewFusion`] of the student's stages; the fusion modules in the loss's
/// own [`VarMap`]).
pub struct ReviewKd {
    /// Student stage taps, shallowest first.
    pub student_features: Vec<String>,
    /// Teacher stage taps, shallowest first.
    pub teacher_features: Vec<String>,
    fusion: ReviewFusion,
    varmap: VarMap,
}

impl DistillLoss for ReviewKd {
    fn name(&self) -> &str {
        "reviewkd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let maps = |o: &Outputs, names: &[String]| -> Result<Vec<Tensor>> {
            names
                .iter()
                .map(|n| Ok(o.feature(n)?.tensor.clone()))
                .collect()
        };
        let s = maps(student, &self.student_features)?;
        let t = maps(teacher, &self.teacher_features)?;
        self.fusion.loss(&s, &t)
    }
    fn uses_features(&self) -> bool {
        true
    }
    fn varmap(&self) -> Option<&VarMap> {
        Some(&self.varmap)
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
/// Default DIST temperature, β and γ (the authors' ImageNet setting; CIFAR-100: τ 4, β = γ = 2).
pub const DEFAULT_DIST: f64 = 1.0;
/// Default temperature of `ls_kd` (the authors' CIFAR-100 runs).
pub const DEFAULT_LS_KD_TEMPERATURE: f64 = 2.0;
/// Default initial variance of VID (RepDistiller's `init_pred_var`).
pub const DEFAULT_VID_INIT_VAR: f64 = 5.0;

/// The spec fields (besides `name` and `weight`) each core loss accepts (its options, for `distill check`'s
/// list and for the one-line error on an option it does not take).
pub fn core_loss_options(name: &str) -> &'static [&'static str] {
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
        "pkt" | "nst" => &["student_feature", "teacher_feature"],
        "dist" => &["temperature", "beta", "gamma"],
        "ls_kd" => &["temperature"],
        "vid" => &["student_feature", "teacher_feature", "init_var"],
        "ofd" => &["student_feature", "teacher_feature"],
        "reviewkd" => &["student_features", "teacher_features", "mid_channels"],
        "crd" => &[
            "student_feature",
            "teacher_feature",
            "temperature",
            "embed_dim",
            "negatives",
            "momentum",
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
            ("gamma", s.gamma.is_some()),
            ("student_feature", s.student_feature.is_some()),
            ("teacher_feature", s.teacher_feature.is_some()),
            ("p", s.p.is_some()),
            ("distance_weight", s.distance_weight.is_some()),
            ("angle_weight", s.angle_weight.is_some()),
            ("init_var", s.init_var.is_some()),
            ("embed_dim", s.embed_dim.is_some()),
            ("negatives", s.negatives.is_some()),
            ("momentum", s.momentum.is_some()),
            ("student_features", s.student_features.is_some()),
            ("teacher_features", s.teacher_features.is_some()),
            ("mid_channels", s.mid_channels.is_some()),
            ("params", s.params.is_some()),
        ];
        let allowed = core_loss_options(self.name());
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
        self.lookup_field(&format!("{side}_feature"), side, outputs, feature)
    }

    /// [`SpecCtx::lookup`] for a tap named in the recipe field `field`.
    fn lookup_field(
        &self,
        field: &str,
        side: &str,
        outputs: &'a Outputs,
        feature: &str,
    ) -> Result<&'a Feature> {
        outputs.features.get(feature).ok_or_else(|| {
            let available = if outputs.features.is_empty() {
                "it exposes no features".to_string()
            } else {
                let names = outputs.features.keys().cloned().collect::<Vec<_>>();
                format!("available: {}", names.join(", "))
            };
            self.config(format!(
                "{field} = \"{feature}\": the {side} has no feature `{feature}` ({available})"
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

    /// `(Some(student), Some(teacher))` feature names, or `(None, None)` for the logits when neither is set.
    fn features_or_logits(&self) -> Result<(Option<String>, Option<String>)> {
        let s = self.spec;
        match (&s.student_feature, &s.teacher_feature) {
            (None, None) => {
                let (s, t) = (&self.student.logits, &self.teacher.logits);
                if s.rank() == 0 || t.rank() == 0 || s.dim(0)? != t.dim(0)? {
                    return Err(self.shape(format!(
                        "student logits {:?} and teacher logits {:?} have different batch (first) dimensions",
                        s.dims(),
                        t.dims()
                    )));
                }
                Ok((None, None))
            }
            (Some(_), Some(_)) => {
                let (sn, _, tn, _) = self.features()?;
                Ok((Some(sn.to_string()), Some(tn.to_string())))
            }
            _ => Err(self.config(
                "set both `student_feature` and `teacher_feature`, or neither (to use the logits)"
                    .to_string(),
            )),
        }
    }

    /// Computes `loss` once on the dry run's outputs, so a shape the loss cannot take fails here, naming it.
    fn try_once(&self, loss: &dyn DistillLoss) -> Result<()> {
        let batch = Batch {
            inputs: self.student.logits.clone(),
            targets: self.student.logits.clone(),
            indices: Vec::new(),
        };
        loss.compute(self.student, self.teacher, &batch)
            .map(|_| ())
            .map_err(|e| self.shape(format!("{e}")))
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
/// `train_len` is the training split's size (CRD keeps a memory row per training sample; `None` where no
/// data is loaded, e.g. `distill check`, builds a stand-in bank of one row).
pub fn build_core_loss(
    spec: &LossSpec,
    student: &Outputs,
    teacher: &Outputs,
    seed: u64,
    train_len: Option<usize>,
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
            let (student_feature, teacher_feature) = cx.features_or_logits()?;
            Box::new(Rkd {
                distance_weight,
                angle_weight,
                student_feature,
                teacher_feature,
            })
        }
        "pkt" => {
            let (student_feature, teacher_feature) = cx.features_or_logits()?;
            Box::new(PairLoss {
                name: "pkt",
                f: pkt_loss,
                student_feature,
                teacher_feature,
                channels_last: false,
            })
        }
        "nst" => {
            let (sn, sf, tn, tf) = cx.features()?;
            cx.same_kind(sn, sf, tn, tf)?;
            let channels_last = match sf.kind {
                FeatureKind::Map | FeatureKind::Attention => false,
                FeatureKind::Sequence => true,
                k => {
                    return Err(cx.shape(format!(
                        "student feature `{sn}` is a {k:?} {:?}; NST compares channels over positions and \
                         needs Map [B, C, H, W] or Sequence [B, T, H] features",
                        sf.tensor.dims()
                    )))
                }
            };
            let loss = PairLoss {
                name: "nst",
                f: nst_loss,
                student_feature: Some(sn.to_string()),
                teacher_feature: Some(tn.to_string()),
                channels_last,
            };
            cx.try_once(&loss)?;
            Box::new(loss)
        }
        "dist" => {
            let t = cx.positive("temperature", spec.temperature, DEFAULT_DIST)?;
            let beta = cx.non_negative("beta", spec.beta, DEFAULT_DIST)?;
            let gamma = cx.non_negative("gamma", spec.gamma, DEFAULT_DIST)?;
            cx.logits(2)?;
            Box::new(Dist { beta, gamma, t })
        }
        "ls_kd" => {
            let t = cx.positive("temperature", spec.temperature, DEFAULT_LS_KD_TEMPERATURE)?;
            cx.logits(2)?;
            Box::new(LsKd { t })
        }
        "vid" => {
            let init_var = cx.positive("init_var", spec.init_var, DEFAULT_VID_INIT_VAR)?;
            if init_var <= VID_EPS {
                return Err(cx.config(format!(
                    "`init_var` must be > {VID_EPS} (the variance floor)"
                )));
            }
            let (sn, sf, tn, tf) = cx.features()?;
            cx.same_kind(sn, sf, tn, tf)?;
            let wd = feature_width_dim(sf.kind);
            let (sd, td) = (sf.tensor.dims(), tf.tensor.dims());
            let varmap = VarMap::new();
            let regressor = VidRegressor::new(
                &varmap,
                matches!(sf.kind, FeatureKind::Map | FeatureKind::Attention),
                (
                    sd.get(wd).copied().unwrap_or(0),
                    td.get(wd).copied().unwrap_or(0),
                ),
                wd,
                init_var,
                seed,
                student.logits.device(),
            )?;
            let loss = Vid {
                student_feature: sn.to_string(),
                teacher_feature: tn.to_string(),
                regressor,
                varmap,
            };
            cx.try_once(&loss)?;
            Box::new(loss)
        }
        "crd" => {
            let t = cx.positive(
                "temperature",
                spec.temperature,
                CrdConfig::DEFAULT.temperature,
            )?;
            let momentum =
                cx.non_negative("momentum", spec.momentum, CrdConfig::DEFAULT.momentum)?;
            if momentum >= 1.0 {
                return Err(cx.config(format!(
                    "`momentum` must be < 1 (the memory would never move), got {momentum}"
                )));
            }
            let config = CrdConfig {
                embed_dim: spec.embed_dim.unwrap_or(CrdConfig::DEFAULT.embed_dim),
                negatives: spec.negatives.unwrap_or(CrdConfig::DEFAULT.negatives),
                temperature: t,
                momentum,
            };
            for (field, v) in [
                ("embed_dim", config.embed_dim),
                ("negatives", config.negatives),
            ] {
                if v == 0 {
                    return Err(cx.config(format!("`{field}` must be at least 1")));
                }
            }
            if train_len == Some(0) {
                return Err(cx.config("the training split is empty".to_string()));
            }
            let (student_feature, teacher_feature) = cx.features_or_logits()?;
            let (s, t) = pair_inputs((&student_feature, &teacher_feature), student, teacher)?;
            let width = |x: &Tensor| x.dims()[1..].iter().product::<usize>().max(1);
            let varmap = VarMap::new();
            let memory = ContrastMemory::new(
                &varmap,
                config,
                (width(s), width(t)),
                train_len.unwrap_or(1),
                seed,
                student.logits.device(),
            )?;
            Box::new(Crd {
                student_feature,
                teacher_feature,
                memory,
                varmap,
            })
        }
        "ofd" => {
            let (sn, sf, tn, tf) = cx.features()?;
            cx.same_kind(sn, sf, tn, tf)?;
            let (sd, td) = (sf.tensor.dims(), tf.tensor.dims());
            if !matches!(sd.len(), 2 | 4) || sd.len() != td.len() || sd[2..] != td[2..] {
                return Err(cx.shape(format!(
                    "needs vectors [B, C] or maps [B, C, H, W] of the same H and W on both sides, got \
                     `{sn}` {sd:?} and `{tn}` {td:?}"
                )));
            }
            let varmap = VarMap::new();
            let connector =
                OfdConnector::new(&varmap, (sd[1], td[1]), seed, student.logits.device())?;
            Box::new(Ofd {
                student_feature: sn.to_string(),
                teacher_feature: tn.to_string(),
                connector,
                varmap,
            })
        }
        "reviewkd" => {
            let (Some(sn), Some(tn)) = (&spec.student_features, &spec.teacher_features) else {
                return Err(cx.config(
                    "needs `student_features` and `teacher_features`: lists of map taps, shallowest stage \
                     first, as many on each side"
                        .to_string(),
                ));
            };
            if sn.is_empty() || sn.len() != tn.len() {
                return Err(cx.config(format!(
                    "`student_features` has {} taps and `teacher_features` {}: one per stage on each side, \
                     at least one",
                    sn.len(),
                    tn.len()
                )));
            }
            let mut widths = (Vec::new(), Vec::new());
            for (side, outputs, names, w) in [
                ("student", student, sn, &mut widths.0),
                ("teacher", teacher, tn, &mut widths.1),
            ] {
                for n in names {
                    let f = cx.lookup_field(&format!("{side}_features"), side, outputs, n)?;
                    if f.kind != FeatureKind::Map || f.tensor.rank() != 4 {
                        return Err(cx.shape(format!(
                            "{side} feature `{n}` is a {:?} {:?}; ReviewKD fuses maps [B, C, H, W]",
                            f.kind,
                            f.tensor.dims()
                        )));
                    }
                    w.push(f.tensor.dim(1)?);
                }
            }
            let last = *widths.0.last().expect("at least one stage");
            let mid = spec.mid_channels.unwrap_or(last.min(512));
            if mid == 0 {
                return Err(cx.config("`mid_channels` must be at least 1".to_string()));
            }
            let varmap = VarMap::new();
            let fusion = ReviewFusion::new(
                &varmap,
                &widths.0,
                &widths.1,
                mid,
                seed,
                student.logits.device(),
            )?;
            Box::new(ReviewKd {
                student_features: sn.clone(),
                teacher_features: tn.clone(),
                fusion,
                varmap,
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
