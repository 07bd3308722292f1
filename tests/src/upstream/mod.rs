//! Upstream-format copies of the data sets in `$DISTILL_DATA` (../shared/datasets), for the fetch tests: each
//! writer turns a prepared data set folder back into the files its public upstream publishes, laid out as a
//! mirror serves them (`MIRROR/NAME/<source or file name>`), so that `distill data fetch NAME --base-url`
//! runs the whole download + conversion on a loopback server and nothing is downloaded in CI.
//!
//! Each writer returns the source names whose bytes it re-makes without matching the real upstream file
//! byte for byte (e.g. a pickle written by this code, not by Python 2): the tests pin those sources'
//! checksums from the copy; every other source must match the checksum the card pins for the real file.

pub mod coco128;
pub mod fsdd;
pub mod planetoid;
pub mod text;
