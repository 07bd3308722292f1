//! BERT-compression losses: DistilBERT's hidden-state cosine, BERT-PKD's patient loss, TinyBERT's layer-wise
//! losses, and an embedding MSE for sentence-embedding students. Logit KD is the core's `kd`.
//!
//! Layers are numbered as the network's features are: `embeddings` is layer 0, `hidden.1` … `hidden.L` the
//! transformer layers (the last one is the encoder's output), `cls.i` layer i's `[CLS]` state and `attn.i`
//! layer i's attention probabilities.

use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use distill_core::{
    losses::{DistillLoss, LossSpec},
    Batch, Error, Outputs, Result,
};
use serde::Deserialize;

use distill_nn::layers::Linear as Dense;

use crate::models::bert::dense;

/// Losses this plugin adds to the core's.
pub const LOSSES: &[&str] = &["hidden_cos", "pkd", "tinybert", "embedding_mse"];

/// Number of transformer layers behind `out` (its `hidden.N` features).
pub fn num_layers(out: &Outputs) -> usize {
    out.features
        .keys()
        .filter_map(|k| k.strip_prefix("hidden.")?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

fn params<T: for<'de> Deserialize<'de> + Default>(spec: &LossSpec) -> Result<T> {
    match &spec.params {
        None => Ok(T::default()),
        Some(t) => t.clone().try_into().map_err(|e: toml::de::Error| {
            Error::config(
                format!("loss `{}` params", spec.name),
                e.message().trim().to_string(),
            )
        }),
    }
}

fn reject_core_fields(spec: &LossSpec, allowed_features: bool) -> Result<()> {
    let mut bad = Vec::new();
    if spec.temperature.is_some() {
        bad.push("temperature");
    }
    if spec.alpha.is_some() || spec.beta.is_some() {
        bad.push("alpha/beta");
    }
    if spec.p.is_some() || spec.distance_weight.is_some() || spec.angle_weight.is_some() {
        bad.push("p/distance_weight/angle_weight");
    }
    if !allowed_features && (spec.student_feature.is_some() || spec.teacher_feature.is_some()) {
        bad.push("student_feature/teacher_feature");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::config(
            format!("loss `{}`", spec.name),
            format!("does not use {}", bad.join(", ")),
        ))
    }
}

fn width(out: &Outputs, name: &str) -> Result<usize> {
    Ok(*out.feature(name)?.tensor.dims().last().unwrap_or(&0))
}

/// Builds one of [`LOSSES`], or `Ok(None)` for another name.
pub fn build(
    spec: &LossSpec,
    student: &Outputs,
    teacher: &Outputs,
    seed: u64,
) -> Result<Option<Box<dyn DistillLoss>>> {
    let where_ = format!("loss `{}`", spec.name);
    let err = |m: String| Error::config(where_.clone(), m);
    let (ls, lt) = (num_layers(student), num_layers(teacher));
    Ok(Some(match spec.name.as_str() {
        "hidden_cos" => {
            reject_core_fields(spec, true)?;
            if spec.params.is_some() {
                return Err(err("takes no params".into()));
            }
            let s = spec
                .student_feature
                .clone()
                .unwrap_or(format!("hidden.{ls}"));
            let t = spec
                .teacher_feature
                .clone()
                .unwrap_or(format!("hidden.{lt}"));
            let (sw, tw) = (width(student, &s)?, width(teacher, &t)?);
            if sw != tw {
                return Err(err(format!(
                    "student `{s}` is {sw} wide and teacher `{t}` {tw}: the cosine loss needs equal widths \
                     (use `tinybert` or the core `hint`, which learn a projection)"
                )));
            }
            Box::new(HiddenCos { s, t })
        }
        "pkd" => {
            reject_core_fields(spec, false)?;
            let p: PkdParams = params(spec)?;
            let pairs = pkd_pairs(&p, ls, lt).map_err(err)?;
            for &(s, t) in &pairs {
                let (sw, tw) = (
                    width(student, &format!("cls.{s}"))?,
                    width(teacher, &format!("cls.{t}"))?,
                );
                if sw != tw {
                    return Err(err(format!(
                        "student layer {s} is {sw} wide and teacher layer {t} {tw}: PKD compares normalised \
                         [CLS] states, which needs equal widths"
                    )));
                }
            }
            Box::new(Pkd { pairs })
        }
        "tinybert" => {
            reject_core_fields(spec, false)?;
            let p: TinyParams = params(spec)?;
            Box::new(TinyBert::new(&p, student, teacher, seed).map_err(|e| err(e.to_string()))?)
        }
        "embedding_mse" => {
            reject_core_fields(spec, false)?;
            if spec.params.is_some() {
                return Err(err("takes no params".into()));
            }
            if student.logits.dims() != teacher.logits.dims() {
                return Err(Error::Shape(format!(
                    "{where_}: student embeddings {:?} and teacher embeddings {:?} must have the same shape",
                    student.logits.dims(),
                    teacher.logits.dims()
                )));
            }
            Box::new(EmbeddingMse)
        }
        _ => return Ok(None),
    }))
}

/// Mean over real tokens of `1 − cos(student_t, teacher_t)` (DistilBERT's cosine embedding loss on hidden
/// states), with the mask of real tokens `[B, T]`.
pub fn masked_cosine_loss(s: &Tensor, t: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if s.dims() != t.dims() {
        return Err(Error::Shape(format!(
            "hidden_cos: student states {:?} and teacher states {:?} differ",
            s.dims(),
            t.dims()
        )));
    }
    let dot = (s * t)?.sum(D::Minus1)?;
    let ns = s.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nt = t.sqr()?.sum(D::Minus1)?.sqrt()?;
    let cos = dot.div(&(ns * nt)?.clamp(1e-8, f64::MAX)?)?;
    let per_token = (cos.affine(-1.0, 1.0)? * mask)?;
    Ok(per_token
        .sum_all()?
        .div(&mask.sum_all()?.clamp(1.0, f64::MAX)?)?)
}

/// DistilBERT's hidden-state cosine loss.
#[derive(Debug, Clone)]
pub struct HiddenCos {
    s: String,
    t: String,
}

impl DistillLoss for HiddenCos {
    fn name(&self) -> &str {
        "hidden_cos"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let mask = &student.feature("token_mask")?.tensor;
        masked_cosine_loss(
            &student.feature(&self.s)?.tensor,
            &teacher.feature(&self.t)?.tensor,
            mask,
        )
    }
    fn uses_features(&self) -> bool {
        true
    }
}

/// `[pkd] params`: `strategy = "skip" | "last"`, or explicit `teacher_layers` for the student's layers
/// 1 … L−1 (the last layer is left to the logit KD, as in the paper).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkdParams {
    /// `"skip"` (default: every (Lt/Ls)-th teacher layer) or `"last"` (the teacher's last Ls−1 layers before
    /// its output layer).
    pub strategy: Option<String>,
    /// The teacher layer each student layer 1 … Ls−1 learns from.
    pub teacher_layers: Option<Vec<usize>>,
}

