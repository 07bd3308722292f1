//! # distill-detection: the object-detection plugin
#![warn(missing_docs)]

pub mod coco;
pub mod data;
pub mod digits;
pub mod metrics;
