//! The input check every image model makes before its forward pass: a leaf of its own, so that the model
//! files need not import `models/mod.rs` (which builds them).

use distill_core::{Error, Result};

/// Checks that `input` is `[B, C, H, W]` with `[C, H, W] == expected`.
pub(crate) fn check_image_input(
    input: &candle_core::Tensor,
    expected: [usize; 3],
    model: &str,
) -> Result<()> {
    let dims = input.dims();
    if dims.len() != 4 || dims[1..] != expected {
        return Err(Error::Shape(format!(
            "{model} expects input [B, {}, {}, {}], got {dims:?}",
            expected[0], expected[1], expected[2]
        )));
    }
    Ok(())
}
