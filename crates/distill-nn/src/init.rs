//! Seeded parameter creation.
//!
//! candle's CPU random generator cannot be seeded, so [`seeded_var_builder`] creates every parameter from
//! [`Rng`] streams derived from the run seed and the parameter's name: the same seed gives the same initial
//! weights whatever order layers are built in.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{
    init::{FanInOut, NormalOrUniform},
    var_builder::SimpleBackend,
    Init, VarBuilder, VarMap,
};

use crate::Rng;

struct SeededBackend {
    varmap: VarMap,
    seed: u64,
}

fn init_values(init: Init, shape: &Shape, rng: &mut Rng) -> Vec<f32> {
    let n = shape.elem_count();
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * rng.normal()) as f32)
            .collect(),
        Init::Uniform { lo, up } => (0..n)
            .map(|_| (lo + (up - lo) * rng.uniform()) as f32)
            .collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = match fan {
                FanInOut::FanIn => FanInOut::FanIn.for_shape(shape),
                FanInOut::FanOut => FanInOut::FanOut.for_shape(shape),
            };
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| (-b + 2.0 * b * rng.uniform()) as f32)
                        .collect()
                }
                NormalOrUniform::Normal => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
            }
        }
    }
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            let t = v.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` exists with shape {:?}, asked for {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            return Ok(t.clone());
        }
        let mut rng = Rng::derive(self.seed, &[&"init", &name]);
        let values = init_values(h, &s, &mut rng);
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.varmap.data().lock().expect("varmap lock");
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

/// A `VarBuilder` that creates parameters in `varmap`, initialised from `seed` and each parameter's name.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededBackend {
            varmap: varmap.clone(),
            seed,
        }),
        DType::F32,
        device.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Result;

    #[test]
    fn seeded_init_is_reproducible_and_order_independent() -> Result<()> {
        let dev = Device::Cpu;
        let a = VarMap::new();
        let vb = seeded_var_builder(&a, 5, &dev);
        let _ = candle_nn::linear(10, 20, vb.pp("fc1"))?;
        let _ = candle_nn::linear(20, 3, vb.pp("fc2"))?;
        let b = VarMap::new();
        let vb = seeded_var_builder(&b, 5, &dev);
        let _ = candle_nn::linear(20, 3, vb.pp("fc2"))?;
        let _ = candle_nn::linear(10, 20, vb.pp("fc1"))?;
        let get = |m: &VarMap, k: &str| -> Vec<f32> {
            m.data().lock().unwrap()[k]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        for k in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
            assert_eq!(get(&a, k), get(&b, k), "{k}");
        }
        // candle's linear: weight ~ Kaiming normal (std = sqrt(2 / fan_in)), bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let w = get(&a, "fc1.weight");
        let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - (2.0f32 / 10.0).sqrt()).abs() < 0.08, "std {std}");
        assert!(get(&a, "fc1.bias")
            .iter()
            .all(|b| b.abs() <= 1.0 / 10f32.sqrt()));
        let c = VarMap::new();
        let _ = candle_nn::linear(10, 20, seeded_var_builder(&c, 6, &dev).pp("fc1"))?;
        assert_ne!(get(&a, "fc1.weight"), get(&c, "fc1.weight"));
        Ok(())
    }
}
