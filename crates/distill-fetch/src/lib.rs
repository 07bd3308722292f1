//! # distill-fetch
//!
//! `distill data fetch|verify`: data set cards, checked resumable downloads, guarded archive extraction and
//! the conversions from each data set's public upstream format into the layout the plugins read.
#![warn(missing_docs)]

pub mod convert;
pub mod testing;
