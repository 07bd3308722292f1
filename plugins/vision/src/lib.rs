//! # distill-vision
//!
//! The image-classification plugin of **distill**:
//!
//! - [`data`]: loaders for MNIST (IDX, raw or gzip), CIFAR-10/100 (binary versions) and folders of images
//!   (`root/CLASS/*.png`), the in-memory [`data::ImageSet`], augmentation ([`data::Augment`]) and fast batch
//!   assembly into normalised `[B, C, H, W]` tensors;
//! - [`models`]: the networks of the distillation literature (MLPs as in Hinton et al. 2015, LeNet-5, and the
//!   CIFAR ResNet / WideResNet family of CRD and mdistiller), all implementing [`distill_core::Network`] and
//!   exposing named intermediate features;
//! - [`metrics`]: top-k accuracy on logits.
#![warn(missing_docs)]

pub mod data;
pub mod metrics;
pub mod models;
