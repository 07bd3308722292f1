//! Criterion benches: one training step of each speed workload (crates/distill-cli/src/speed.rs, shared
//! with `distill bench --speed`, which also runs PyTorch's version of each). Needs `$DISTILL_DATA` (MNIST
//! and Cora).

#[allow(dead_code)]
#[path = "../../../crates/distill-cli/src/speed.rs"]
mod speed;

use criterion::{criterion_group, criterion_main, Criterion};

fn steps(c: &mut Criterion) {
    distill_core::runtime::init();
    let Some(data) = std::env::var_os("DISTILL_DATA") else {
        eprintln!("set DISTILL_DATA to the data dir (it needs mnist/ and cora/)");
        std::process::exit(2);
    };
    let data = std::path::PathBuf::from(data);
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    for name in speed::WORKLOADS {
        let mut w = speed::build(name, &data).expect("workload");
        let mut i = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                w.step(i).expect("step");
                i += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
