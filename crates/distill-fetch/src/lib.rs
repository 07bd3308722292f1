//! # distill-fetch
//!
//! `distill data fetch|verify`: data set cards ([`card`]), checked resumable downloads ([`http`]), guarded
//! archive extraction ([`archive`]), the conversions from each data set's public upstream format into the
//! layout the plugins read ([`convert`]), and the fetch that puts a data set in place only once every file
//! of it verifies ([`fetch`]).
#![warn(missing_docs)]

pub mod archive;
pub mod card;
pub mod check;
pub mod convert;
pub mod fetch;
pub mod http;
pub mod testing;
pub mod verify;