/// Student/teacher layer pairs of BERT-PKD.
pub fn pkd_pairs(
    p: &PkdParams,
    ls: usize,
    lt: usize,
) -> std::result::Result<Vec<(usize, usize)>, String> {
    if ls < 2 {
        return Err(format!(
            "the student has {ls} layer(s); PKD needs at least 2 (its intermediate layers learn)"
        ));
    }
    let teacher: Vec<usize> = match (&p.teacher_layers, p.strategy.as_deref()) {
        (Some(_), Some(_)) => return Err("give `strategy` or `teacher_layers`, not both".into()),
        (Some(l), None) => l.clone(),
        (None, None | Some("skip")) => (1..ls).map(|j| j * lt / ls).collect(),
        (None, Some("last")) => (1..ls).map(|j| lt - ls + j).collect(),
        (None, Some(o)) => return Err(format!("strategy `{o}` is not one of: skip, last")),
    };
    if teacher.len() != ls - 1 {
        return Err(format!(
            "teacher_layers lists {} layers; the student's intermediate layers are {}",
            teacher.len(),
            ls - 1
        ));
    }
    if let Some(&bad) = teacher.iter().find(|&&t| t == 0 || t > lt) {
        return Err(format!(
            "teacher layer {bad} does not exist (the teacher has layers 1-{lt})"
        ));
    }
    Ok((1..ls).zip(teacher).collect())
}

