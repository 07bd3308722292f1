//! An embedding table, PyTorch's `nn.Embedding`: `weight` `[num_embeddings, dim]`.

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::{Error, Result};

/// A lookup table of `num` vectors of width `dim`.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
    dim: usize,
}

impl Embedding {
    /// `num` rows of width `dim`, initialised `N(0, std)` unless `vb` holds `weight`.
    pub fn new(num: usize, dim: usize, std: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (num, dim),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        Ok(Self { weight, dim })
    }

    /// The rows `ids` (any shape of integer ids) as `[.., dim]`; the table is detached when `frozen`.
    pub fn forward(&self, ids: &Tensor, frozen: bool) -> Result<Tensor> {
        let table = if frozen {
            self.weight.detach()
        } else {
            self.weight.clone()
        };
        let n = table.dim(0)?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        if flat.elem_count() > 0 {
            let max = flat.max(0)?.to_scalar::<u32>()? as usize;
            if max >= n {
                return Err(Error::Shape(format!(
                    "embedding: id {max} is outside the table of {n} rows"
                )));
            }
        }
        let mut shape = ids.dims().to_vec();
        shape.push(self.dim);
        Ok(table.index_select(&flat, 0)?.reshape(shape)?)
    }

    /// The table `[num, dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}
