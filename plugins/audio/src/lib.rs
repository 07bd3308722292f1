//! # distill-audio: the acoustic-model plugin
#![warn(missing_docs)]

pub mod frontend;
pub mod wav;
