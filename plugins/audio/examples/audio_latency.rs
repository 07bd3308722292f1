//! Latency to classify one second of audio at batch 1 (front end + network), teacher vs student, and the
//! time of one training step (forward + backward) at batch 64.
//!
//! `cargo run --release -p distill-audio --example audio_latency -- [TEACHER_TOML] [STUDENT_TOML]`
//! (model tables, default `{ arch = "res-cnn" }` and `{ arch = "ds-cnn", width = 32, blocks = 4 }`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use distill_audio::{
    data::frontend::{FrontEnd, FrontEndConfig},
    models::{build_model, ModelSpec},
};
use distill_core::{network::num_params, Mode};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f(); // warm-up
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() -> distill_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t_spec: ModelSpec =
        toml::from_str(args.first().map_or("arch = \"res-cnn\"", |s| s.as_str()))
            .expect("teacher spec");
    let s_spec: ModelSpec = toml::from_str(
        args.get(1)
            .map_or("arch = \"ds-cnn\"\nwidth = 32\nblocks = 4", |s| s.as_str()),
    )
    .expect("student spec");
    let dev = Device::Cpu;
    let fe = FrontEnd::new(FrontEndConfig::default())?;
    let cfg = fe.config().clone();
    let audio: Vec<f32> = (0..cfg.sample_rate as usize)
        .map(|i| (i as f32 * 0.05).sin() * 0.3)
        .collect();
    let fe_ms = time(50, || {
        std::hint::black_box(fe.features(&audio));
    });
    println!(
        "front end, 1 s of audio at {} Hz: {fe_ms:.3} ms",
        cfg.sample_rate
    );
    let shape = [1, cfg.rows(), cfg.frames];
    for (role, spec) in [("teacher", &t_spec), ("student", &s_spec)] {
        let net = build_model(spec, shape, 10, 0, &dev)?;
        let x1 = Tensor::from_vec(fe.features(&audio), (1, 1, shape[1], shape[2]), &dev)?;
        let b1 = time(50, || {
            std::hint::black_box(net.forward(&x1, Mode::Eval).unwrap());
        });
        let x64 = Tensor::randn(0f32, 1.0, (64, 1, shape[1], shape[2]), &dev)?;
        let y = Tensor::zeros(64, DType::U32, &dev)?;
        let step = time(5, || {
            let out = net.forward(&x64, Mode::Train { seed: 1 }).unwrap();
            let loss = candle_nn::loss::cross_entropy(&out.logits, &y).unwrap();
            std::hint::black_box(loss.backward().unwrap());
        });
        println!(
            "{role}: {} ({} params, {:.2} MFLOPs): batch 1 {b1:.3} ms (+ front end = {:.3} ms per second of audio); train step at batch 64 {step:.1} ms",
            net.describe(),
            num_params(net.as_ref()),
            net.flops() as f64 / 1e6,
            b1 + fe_ms
        );
    }
    Ok(())
}
