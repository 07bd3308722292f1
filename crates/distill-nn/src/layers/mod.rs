//! Layers built candle style: `Layer::new(cfg, vb)`, parameters named as PyTorch (torchvision, Hugging Face)
//! names them, so a network composed from them loads a PyTorch `state_dict` by name.
//!
//! | layer | PyTorch counterpart | parameters |
//! |---|---|---|
//! | [`Linear`] | `nn.Linear` | `weight` `[out, in]`, `bias` |
//! | [`Mlp`] | `fc1 … fc{n+1}` Linear stack | `fc{i}.weight`, `fc{i}.bias` |
//! | [`Conv1d`], [`Conv2d`] | `nn.Conv1d`, `nn.Conv2d` | `weight`, `bias` |
//! | [`ConvBn`] | conv + `nn.BatchNorm2d` (+ ReLU) | `conv.weight`, `bn.*` |
//! | [`DepthwiseSeparable`] | MobileNet / DS-CNN block | `dw.weight`, `bn_dw.*`, `pw.weight`, `bn_pw.*` |
//! | [`BatchNorm2d`] | `nn.BatchNorm2d` | `weight`, `bias`, `running_mean`, `running_var` |
//! | [`BasicBlock`], [`Bottleneck`], [`ResNetTrunk`] | torchvision's ResNet | `conv1`, `bn1`, `layer1.0.conv1`, … |
//! | [`LayerNorm`] | `nn.LayerNorm` | `weight`, `bias` |
//! | [`Embedding`] | `nn.Embedding` | `weight` `[num, dim]` |
//! | [`bert::BertLayer`], [`bert::Bert`] | Hugging Face `BertLayer`, `BertModel` (no pooler) | `encoder.layer.0.attention.self.query.weight`, … |
//!
//! Every layer runs the fused [`crate::ops`] for `f32` on the CPU and composed candle ops elsewhere.

pub mod bert;
mod conv;
mod dropout;
mod embedding;
mod linear;
mod mlp;
mod norm;
mod resnet;

pub use conv::{conv_bn, Conv1d, Conv2d, ConvBn, ConvConfig, DepthwiseSeparable};
pub use dropout::dropout;
pub use embedding::Embedding;
pub use linear::{Linear, LinearConfig, LinearInit};
pub use mlp::{Mlp, MlpConfig, MlpOutput};
pub use norm::{BatchNorm2d, LayerNorm};
pub(crate) use resnet::Block as ResNetBlock;
pub use resnet::{out_size, BasicBlock, BlockKind, Bottleneck, ResNetTrunk, ResNetTrunkConfig};
