//! TODO(coco128): the conversion of the upstream files.

use std::path::Path;

use anyhow::{bail, Result};

/// Converts the upstream files in `sources` into the data set's layout in `out`.
pub fn convert(sources: &Path, out: &Path) -> Result<()> {
    let _ = (sources, out);
    bail!("coco128: not written yet")
}