/// BERT-PKD's patient loss: Σ over layer pairs of the batch mean of ‖s/‖s‖ − t/‖t‖‖² on `[CLS]` states.
#[derive(Debug, Clone)]
pub struct Pkd {
    /// (student layer, teacher layer).
    pub pairs: Vec<(usize, usize)>,
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&n)?)
}

impl DistillLoss for Pkd {
    fn name(&self) -> &str {
        "pkd"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for &(s, t) in &self.pairs {
            let a = l2_normalize(&student.feature(&format!("cls.{s}"))?.tensor)?;
            let b = l2_normalize(&teacher.feature(&format!("cls.{t}"))?.tensor)?;
            let l = (a - b)?.sqr()?.sum(D::Minus1)?.mean_all()?;
            total = Some(match total {
                None => l,
                Some(x) => (x + l)?,
            });
        }
        total.ok_or_else(|| Error::msg("pkd: no layer pairs"))
    }
    fn uses_features(&self) -> bool {
        true
    }
}

/// `[tinybert] params`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyParams {
    /// The teacher layer each student layer 1 … Ls learns from (default: `round(m · Lt / Ls)`).
    pub layers: Option<Vec<usize>>,
    /// Attention-matrix MSE (default true).
    pub attention: Option<bool>,
    /// Hidden-state MSE through a learnt projection (default true).
    pub hidden: Option<bool>,
    /// Embedding-layer MSE through a learnt projection (default true).
    pub embedding: Option<bool>,
}

/// TinyBERT's Transformer-layer and embedding-layer distillation (Jiao et al. 2020): for each student layer
/// m and its teacher layer g(m), MSE between attention matrices plus MSE between the student's hidden states
/// projected by one learnt `W_h` and the teacher's; plus MSE between embedding outputs through `W_e`.
/// The attention term compares attention *probabilities* (the paper uses the pre-softmax scores).
pub struct TinyBert {
    /// (student layer, teacher layer).
    pub map: Vec<(usize, usize)>,
    attention: bool,
    hidden: bool,
    embedding: bool,
    proj_h: Option<Dense>,
    proj_e: Option<Dense>,
    varmap: VarMap,
}

