//! OFD, "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019), after the authors'
//! clovaai/overhaul-distillation code: the partial L2 between a connector of the student's pre-ReLU feature
//! and the teacher's pre-ReLU feature clipped from below at a per-channel margin ([`ofd_loss`],
//! reference-tested against float64 numpy), the margin itself ([`ofd_margin`]) and the state around them
//! ([`OfdConnector`]: the 1×1 connector with its batch norm, the margins).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use super::{batch_norm_train, check_batch, check_same_shape, shape_err};
use crate::Result;

/// The batch norm `eps` of OFD's connector (PyTorch's `BatchNorm` default).
pub const OFD_BN_EPS: f64 = 1e-5;

/// `erfc(x)`, the complementary error function, to about 1e-15 relative: the positive series of erf below
/// 0.5 (where erfc > 0.47, so `1 − erf` loses nothing), the continued fraction (2,000 terms) above.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    let frac_2_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    if x < 0.5 {
        // erf(x) = 2/√π e^{−x²} Σₙ (2x²)ⁿ x / (1·3·…·(2n+1)): every term positive, no cancellation
        let (mut term, mut sum, mut n) = (x, x, 0u32);
        while term > 1e-17 * sum {
            n += 1;
            term *= 2.0 * x * x / f64::from(2 * n + 1);
            sum += term;
        }
        1.0 - frac_2_sqrt_pi * (-x * x).exp() * sum
    } else {
        // erfc(x) = e^{−x²}/√π · 1 / (x + (1/2) / (x + 1 / (x + (3/2) / (x + …)))), evaluated from the tail
        let mut f = x;
        for k in (1..=2000).rev() {
            f = x + f64::from(k) / 2.0 / f;
        }
        0.5 * frac_2_sqrt_pi * (-x * x).exp() / f
    }
}

