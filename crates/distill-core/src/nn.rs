//! Building blocks for networks: seeded parameter creation, seeded dropout, depthwise convolution and the
//! ResNet basic block.
//!
//! candle's CPU random generator cannot be seeded, so [`seeded_var_builder`] creates every parameter from
//! [`Rng`] streams derived from the run seed and the parameter's name: the same seed gives the same initial
//! weights whatever order layers are built in.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{
    init::{FanInOut, NormalOrUniform},
    var_builder::SimpleBackend,
    Init, VarBuilder, VarMap,
};

use crate::{network::Mode, Result, Rng};

struct SeededBackend {
    varmap: VarMap,
    seed: u64,
}

fn init_values(init: Init, shape: &Shape, rng: &mut Rng) -> Vec<f32> {
    let n = shape.elem_count();
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * rng.normal()) as f32)
            .collect(),
        Init::Uniform { lo, up } => (0..n)
            .map(|_| (lo + (up - lo) * rng.uniform()) as f32)
            .collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = match fan {
                FanInOut::FanIn => FanInOut::FanIn.for_shape(shape),
                FanInOut::FanOut => FanInOut::FanOut.for_shape(shape),
            };
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| (-b + 2.0 * b * rng.uniform()) as f32)
                        .collect()
                }
                NormalOrUniform::Normal => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
            }
        }
    }
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            let t = v.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` exists with shape {:?}, asked for {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            return Ok(t.clone());
        }
        let mut rng = Rng::derive(self.seed, &[&"init", &name]);
        let values = init_values(h, &s, &mut rng);
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.varmap.data().lock().expect("varmap lock");
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

/// A `VarBuilder` that creates parameters in `varmap`, initialised from `seed` and each parameter's name.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededBackend {
            varmap: varmap.clone(),
            seed,
        }),
        DType::F32,
        device.clone(),
    )
}

/// Inverted dropout with probability `p`, its mask drawn from the step seed in `mode` and `salt`
/// (a per-layer label). Identity in [`Mode::Eval`] or when `p == 0`.
pub fn dropout(x: &Tensor, p: f64, mode: Mode, salt: &str) -> Result<Tensor> {
    let Mode::Train { seed } = mode else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = Rng::derive(seed, &[&"dropout", &salt]);
    let keep = 1.0 - p as f32;
    let scale = 1.0 / keep;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.uniform_f32() < keep { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// Depthwise 2-D convolution: `x` `[B, C, H, W]`, `weight` `[C, 1, kh, kw]` (one filter per channel, as a
/// PyTorch `Conv2d(C, C, k, groups=C)` stores it), zero `padding` (rows, columns) and `stride` (rows, columns).
///
/// Computed as a sum of `kh * kw` shifted, per-channel-scaled copies of the input, which on CPU is much faster
/// than candle's grouped `conv2d` (one small convolution per channel) and has the same autograd. Models use
/// [`crate::ops::depthwise_conv2d`], one fused op on f32 CPU tensors, which falls back to this elsewhere.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    padding: (usize, usize),
    stride: (usize, usize),
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 {
        return Err(crate::Error::Shape(format!(
            "depthwise_conv2d: weight {:?} does not fit input {:?} (expected [{c}, 1, kh, kw])",
            weight.dims(),
            x.dims()
        )));
    }
    let (sh, sw) = (stride.0.max(1), stride.1.max(1));
    let (hp, wp) = (h + 2 * padding.0, w + 2 * padding.1);
    if hp < kh || wp < kw {
        return Err(crate::Error::Shape(format!(
            "depthwise_conv2d: kernel {kh}x{kw} is larger than the padded input {hp}x{wp}"
        )));
    }
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    let xp = x
        .pad_with_zeros(2, padding.0, padding.0)?
        .pad_with_zeros(3, padding.1, padding.1)?;
    let pick = |t: Tensor, dim: usize, start: usize, n: usize, s: usize| -> Result<Tensor> {
        if s == 1 {
            Ok(t.narrow(dim, start, n)?)
        } else {
            let idx: Vec<u32> = (0..n).map(|i| (start + i * s) as u32).collect();
            let idx = Tensor::new(idx.as_slice(), t.device())?;
            Ok(t.contiguous()?.index_select(&idx, dim)?)
        }
    };
    let mut out: Option<Tensor> = None;
    for i in 0..kh {
        let rows = pick(xp.clone(), 2, i, ho, sh)?;
        for j in 0..kw {
            let patch = pick(rows.clone(), 3, j, wo, sw)?;
            let k = weight
                .narrow(2, i, 1)?
                .narrow(3, j, 1)?
                .reshape((1, c, 1, 1))?;
            let term = patch.broadcast_mul(&k)?;
            out = Some(match out {
                None => term,
                Some(o) => (o + term)?,
            });
        }
    }
    let out = out.expect("kernel has at least one tap");
    debug_assert_eq!(out.dims(), [b, c, ho, wo]);
    Ok(out)
}

/// A bias-free `k`x`k` convolution `cin -> cout` with padding `k / 2` (PyTorch's `Conv2d(.., bias=False)`).
pub fn conv_no_bias(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<candle_nn::Conv2d> {
    let cfg = candle_nn::Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    Ok(candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb)?)
}

/// A batch norm over `c` channels with PyTorch's defaults (eps 1e-5, momentum 0.1, scale and shift).
pub fn batch_norm(c: usize, vb: VarBuilder) -> Result<candle_nn::BatchNorm> {
    Ok(candle_nn::batch_norm(
        c,
        candle_nn::BatchNormConfig::default(),
        vb,
    )?)
}

/// The ResNet basic block (He et al. 2016): `conv3x3(stride)-bn-relu-conv3x3-bn`, plus the identity or a
/// `downsample` 1x1 conv + bn when the stride or width changes, then ReLU. Parameter names follow PyTorch's
/// torchvision state dicts: `conv1`, `bn1`, `conv2`, `bn2`, `downsample.0`, `downsample.1`. Its convolutions
/// and batch norms are the fused [`crate::ops`].
pub struct BasicBlock {
    conv1: candle_nn::Conv2d,
    bn1: candle_nn::BatchNorm,
    conv2: candle_nn::Conv2d,
    bn2: candle_nn::BatchNorm,
    downsample: Option<(candle_nn::Conv2d, candle_nn::BatchNorm)>,
}

impl BasicBlock {
    /// A block `cin -> cout` whose first convolution has `stride`.
    pub fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let downsample = if stride != 1 || cin != cout {
            Some((
                conv_no_bias(cin, cout, 1, stride, vb.pp("downsample.0"))?,
                batch_norm(cout, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv_no_bias(cin, cout, 3, stride, vb.pp("conv1"))?,
            bn1: batch_norm(cout, vb.pp("bn1"))?,
            conv2: conv_no_bias(cout, cout, 3, 1, vb.pp("conv2"))?,
            bn2: batch_norm(cout, vb.pp("bn2"))?,
            downsample,
        })
    }

    /// FLOPs (2 per multiply-add) of the block's convolutions for `out_pixels` output positions per image.
    pub fn flops(cin: usize, cout: usize, stride: usize, out_pixels: usize) -> u64 {
        let conv = |cin: usize, k: usize| 2 * (cin * cout * k * k * out_pixels) as u64;
        let mut f = conv(cin, 3) + conv(cout, 3);
        if stride != 1 || cin != cout {
            f += conv(cin, 1);
        }
        f
    }

    /// The block on `x` `[B, cin, H, W]`; `train` selects batch statistics (and updates the running ones).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        use crate::ops::{batch_norm as bn, conv2d_layer};
        let out = bn(&self.bn1, &conv2d_layer(&self.conv1, x)?, train, true)?;
        let out = bn(&self.bn2, &conv2d_layer(&self.conv2, &out)?, train, false)?;
        let residual = match &self.downsample {
            Some((c, b)) => bn(b, &conv2d_layer(c, x)?, train, false)?,
            None => x.clone(),
        };
        Ok((out + residual)?.relu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_init_is_reproducible_and_order_independent() -> Result<()> {
        let dev = Device::Cpu;
        let a = VarMap::new();
        let vb = seeded_var_builder(&a, 5, &dev);
        let _ = candle_nn::linear(10, 20, vb.pp("fc1"))?;
        let _ = candle_nn::linear(20, 3, vb.pp("fc2"))?;
        let b = VarMap::new();
        let vb = seeded_var_builder(&b, 5, &dev);
        let _ = candle_nn::linear(20, 3, vb.pp("fc2"))?;
        let _ = candle_nn::linear(10, 20, vb.pp("fc1"))?;
        let get = |m: &VarMap, k: &str| -> Vec<f32> {
            m.data().lock().unwrap()[k]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        for k in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
            assert_eq!(get(&a, k), get(&b, k), "{k}");
        }
        // candle's linear: weight ~ Kaiming normal (std = sqrt(2 / fan_in)), bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let w = get(&a, "fc1.weight");
        let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - (2.0f32 / 10.0).sqrt()).abs() < 0.08, "std {std}");
        assert!(get(&a, "fc1.bias")
            .iter()
            .all(|b| b.abs() <= 1.0 / 10f32.sqrt()));
        let c = VarMap::new();
        let _ = candle_nn::linear(10, 20, seeded_var_builder(&c, 6, &dev).pp("fc1"))?;
        assert_ne!(get(&a, "fc1.weight"), get(&c, "fc1.weight"));
        Ok(())
    }

    #[test]
    fn dropout_keeps_expectation_and_is_seeded() -> Result<()> {
        let x = Tensor::ones((100, 100), DType::F32, &Device::Cpu)?;
        let y1 = dropout(&x, 0.5, Mode::Train { seed: 1 }, "h")?;
        let y2 = dropout(&x, 0.5, Mode::Train { seed: 1 }, "h")?;
        let y3 = dropout(&x, 0.5, Mode::Train { seed: 2 }, "h")?;
        let v1: Vec<f32> = y1.flatten_all()?.to_vec1()?;
        assert_eq!(v1, y2.flatten_all()?.to_vec1::<f32>()?);
        assert_ne!(v1, y3.flatten_all()?.to_vec1::<f32>()?);
        assert!(v1.iter().all(|&v| v == 0.0 || v == 2.0));
        let mean = v1.iter().sum::<f32>() / v1.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        let e: Vec<f32> = dropout(&x, 0.5, Mode::Eval, "h")?
            .flatten_all()?
            .to_vec1()?;
        assert!(e.iter().all(|&v| v == 1.0));
        Ok(())
    }

    #[test]
    fn depthwise_conv_matches_candles_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let (b, c, h, w) = (2, 5, 9, 7);
        let x = Tensor::from_vec(rand(b * c * h * w), (b, c, h, w), &dev)?;
        for (k, pad, stride) in [(3, 1, 1), (3, 1, 2), (5, 2, 1), (3, 0, 2), (1, 0, 1)] {
            let wt = Tensor::from_vec(rand(c * k * k), (c, 1, k, k), &dev)?;
            let ours = depthwise_conv2d(&x, &wt, (pad, pad), (stride, stride))?;
            let reference = x.conv2d(&wt, pad, stride, 1, c)?;
            assert_eq!(ours.dims(), reference.dims(), "k{k} p{pad} s{stride}");
            let d = (ours - reference)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(d < 1e-4, "k{k} p{pad} s{stride}: max diff {d}");
        }
        // gradients flow to the weight: d/dw sum(dw(x, w)) for a 1x1 kernel is the per-channel input sum
        let wv = Var::from_tensor(&Tensor::ones((c, 1, 1, 1), DType::F32, &dev)?)?;
        let y = depthwise_conv2d(&x, wv.as_tensor(), (0, 0), (1, 1))?.sum_all()?;
        let g = y.backward()?;
        let gw: Vec<f32> = g
            .get(wv.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1()?;
        let want: Vec<f32> = x.sum((0, 2, 3))?.to_vec1()?;
        for (a, b) in gw.iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert!(depthwise_conv2d(
            &x,
            &Tensor::zeros((4, 1, 3, 3), DType::F32, &dev)?,
            (1, 1),
            (1, 1)
        )
        .is_err());
        Ok(())
    }
}
