//! Convolutions with PyTorch's names (`weight` `[out, in/groups, k..]`, `bias`): [`Conv1d`], [`Conv2d`],
//! [`ConvBn`] (conv + batch norm + ReLU) and [`DepthwiseSeparable`]. All run the fused [`crate::ops`].

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::BatchNorm2d;
use crate::{ops, Error, Result};

/// The shape of a convolution (1-D or 2-D, square kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Whether there is a bias.
    pub bias: bool,
}

impl ConvConfig {
    /// `cin -> cout` with a `k` kernel, stride 1, "same" padding `k / 2` and a bias (PyTorch's default).
    pub fn new(cin: usize, cout: usize, k: usize) -> Self {
        Self {
            in_channels: cin,
            out_channels: cout,
            kernel: k,
            stride: 1,
            padding: k / 2,
            bias: true,
        }
    }
    /// The same with `stride`.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    /// The same with `padding`.
    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }
    /// The same with or without a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// Output length of a side of `n` inputs.
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride.max(1) + 1
    }
    /// FLOPs (2 per multiply-add) for `out_positions` output positions per sample, for a kernel of
    /// `taps` positions (`k` for 1-D, `k²` for 2-D).
    fn flops(&self, taps: usize, out_positions: usize) -> u64 {
        2 * (self.in_channels * self.out_channels * taps * out_positions) as u64
    }
    fn check(&self, what: &str) -> Result<()> {
        if self.in_channels == 0 || self.out_channels == 0 || self.kernel == 0 || self.stride == 0 {
            return Err(Error::Shape(format!(
                "{what}: channels, kernel and stride must be positive, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// A 2-D convolution, PyTorch's `nn.Conv2d` (PyTorch's default initialisation, as candle-nn's).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    cfg: ConvConfig,
}

impl Conv2d {
    /// The convolution `cfg`, `weight` (and `bias`) under `vb`.
    pub fn new(cfg: &ConvConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check("conv2d")?;
        let c = candle_nn::Conv2dConfig {
            padding: cfg.padding,
            stride: cfg.stride,
            ..Default::default()
        };
        let (i, o, k) = (cfg.in_channels, cfg.out_channels, cfg.kernel);
        let inner = if cfg.bias {
            candle_nn::conv2d(i, o, k, c, vb)?
        } else {
            candle_nn::conv2d_no_bias(i, o, k, c, vb)?
        };
        Ok(Self { inner, cfg: *cfg })
    }
    /// The convolution of `x` `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d_layer(&self.inner, x)
    }
    /// `relu(conv(x))`, as one node.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d_layer_relu(&self.inner, x)
    }
    /// `max_pool(relu(conv(x)), pool)`, as one node.
    pub fn forward_relu_pool(&self, x: &Tensor, pool: usize) -> Result<Tensor> {
        ops::conv2d_layer_relu_pool(&self.inner, x, pool)
    }
    /// The configuration.
    pub fn config(&self) -> &ConvConfig {
        &self.cfg
    }
    /// FLOPs for an `h`x`w` output map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.cfg.flops(self.cfg.kernel * self.cfg.kernel, h * w)
    }
    /// candle's layer.
    pub fn inner(&self) -> &candle_nn::Conv2d {
        &self.inner
    }
}

/// A 1-D convolution, PyTorch's `nn.Conv1d`, on [`ops::conv1d`] (whose kernel gradient is right, unlike
/// candle 0.11's CPU `conv1d`).
#[derive(Debug, Clone)]
pub struct Conv1d {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) cfg: ConvConfig,
}

impl Conv1d {
    /// The convolution `cfg`: `weight` `[out, in, k]` and `bias` `[out]` under `vb`, both `U(±1/sqrt(in·k))`
    /// (PyTorch's default).
    pub fn new(cfg: &ConvConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check("conv1d")?;
        let bound = 1.0 / ((cfg.in_channels * cfg.kernel) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints(
            (cfg.out_channels, cfg.in_channels, cfg.kernel),
            "weight",
            init,
        )?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(cfg.out_channels, "bias", init)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            cfg: *cfg,
        })
    }
    /// The convolution of `x` `[B, C, L]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv1d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.cfg.stride,
            self.cfg.padding,
        )
    }
    /// The configuration.
    pub fn config(&self) -> &ConvConfig {
        &self.cfg
    }
    /// FLOPs for `l` output positions.
    pub fn flops(&self, l: usize) -> u64 {
        self.cfg.flops(self.cfg.kernel, l)
    }
}