/// OFD's margin of a channel whose pre-ReLU responses are normal with `mean` and `std` (the authors read them
/// off the batch norm before the ReLU: its bias and |weight|): the expected response below zero,
/// `E[x | x < 0] = mean − std · φ(mean / std) / Φ(−mean / std)`, or `−3 · std` when `Φ(−mean / std) ≤ 0.001`
/// (hardly any response is negative). A channel with no spread gets `min(mean, 0)`, the limit of both.
pub fn ofd_margin(mean: f64, std: f64) -> f64 {
    let s = std.abs();
    if s < 1e-12 {
        return mean.min(0.0);
    }
    let z = mean / s;
    let below = 0.5 * erfc(z / std::f64::consts::SQRT_2); // Φ(−z)
    if below > 1e-3 {
        let density = (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        mean - s * density / below
    } else {
        -3.0 * s
    }
}

/// OFD's partial L2 (the authors' `distillation_loss`), summed over every element and divided by the batch
/// size: with the teacher clipped at the margin, `t' = max(t, m)`, the squared difference `(s − t')²` counts
/// where `s > t'` or `t' > 0`. A student response below a teacher response that the ReLU zeroes anyway costs
/// nothing. `source` (the connector's output) and `target` (the teacher's pre-ReLU feature, no gradient) are
/// `[B, C, ...]` with channels in dimension 1; `margin` is `[C]`. The authors' training loop further divides by
/// 1000 (CIFAR) or 10,000 (ImageNet): that is the recipe's weight.
pub fn ofd_loss(source: &Tensor, target: &Tensor, margin: &Tensor) -> Result<Tensor> {
    const F: &str = "ofd_loss";
    check_same_shape(F, "source and target", source, target)?;
    check_batch(F, source, target)?;
    let b = source.dim(0)?;
    if source.rank() < 2 || margin.dims() != [source.dim(1)?] {
        return Err(shape_err(format!(
            "{F}: expected [B, C, ...] features and a [C] margin, got {:?} and {:?}",
            source.dims(),
            margin.dims()
        )));
    }
    let mut shape = vec![1, source.dim(1)?];
    shape.resize(source.rank(), 1);
    let m = margin.to_dtype(source.dtype())?.reshape(shape)?;
    let t = target.detach().broadcast_maximum(&m)?;
    let s = source.detach();
    let mask = (s.gt(&t)?.to_dtype(source.dtype())? + t.gt(0.0)?.to_dtype(source.dtype())?)?
        .clamp(0.0, 1.0)?;
    let sq = (source - &t)?.sqr()?;
    Ok((sq * mask)?.sum_all()?.affine(1.0 / b as f64, 0.0)?)
}

/// OFD's connector and margins: a 1×1 convolution (a linear map on vectors) from the student's width to the
/// teacher's, `connector.0.weight` `[teacher, student]` (He-normal over the output width, as the authors'
/// code), then a batch norm in training mode (batch statistics; `connector.1.weight` and `.bias`). The margins
/// (`margin`, `[teacher]`) come from the teacher feature's per-channel mean and standard deviation over the
/// first batch (`state` = batches seen): the authors read them off the teacher's batch norm, which an MLP or a
/// GCN does not have. Everything lives in the [`VarMap`] given to [`OfdConnector::new`], so a checkpoint holds
/// it; the margins and `state` get no gradient.
pub struct OfdConnector {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    margin: Var,
    state: Var,
}

impl OfdConnector {
    /// The connector for channel widths `(student, teacher)`, created in `varmap` and initialised from `seed`.
    pub fn new(
        varmap: &VarMap,
        widths: (usize, usize),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let vb = crate::init::seeded_var_builder(varmap, seed, device);
        let (s, t) = widths;
        let he = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: (2.0 / t as f64).sqrt(),
        };
        let weight = vb.get_with_hints((t, s), "connector.0.weight", he)?;
        let gamma = vb.get_with_hints(t, "connector.1.weight", candle_nn::Init::Const(1.0))?;
        let beta = vb.get_with_hints(t, "connector.1.bias", candle_nn::Init::Const(0.0))?;
        vb.get_with_hints(t, "margin", candle_nn::Init::Const(0.0))?;
        vb.get_with_hints(1, "state", candle_nn::Init::Const(0.0))?;
        let var = |name: &str| varmap.data().lock().expect("varmap lock")[name].clone();
        Ok(Self {
            weight,
            gamma,
            beta,
            margin: var("margin"),
            state: var("state"),
        })
    }

    /// The per-channel margins now (zeros before the first batch).
    pub fn margins(&self) -> Result<Vec<f64>> {
        Ok(self.margin.as_tensor().to_dtype(DType::F64)?.to_vec1()?)
    }

    /// The loss of one training batch: pre-ReLU features `[B, C]` or `[B, C, H, W]` (the same spatial size on
    /// both sides); the first batch sets the margins.
    pub fn loss(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        const F: &str = "ofd";
        let (sd, td) = (student.dims(), teacher.dims());
        let (sw, tw) = (self.weight.dim(1)?, self.weight.dim(0)?);
        let fits = |d: &[usize], w: usize| (d.len() == 2 || d.len() == 4) && d[1] == w;
        if !fits(sd, sw)
            || !fits(td, tw)
            || sd.len() != td.len()
            || sd[0] != td[0]
            || sd[2..] != td[2..]
        {
            return Err(shape_err(format!(
                "{F}: expected student [B, {sw}] and teacher [B, {tw}] vectors, or maps [B, C, H, W] of the \
                 same B, H and W, got {sd:?} and {td:?}"
            )));
        }
        // channels last, one row per position: the 1×1 convolution and the batch norm act on rows
        let rows = |x: &Tensor| -> Result<Tensor> {
            Ok(if x.rank() == 4 {
                let c = x.dim(1)?;
                x.permute((0, 2, 3, 1))?.reshape(((), c))?
            } else {
                x.clone()
            })
        };
        let (s, t) = (rows(student)?, rows(teacher)?.detach());
        let dt = s.dtype();
        let y = s.matmul(&self.weight.to_dtype(dt)?.t()?)?;
        let y = batch_norm_train(&y, &self.gamma, &self.beta, OFD_BN_EPS)?;
        let seen = self
            .state
            .as_tensor()
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?[0];
        if seen == 0.0 {
            let t64 = t.to_dtype(DType::F64)?;
            let mean = t64.mean(0)?;
            let std = t64
                .broadcast_sub(&mean.unsqueeze(0)?)?
                .sqr()?
                .mean(0)?
                .sqrt()?;
            let margins: Vec<f64> = mean
                .to_vec1::<f64>()?
                .into_iter()
                .zip(std.to_vec1::<f64>()?)
                .map(|(m, s)| ofd_margin(m, s))
                .collect();
            let margins = Tensor::from_vec(margins, tw, t.device())?;
            self.margin.set(&margins.to_dtype(self.margin.dtype())?)?;
        }
        let next = Tensor::new(&[seen + 1.0], t.device())?;
        self.state.set(&next.to_dtype(self.state.dtype())?)?;
        // per sample, not per position: the authors sum over the whole map and divide by the batch size
        let per_row = ofd_loss(&y, &t, &self.margin.as_tensor().detach())?;
        Ok(per_row.affine(s.dim(0)? as f64 / sd[0] as f64, 0.0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Values from Python's `math.erfc` (double precision).
    #[test]
    fn erfc_matches_python() {
        for (x, want) in [
            (0.0, 1.0),
            (0.3, 0.671_373_240_540_872_6),
            // either side of the switch from the series to the continued fraction
            (0.49, 0.488_331_738_811_476_9),
            (0.5, 0.479_500_122_186_953_5),
            (0.9, 0.203_091_787_577_167_86),
            (-1.2, 1.910_313_978_229_635_4),
            (2.4, 6.885_138_966_450_789e-4),
            (2.6, 2.360_344_165_293_490_8e-4),
            (4.0, 1.541_725_790_028_002e-8),
            (7.5, 2.776_649_386_030_569e-26),
        ] {
            let got = erfc(x);
            assert!(
                (got - want).abs() <= 1e-14 * want.abs(),
                "erfc({x}) = {got:e}, python says {want:e}"
            );
        }
    }

    /// The connector trains (gradients reach its weight and batch norm, none the margins or the state); the
    /// first batch sets the margins from the teacher's per-channel statistics and later batches keep them;
    /// the loss is [`ofd_loss`] of the batch-normed connector output; maps sum over positions per sample.
    #[test]
    fn the_first_batch_sets_the_margins_and_later_batches_keep_them() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let c = OfdConnector::new(&vm, (3, 2), 7, &dev)?;
        assert_eq!(c.margins()?, vec![0.0, 0.0]);
        let s = Tensor::new(
            &[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 1.0, 0.0]],
            &dev,
        )?;
        let t = Tensor::new(&[[1.0f32, -2.0], [-1.0, 0.5], [0.0, -0.4]], &dev)?;
        let loss = c.loss(&s, &t)?;
        // the teacher's channels: means 0 and -0.6333, population stds
        let col = |j: usize| -> (f64, f64) {
            let v: Vec<f64> = t
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap()
                .iter()
                .map(|r| r[j])
                .collect();
            let m = v.iter().sum::<f64>() / 3.0;
            let s = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 3.0).sqrt();
            (m, s)
        };
        let want: Vec<f64> = (0..2).map(|j| ofd_margin(col(j).0, col(j).1)).collect();
        let got = c.margins()?;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "margins {got:?}, want {want:?}");
        }
        // the loss by hand: connector, batch norm (γ 1, β 0 at the start), partial L2
        let w = vm.data().lock().unwrap()["connector.0.weight"]
            .as_tensor()
            .clone();
        let y = s.matmul(&w.t()?)?;
        let m = y.mean_keepdim(0)?;
        let v = y.broadcast_sub(&m)?.sqr()?.mean_keepdim(0)?;
        let y = y
            .broadcast_sub(&m)?
            .broadcast_div(&(v + OFD_BN_EPS)?.sqrt()?)?;
        let margin = Tensor::new(&[want[0] as f32, want[1] as f32], &dev)?;
        let expect = val(&ofd_loss(&y, &t, &margin)?);
        assert!(
            (val(&loss) - expect).abs() < 1e-5,
            "{} vs {expect}",
            val(&loss)
        );
        let grads = loss.backward()?;
        let data = vm.data().lock().unwrap();
        for name in [
            "connector.0.weight",
            "connector.1.weight",
            "connector.1.bias",
        ] {
            assert!(
                grads.get(data[name].as_tensor()).is_some(),
                "no gradient for {name}"
            );
        }
        for name in ["margin", "state"] {
            assert!(
                grads.get(data[name].as_tensor()).is_none(),
                "{name} got a gradient"
            );
        }
        drop(data);
        // a second batch keeps the margins
        let t2 = (t.affine(3.0, 5.0))?;
        c.loss(&s, &t2)?;
        assert_eq!(c.margins()?, got);
        // maps: the same numbers as the rows they hold, times the positions per sample
        let vm2 = VarMap::new();
        let c2 = OfdConnector::new(&vm2, (3, 2), 7, &dev)?;
        // [1, C, H = 3, W = 1] maps whose positions hold s's and t's rows
        let sm = s.t()?.contiguous()?.reshape((1, 3, 3, 1))?;
        let tm = t.t()?.contiguous()?.reshape((1, 2, 3, 1))?;
        let lm = val(&c2.loss(&sm, &tm)?);
        assert!(
            (lm - 3.0 * val(&loss)).abs() < 1e-4 * lm.abs().max(1.0),
            "{lm} vs 3 × {}",
            val(&loss)
        );
        Ok(())
    }

    #[test]
    fn shapes_are_checked() -> Result<()> {
        let dev = Device::Cpu;
        let c = OfdConnector::new(&VarMap::new(), (3, 2), 0, &dev)?;
        let e = c
            .loss(
                &Tensor::zeros((4, 3), DType::F32, &dev)?,
                &Tensor::zeros((4, 5), DType::F32, &dev)?,
            )
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ofd") && e.contains("[4, 5]"), "{e}");
        let e = c
            .loss(
                &Tensor::zeros((4, 3, 2, 2), DType::F32, &dev)?,
                &Tensor::zeros((4, 2, 3, 3), DType::F32, &dev)?,
            )
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("same B, H and W"), "{e}");
        Ok(())
    }
}
