//! TODO: SST-2 and STS-B conversions.

use std::path::Path;

use anyhow::{bail, Result};

/// SST-2.
pub fn convert_sst2(sources: &Path, out: &Path) -> Result<()> {
    let _ = (sources, out);
    bail!("sst2: not written yet")
}

/// STS-B.
pub fn convert_stsb(sources: &Path, out: &Path) -> Result<()> {
    let _ = (sources, out);
    bail!("stsb: not written yet")
}
