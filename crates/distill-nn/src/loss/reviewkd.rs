//! ReviewKD, "Distilling Knowledge via Knowledge Review" (Chen et al., CVPR 2021), after the authors'
//! dvlab-research/ReviewKD code (and mdistiller's copy): the student's stages are fused top-down by
//! attention-based fusion modules ([`ReviewFusion`], the authors' `ABF`s) and each fused map is compared with
//! the teacher's map of the same stage by the hierarchical context loss ([`hcl_loss`]).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::{batch_norm_train, shape_err};
use crate::Result;

/// Batch-norm `eps` of the fusion modules (PyTorch's default).
pub const REVIEWKD_BN_EPS: f64 = 1e-5;

/// The pyramid levels of [`hcl_loss`] (the authors' `[4, 2, 1]`).
pub const HCL_LEVELS: [usize; 3] = [4, 2, 1];

/// PyTorch's `F.interpolate(x, (h, w), mode="nearest")` on `[B, C, H, W]`: output row `i` reads input row
/// `floor(i · H / h)`. Gathers rows and columns, so gradients flow back to every read position.
pub fn resize_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(x.clone());
    }
    let index = |out: usize, inp: usize| -> Result<Tensor> {
        let scale = inp as f32 / out as f32; // PyTorch computes the scale in float
        let idx: Vec<u32> = (0..out)
            .map(|i| ((i as f32 * scale).floor() as usize).min(inp - 1) as u32)
            .collect();
        Ok(Tensor::from_vec(idx, out, x.device())?)
    };
    let x = x.index_select(&index(h, ih)?, 2)?;
    Ok(x.index_select(&index(w, iw)?, 3)?)
}