/// `conv` (no bias) + `bn` (+ ReLU): parameters `conv.weight`, `bn.{weight,bias,running_mean,running_var}`.
#[derive(Debug, Clone)]
pub struct ConvBn {
    pub(crate) conv: Conv2d,
    pub(crate) bn: BatchNorm2d,
}

impl ConvBn {
    /// The block `cfg` (its `bias` is ignored: the batch norm shifts), under `vb.pp("conv")` and
    /// `vb.pp("bn")`.
    pub fn new(cfg: &ConvConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_names(cfg, vb.pp("conv"), vb.pp("bn"))
    }
    /// The block with its convolution and batch norm under two var builders (e.g. torchvision's
    /// `conv1` / `bn1` pairs).
    pub fn with_names(cfg: &ConvConfig, conv: VarBuilder, bn: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&cfg.bias(false), conv)?,
            bn: BatchNorm2d::new(cfg.out_channels, bn)?,
        })
    }
    /// `bn(conv(x))`, then ReLU when `relu`; batch statistics when `train`. In evaluation the batch norm is
    /// folded into the convolution ([`ops::conv2d_bn`]: inference, no autograd).
    pub fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        conv_bn(&self.conv, &self.bn, x, train, relu)
    }
    /// FLOPs for an `h`x`w` output map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.conv.flops(h, w)
    }
}

/// `bn(conv(x))` (+ ReLU): composed in training (batch statistics), folded into one convolution in evaluation
/// ([`ops::conv2d_bn`]: inference, no autograd).
pub fn conv_bn(
    conv: &Conv2d,
    bn: &BatchNorm2d,
    x: &Tensor,
    train: bool,
    relu: bool,
) -> Result<Tensor> {
    if train {
        bn.forward(&conv.forward(x)?, true, relu)
    } else {
        ops::conv2d_bn(conv.inner(), bn.inner(), x, relu)
    }
}

/// A depthwise-separable block (MobileNet; "Hello Edge"'s DS-CNN): depthwise `k`x`k` conv (`groups = c`) +
/// BN + ReLU, pointwise 1x1 conv + BN + ReLU. Parameters `dw.weight` `[c, 1, k, k]`, `bn_dw.*`,
/// `pw.weight` `[cout, c, 1, 1]`, `bn_pw.*`.
#[derive(Debug, Clone)]
pub struct DepthwiseSeparable {
    pub(crate) dw: Tensor,
    pub(crate) bn_dw: BatchNorm2d,
    pub(crate) pw: Conv2d,
    pub(crate) bn_pw: BatchNorm2d,
    pub(crate) cfg: ConvConfig,
}

impl DepthwiseSeparable {
    /// The block `cfg` (`in_channels` depthwise, then `out_channels` pointwise; `bias` ignored).
    pub fn new(cfg: &ConvConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check("depthwise-separable conv")?;
        let (c, k) = (cfg.in_channels, cfg.kernel);
        // PyTorch's Conv2d(c, c, k, groups=c) default: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(k·k))
        let bound = 1.0 / (k as f64);
        let dw = vb.get_with_hints(
            (c, 1, k, k),
            "dw.weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            dw,
            bn_dw: BatchNorm2d::new(c, vb.pp("bn_dw"))?,
            pw: Conv2d::new(
                &ConvConfig::new(c, cfg.out_channels, 1).bias(false),
                vb.pp("pw"),
            )?,
            bn_pw: BatchNorm2d::new(cfg.out_channels, vb.pp("bn_pw"))?,
            cfg: *cfg,
        })
    }
    /// The block on `x` `[B, C, H, W]`. In evaluation the whole block is one op with each batch norm folded
    /// into the convolution before it ([`ops::depthwise_separable_bn`]: inference, no autograd).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let p = self.cfg.padding;
        let s = self.cfg.stride;
        if !train {
            return ops::depthwise_separable_bn(
                x,
                &self.dw,
                self.bn_dw.inner(),
                (p, p),
                (s, s),
                self.pw.inner(),
                self.bn_pw.inner(),
            );
        }
        let y = ops::depthwise_conv2d(x, &self.dw, (p, p), (s, s))?;
        let y = self.bn_dw.forward(&y, train, true)?;
        self.bn_pw.forward(&self.pw.forward(&y)?, train, true)
    }
    /// FLOPs for an `h`x`w` output map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let (c, k) = (self.cfg.in_channels, self.cfg.kernel);
        2 * ((k * k * c + c * self.cfg.out_channels) * h * w) as u64
    }
}
