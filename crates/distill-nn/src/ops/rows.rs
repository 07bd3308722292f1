//! Writing selected rows of a variable in place (a memory bank's update).

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};

use crate::{Error, Result};

/// Overwrites rows `rows` of the `[N, D]` variable `var` with the rows of `src` (`[rows.len(), D]`), leaving
/// the others as they are. On the CPU (f32, contiguous) the rows are written in place; elsewhere the variable
/// is rebuilt with `index_add` and set. Nothing is recorded for autograd. `rows` are meant to be
/// distinct (a batch's samples): a row listed twice gets its last value on the CPU path, the sum of both
/// changes on the other.
pub fn set_rows(var: &Var, rows: &[usize], src: &Tensor) -> Result<()> {
    let (n, d) = var.dims2().map_err(|_| {
        Error::Shape(format!(
            "set_rows: the variable must be [N, D], got {:?}",
            var.dims()
        ))
    })?;
    if src.dims() != [rows.len(), d] {
        return Err(Error::Shape(format!(
            "set_rows: {} rows of width {d} expected, got {:?}",
            rows.len(),
            src.dims()
        )));
    }
    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
        return Err(Error::Shape(format!(
            "set_rows: row {r} is beyond the variable's {n} rows"
        )));
    }
    let src = src.detach().to_dtype(var.dtype())?.contiguous()?;
    let t = var.as_tensor();
    if t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() {
        t.inplace_op2(&src, &SetRows { rows, d })?;
        return Ok(());
    }
    let ids = Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        t.device(),
    )?;
    let old = t.detach().index_select(&ids, 0)?;
    var.set(&t.detach().index_add(&ids, &(src - old)?, 0)?)?;
    Ok(())
}

struct SetRows<'a> {
    rows: &'a [usize],
    d: usize,
}

impl InplaceOp2 for SetRows<'_> {
    fn name(&self) -> &'static str {
        "distill-set-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let dst = crate::optim::param_slice(s1, l1, "set_rows")?;
        let src = super::f32_slice(s2, l2, "set_rows")?;
        let d = self.d;
        for (&r, row) in self.rows.iter().zip(src.chunks(d)) {
            dst[r * d..(r + 1) * d].copy_from_slice(row);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_are_replaced_in_place_and_the_rest_kept() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let var = Var::from_tensor(
                &Tensor::arange(0f32, 12.0, &Device::Cpu)?
                    .reshape((4, 3))?
                    .to_dtype(dtype)?,
            )?;
            let src = Tensor::new(&[[-1f32, -2., -3.], [-4., -5., -6.]], &Device::Cpu)?;
            set_rows(&var, &[3, 1], &src)?;
            let got: Vec<Vec<f64>> = var.as_tensor().to_dtype(DType::F64)?.to_vec2()?;
            assert_eq!(
                got,
                vec![
                    vec![0., 1., 2.],
                    vec![-4., -5., -6.],
                    vec![6., 7., 8.],
                    vec![-1., -2., -3.]
                ],
                "{dtype:?}"
            );
        }
        let var = Var::zeros((2, 3), DType::F32, &Device::Cpu)?;
        let bad = Tensor::zeros((1, 2), DType::F32, &Device::Cpu)?;
        assert!(set_rows(&var, &[0], &bad).is_err());
        let row = Tensor::zeros((1, 3), DType::F32, &Device::Cpu)?;
        let e = set_rows(&var, &[2], &row).unwrap_err().to_string();
        assert!(e.contains("row 2 is beyond"), "{e}");
        Ok(())
    }
}
