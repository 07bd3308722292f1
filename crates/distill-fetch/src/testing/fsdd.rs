//! TODO(fsdd): upstream-format copy.

use std::path::Path;

use anyhow::{bail, Result};

/// Writes the upstream files of the prepared data set in `prepared` into `mirror` (= MIRROR/NAME/).
pub fn write_upstream(prepared: &Path, mirror: &Path) -> Result<Vec<String>> {
    let _ = (prepared, mirror);
    bail!("fsdd: not written yet")
}
