//! # distill-data
//!
//! Readers of data files that more than one plugin needs, so that no plugin depends on another for them:
//!
//! * [`files`]: a file read raw or else gzipped (`name`, then `name.gz`), the missing-data checks and the
//!   `distill data fetch` hint their errors carry;
//! * [`idx`]: the IDX format (a magic number, big-endian dimensions, then the payload), fully checked;
//! * [`mnist`]: the MNIST images and labels of a split, as bytes.
//!
//! Errors are [`distill_nn::Error`]s naming the file and the problem.
//!
//! ```no_run
//! # fn main() -> distill_nn::Result<()> {
//! let set = distill_data::mnist::load_mnist(std::path::Path::new("data/mnist"), true)?;
//! assert_eq!(set.pixels.len(), set.count * set.rows * set.cols);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod files;
pub mod idx;
pub mod mnist;
pub mod testing;