impl TinyBert {
    fn new(p: &TinyParams, student: &Outputs, teacher: &Outputs, seed: u64) -> Result<Self> {
        let (ls, lt) = (num_layers(student), num_layers(teacher));
        if ls == 0 || lt == 0 {
            return Err(Error::msg(
                "needs BERT networks on both sides (no `hidden.N` features)",
            ));
        }
        let layers = p
            .layers
            .clone()
            .unwrap_or_else(|| (1..=ls).map(|m| (m * lt + ls / 2) / ls).collect());
        if layers.len() != ls {
            return Err(Error::msg(format!(
                "`layers` lists {} teacher layers for a {ls}-layer student",
                layers.len()
            )));
        }
        if let Some(&bad) = layers.iter().find(|&&t| t == 0 || t > lt) {
            return Err(Error::msg(format!(
                "teacher layer {bad} does not exist (the teacher has layers 1-{lt})"
            )));
        }
        let map: Vec<(usize, usize)> = (1..=ls).zip(layers).collect();
        let (attention, hidden, embedding) = (
            p.attention.unwrap_or(true),
            p.hidden.unwrap_or(true),
            p.embedding.unwrap_or(true),
        );
        if !(attention || hidden || embedding) {
            return Err(Error::msg(
                "attention, hidden and embedding are all off: nothing to learn",
            ));
        }
        if attention {
            let sa = student.feature("attn.1")?.tensor.dims().to_vec();
            let ta = teacher.feature("attn.1")?.tensor.dims().to_vec();
            if sa != ta {
                return Err(Error::Shape(format!(
                    "attention matrices differ: student {sa:?}, teacher {ta:?} (the attention loss needs the same \
                     number of heads)"
                )));
            }
        }
        let (sw, tw) = (width(student, "embeddings")?, width(teacher, "embeddings")?);
        let varmap = VarMap::new();
        let device: Device = student.logits.device().clone();
        let vb = distill_nn::init::seeded_var_builder(&varmap, seed, &device);
        let proj = |name: &str, on: bool| -> Result<Option<Dense>> {
            Ok(if on && sw != tw {
                Some(dense(sw, tw, vb.pp(name))?)
            } else {
                None
            })
        };
        Ok(Self {
            map,
            attention,
            hidden,
            embedding,
            proj_h: proj("proj_hidden", hidden)?,
            proj_e: proj("proj_embedding", embedding)?,
            varmap,
        })
    }
}

fn mse(a: &Tensor, b: &Tensor, what: &str) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(Error::Shape(format!(
            "tinybert {what}: student {:?} vs teacher {:?}",
            a.dims(),
            b.dims()
        )));
    }
    Ok((a - b)?.sqr()?.mean_all()?)
}

fn project(p: &Option<Dense>, x: &Tensor) -> Result<Tensor> {
    match p {
        Some(d) => d.forward(x),
        None => Ok(x.clone()),
    }
}

impl DistillLoss for TinyBert {
    fn name(&self) -> &str {
        "tinybert"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let mut terms = Vec::new();
        if self.embedding {
            let s = project(&self.proj_e, &student.feature("embeddings")?.tensor)?;
            terms.push(mse(
                &s,
                &teacher.feature("embeddings")?.tensor,
                "embeddings",
            )?);
        }
        for &(m, g) in &self.map {
            if self.attention {
                terms.push(mse(
                    &student.feature(&format!("attn.{m}"))?.tensor,
                    &teacher.feature(&format!("attn.{g}"))?.tensor,
                    "attention",
                )?);
            }
            if self.hidden {
                let s = project(
                    &self.proj_h,
                    &student.feature(&format!("hidden.{m}"))?.tensor,
                )?;
                terms.push(mse(
                    &s,
                    &teacher.feature(&format!("hidden.{g}"))?.tensor,
                    "hidden",
                )?);
            }
        }
        let mut total = terms[0].clone();
        for t in &terms[1..] {
            total = (total + t)?;
        }
        Ok(total)
    }
    fn uses_features(&self) -> bool {
        true
    }
    fn varmap(&self) -> Option<&VarMap> {
        if self.proj_h.is_some() || self.proj_e.is_some() {
            Some(&self.varmap)
        } else {
            None
        }
    }
}

/// MSE between student and teacher sentence embeddings (the `logits` of an embedding network).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingMse;

impl DistillLoss for EmbeddingMse {
    fn name(&self) -> &str {
        "embedding_mse"
    }
    fn compute(&self, student: &Outputs, teacher: &Outputs, _batch: &Batch) -> Result<Tensor> {
        let (s, t) = (&student.logits, &teacher.logits);
        if s.dims() != t.dims() {
            return Err(Error::Shape(format!(
                "embedding_mse: student {:?} vs teacher {:?}",
                s.dims(),
                t.dims()
            )));
        }
        Ok((s - t)?.sqr()?.mean_all()?)
    }
}