/// PyTorch's `F.adaptive_avg_pool2d(x, (l, l))` on `[B, C, H, W]`: cell `(i, j)` averages rows
/// `floor(i·H/l) .. ceil((i+1)·H/l)` and the columns alike.
pub fn adaptive_avg_pool2d(x: &Tensor, l: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let span = |i: usize, n: usize| (i * n / l, ((i + 1) * n).div_ceil(l));
    let mut rows = Vec::with_capacity(l);
    for i in 0..l {
        let (r0, r1) = span(i, h);
        let band = x.narrow(2, r0, r1 - r0)?;
        let mut cells = Vec::with_capacity(l);
        for j in 0..l {
            let (c0, c1) = span(j, w);
            cells.push(band.narrow(3, c0, c1 - c0)?.mean_keepdim((2, 3))?);
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Ok(Tensor::cat(&rows, 2)?)
}

/// The hierarchical context loss: for each stage pair (same shapes), the mean squared error of the maps plus,
/// for each pyramid level `l` of [`HCL_LEVELS`] below the map's height, the error of the maps pooled to
/// `l × l` at half the previous level's weight, divided by the sum of the weights; summed over the stages.
pub fn hcl_loss(student: &[Tensor], teacher: &[Tensor]) -> Result<Tensor> {
    if student.len() != teacher.len() || student.is_empty() {
        return Err(shape_err(format!(
            "hcl_loss: {} student and {} teacher maps (one pair per stage, at least one)",
            student.len(),
            teacher.len()
        )));
    }
    let mse = |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok((a - b)?.sqr()?.mean_all()?) };
    let mut total: Option<Tensor> = None;
    for (k, (fs, ft)) in student.iter().zip(teacher).enumerate() {
        if fs.dims() != ft.dims() || fs.rank() != 4 {
            return Err(shape_err(format!(
                "hcl_loss: stage {k}: student {:?} and teacher {:?} must be the same [B, C, H, W]",
                fs.dims(),
                ft.dims()
            )));
        }
        let ft = ft.detach();
        let h = fs.dim(2)?;
        let mut loss = mse(fs, &ft)?;
        let (mut cnt, mut tot) = (1.0, 1.0);
        for l in HCL_LEVELS {
            if l >= h {
                continue;
            }
            cnt /= 2.0;
            let pooled = mse(&adaptive_avg_pool2d(fs, l)?, &adaptive_avg_pool2d(&ft, l)?)?;
            loss = (loss + pooled.affine(cnt, 0.0)?)?;
            tot += cnt;
        }
        let loss = loss.affine(1.0 / tot, 0.0)?;
        total = Some(match total {
            None => loss,
            Some(t) => (t + loss)?,
        });
    }
    Ok(total.expect("at least one stage"))
}

/// One attention-based fusion module (the authors' `ABF`).
struct Abf {
    conv1: Tensor,
    bn1: (Tensor, Tensor),
    conv2: Tensor,
    bn2: (Tensor, Tensor),
    att: Option<(Tensor, Tensor)>,
}

impl Abf {
    /// `x` the student's map of this stage, `res` the previous (deeper) module's fused map, `out` the teacher
    /// map's `(H, W)`; returns the module's output (teacher channels, teacher size) and its fused map.
    fn forward(
        &self,
        x: &Tensor,
        res: Option<&Tensor>,
        out: (usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        let dt = x.dtype();
        let (_, _, h, w) = x.dims4()?;
        let mut x = batch_norm_train(
            &x.conv2d(&self.conv1.to_dtype(dt)?, 0, 1, 1, 1)?,
            &self.bn1.0,
            &self.bn1.1,
            REVIEWKD_BN_EPS,
        )?;
        if let (Some((aw, ab)), Some(res)) = (&self.att, res) {
            let y = resize_nearest(res, h, w)?;
            let z = Tensor::cat(&[&x, &y], 1)?.conv2d(&aw.to_dtype(dt)?, 0, 1, 1, 1)?;
            let z = candle_nn::ops::sigmoid(
                &z.broadcast_add(&ab.to_dtype(dt)?.reshape((1, 2, 1, 1))?)?,
            )?;
            x = (x.broadcast_mul(&z.narrow(1, 0, 1)?)? + y.broadcast_mul(&z.narrow(1, 1, 1)?)?)?;
        }
        let x = resize_nearest(&x, out.0, out.1)?;
        let y = batch_norm_train(
            &x.conv2d(&self.conv2.to_dtype(dt)?, 1, 1, 1, 1)?,
            &self.bn2.0,
            &self.bn2.1,
            REVIEWKD_BN_EPS,
        )?;
        Ok((y, x))
    }
}

/// ReviewKD's fusion of the student's stages: one [`Abf`] per stage, in the [`VarMap`] given to
/// [`ReviewFusion::new`] as `abfs.{i}.conv1.0.weight` (1×1, student channels → `mid`), `abfs.{i}.conv1.1.*`
/// (its batch norm), `abfs.{i}.conv2.0.weight` (3×3, `mid` → teacher channels), `abfs.{i}.conv2.1.*` and,
/// on every stage but the deepest, `abfs.{i}.att_conv.0.*` (1×1, `2·mid` → 2, then a sigmoid). Stage `i`
/// counts from the shallowest. Convolutions start He-uniform with `a = 1` as the authors' code; the attention
/// convolution as PyTorch's default. The batch norms use batch statistics (the module only runs in training).
pub struct ReviewFusion {
    abfs: Vec<Abf>,
}

impl ReviewFusion {
    /// Fusion for student stage widths `student` and teacher widths `teacher` (shallowest first, as many of
    /// each), `mid` channels inside, initialised from `seed`.
    pub fn new(
        varmap: &VarMap,
        student: &[usize],
        teacher: &[usize],
        mid: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if student.len() != teacher.len() || student.is_empty() || mid == 0 {
            return Err(shape_err(format!(
                "reviewkd: {} student and {} teacher stages with {mid} mid channels (as many stages on each \
                 side, at least one; mid > 0)",
                student.len(),
                teacher.len()
            )));
        }
        let vb = crate::init::seeded_var_builder(varmap, seed, device);
        let n = student.len();
        let he = |fan_in: usize| {
            let b = (3.0 / fan_in as f64).sqrt();
            candle_nn::Init::Uniform { lo: -b, up: b }
        };
        let abfs = (0..n)
            .map(|i| -> Result<Abf> {
                let vb = vb.pp(format!("abfs.{i}"));
                let (c, t) = (student[i], teacher[i]);
                let bn = |vb: candle_nn::VarBuilder, ch: usize| -> Result<(Tensor, Tensor)> {
                    Ok((
                        vb.get_with_hints(ch, "weight", candle_nn::Init::Const(1.0))?,
                        vb.get_with_hints(ch, "bias", candle_nn::Init::Const(0.0))?,
                    ))
                };
                let att = if i + 1 < n {
                    let b = 1.0 / (2.0 * mid as f64).sqrt();
                    let u = candle_nn::Init::Uniform { lo: -b, up: b };
                    let vb = vb.pp("att_conv.0");
                    Some((
                        vb.get_with_hints((2, 2 * mid, 1, 1), "weight", u)?,
                        vb.get_with_hints(2, "bias", u)?,
                    ))
                } else {
                    None
                };
                Ok(Abf {
                    conv1: vb.get_with_hints((mid, c, 1, 1), "conv1.0.weight", he(c))?,
                    bn1: bn(vb.pp("conv1.1"), mid)?,
                    conv2: vb.get_with_hints((t, mid, 3, 3), "conv2.0.weight", he(9 * mid))?,
                    bn2: bn(vb.pp("conv2.1"), t)?,
                    att,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { abfs })
    }

    /// The fused student maps, one per stage (shallowest first), each the shape of the teacher's map of that
    /// stage (`teacher_hw`).
    pub fn forward(
        &self,
        student: &[Tensor],
        teacher_hw: &[(usize, usize)],
    ) -> Result<Vec<Tensor>> {
        let n = self.abfs.len();
        if student.len() != n || teacher_hw.len() != n {
            return Err(shape_err(format!(
                "reviewkd: built for {n} stages, got {} student maps and {} teacher sizes",
                student.len(),
                teacher_hw.len()
            )));
        }
        let mut out = vec![None; n];
        let mut res: Option<Tensor> = None;
        for i in (0..n).rev() {
            let (y, x) = self.abfs[i].forward(&student[i], res.as_ref(), teacher_hw[i])?;
            out[i] = Some(y);
            res = Some(x);
        }
        Ok(out.into_iter().map(|y| y.expect("every stage")).collect())
    }

    /// ReviewKD's loss: [`hcl_loss`] of the fused student maps against the teacher's (no gradient to them).
    pub fn loss(&self, student: &[Tensor], teacher: &[Tensor]) -> Result<Tensor> {
        let hw: Vec<(usize, usize)> = teacher
            .iter()
            .map(|t| -> Result<(usize, usize)> {
                let (_, _, h, w) = t.dims4()?;
                Ok((h, w))
            })
            .collect::<Result<_>>()?;
        let fused = self.forward(student, &hw)?;
        hcl_loss(&fused, teacher)
    }
}
