//! GFLOP/s of the GEMM kernel distill uses (the `gemm` crate with its AVX-512 kernels, as `ops::linear` and
//! `ops::conv2d` call it) at 1024³ and at the shapes the MLP, BERT and convolution paths run, all threads and
//! one thread. The same shapes through PyTorch (MKL): `python3 bench/pytorch/gemm.py`. Results in
//! docs/performance.md ("GEMM").
//!
//! `cargo run --release -p distill-nn --example gemm_table`

use std::time::Instant;

/// `(label, m, n, k)`: `C[m, n] = A[m, k] · B[k, n]`, row-major.
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("square 1024³", 1024, 1024, 1024),
    ("MLP fc1 fwd (128×784 · 784×1200)", 128, 1200, 784),
    ("MLP fc2 fwd (128×1200 · 1200×1200)", 128, 1200, 1200),
    ("MLP fc2 weight grad (1200×128 · 128×1200)", 1200, 1200, 128),
    ("BERT QKV (2048×384 · 384×1152)", 2048, 1152, 384),
    ("BERT FFN up (2048×384 · 384×1536)", 2048, 1536, 384),
    ("BERT FFN down (2048×1536 · 1536×384)", 2048, 384, 1536),
    ("BERT attention scores (64×32 · 32×64)", 64, 64, 32),
    ("CNN conv2 per image (64×288 · 288×121)", 64, 121, 288),
    ("DS-CNN pointwise per image (32×32 · 32×320)", 32, 320, 32),
];

fn gflops(m: usize, n: usize, k: usize, par: gemm::Parallelism) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut run = || unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
    let flops = 2.0 * (m * n * k) as f64;
    // about 0.3 s of repetitions per measurement, the best of 5 measurements
    run();
    let t = Instant::now();
    run();
    let reps = ((0.3 / t.elapsed().as_secs_f64().max(1e-7)) as usize).clamp(1, 100_000);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            run();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    std::hint::black_box(&c);
    flops / best / 1e9
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("| shape | gemm 0.19, {threads} threads (GFLOP/s) | gemm 0.19, 1 thread (GFLOP/s) |");
    println!("|---|---|---|");
    for &(label, m, n, k) in SHAPES {
        let all = gflops(m, n, k, gemm::Parallelism::Rayon(threads));
        let one = gflops(m, n, k, gemm::Parallelism::None);
        println!("| {label} | {all:.1} | {one:.1} |");
    }
}
