//! Upstream-format copies of prepared data sets, for the fetch tests (not used by `distill` itself): each
//! writer turns a prepared data set folder (as `distill data fetch` leaves it, e.g. in ../shared/datasets)
//! back into the files its public upstream publishes, laid out as a mirror serves them
//! (`MIRROR/NAME/<source or file name>`), so that `distill data fetch NAME --base-url` runs the whole
//! download + conversion against a loopback server and nothing is downloaded in CI.
//!
//! Each writer returns the names of the sources it re-makes without matching the real upstream file byte
//! for byte (e.g. a pickle written here, not by Python 2): a test pins those sources' checksums from the
//! copy; every other source must match the checksum the card pins for the real file.

pub mod coco128;
pub mod fsdd;
pub mod planetoid;
pub mod text;

use std::path::Path;

/// Writes the upstream-format copy of the prepared data set `name` (a built-in card with a conversion) into
/// `mirror` (= MIRROR/NAME/); returns the sources not byte-identical to the real upstream files.
pub fn write_upstream(name: &str, prepared: &Path, mirror: &Path) -> anyhow::Result<Vec<String>> {
    match name {
        "cora" => planetoid::write_upstream(prepared, mirror),
        "fsdd" => fsdd::write_upstream(prepared, mirror),
        "coco128" => coco128::write_upstream(prepared, mirror),
        "sst2" => text::write_sst2(prepared, mirror),
        "stsb" => text::write_stsb(prepared, mirror),
        other => anyhow::bail!("no upstream-copy writer for `{other}`"),
    }
}
