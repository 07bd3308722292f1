//! Times one optimiser step over the parameter shapes of a 784-1200-1200-10 MLP (2.39M parameters): the
//! fused in-place AdamW/SGD of `distill_nn::optim` against candle-nn's AdamW and against this crate's own
//! generic (tensor-op) path. Reports numbers only; run in release mode:
//!
//! ```text
//! cargo run --release -p distill-nn --example optim_bench
//! ```

use std::time::Instant;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::Optimizer as _;
use distill_nn::optim::{grad_norm, AdamW, AdamWParams, Optimizer, Sgd, SgdParams};
use distill_nn::{Result, Rng};

const SHAPES: [(&str, &[usize]); 6] = [
    ("fc1.weight", &[1200, 784]),
    ("fc1.bias", &[1200]),
    ("fc2.weight", &[1200, 1200]),
    ("fc2.bias", &[1200]),
    ("fc3.weight", &[10, 1200]),
    ("fc3.bias", &[10]),
];

fn random(shape: &[usize], rng: &mut Rng, scale: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (scale * rng.normal()) as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn params(seed: u64) -> Result<Vec<(String, Var)>> {
    let mut rng = Rng::new(seed);
    SHAPES
        .iter()
        .map(|(n, s)| {
            Ok((
                n.to_string(),
                Var::from_tensor(&random(s, &mut rng, 0.05)?)?,
            ))
        })
        .collect()
}

/// Gradients equal to fixed random tensors, produced by candle's autograd (so laid out as in training).
fn grads(vars: &[(String, Var)], seed: u64) -> Result<GradStore> {
    let mut rng = Rng::new(seed);
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for (_, v) in vars {
        let r = random(v.dims(), &mut rng, 0.01)?;
        loss = (loss + (v.as_tensor() * r)?.sum_all()?)?;
    }
    Ok(loss.backward()?)
}

fn time(label: &str, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..5 {
        f()?;
    }
    let start = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;
    println!("{label:<44} {ms:8.3} ms/step");
    Ok(ms)
}

fn main() -> Result<()> {
    let iters = 50;
    let n: usize = SHAPES
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    println!(
        "{n} parameters, {} rayon threads, {iters} timed steps after 5 warm-up steps",
        rayon::current_num_threads()
    );
    let adamw = AdamWParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        coupled: false,
    };

    let vars = params(1)?;
    let g = grads(&vars, 2)?;
    let mut nn = candle_nn::AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        candle_nn::ParamsAdamW {
            lr: adamw.lr,
            beta1: adamw.beta1,
            beta2: adamw.beta2,
            eps: adamw.eps,
            weight_decay: adamw.weight_decay,
        },
    )?;
    let base = time("candle_nn::AdamW", iters, || Ok(nn.step(&g)?))?;

    let vars = params(1)?;
    let g = grads(&vars, 2)?;
    let mut generic = AdamW::new(vars, adamw)?;
    generic.set_fused(false);
    time("distill AdamW, generic tensor-op path", iters, || {
        generic.step(&g)
    })?;

    let vars = params(1)?;
    let g = grads(&vars, 2)?;
    let mut fused = AdamW::new(vars, adamw)?;
    let ms = time("distill AdamW, fused in-place", iters, || fused.step(&g))?;
    println!(
        "{:<44} {:8.1}x",
        "  speed-up vs candle_nn::AdamW",
        base / ms
    );

    let sgd = SgdParams {
        lr: 0.01,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    let vars = params(1)?;
    let g = grads(&vars, 2)?;
    let mut generic = Sgd::new(vars, sgd)?;
    generic.set_fused(false);
    time("distill SGD (Nesterov, wd), generic path", iters, || {
        generic.step(&g)
    })?;
    let vars = params(1)?;
    let g = grads(&vars, 2)?;
    let mut fused = Sgd::new(vars.clone(), sgd)?;
    time("distill SGD (Nesterov, wd), fused", iters, || {
        fused.step(&g)
    })?;

    time("grad_norm", iters, || grad_norm(&g, &vars).map(|_| ()))?;
    Ok(())
}
