//! Times one training step (forward + backward) of the MiniLM teacher and a 3-layer student on a batch of
//! SST-2-like length: `cargo run --release -p distill-text --example speed` (needs $DISTILL_MODELS).
use std::time::Instant;

use candle_core::{Device, Tensor};
use distill_core::{Mode, Network};
use distill_text::models::{build_model, Head, ModelSpec};

fn main() -> distill_core::Result<()> {
    distill_core::runtime::tune_allocator();
    let models = std::path::PathBuf::from(
        std::env::var("DISTILL_MODELS").unwrap_or_else(|_| "models".into()),
    );
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (b, t) = (*args.first().unwrap_or(&32), *args.get(1).unwrap_or(&32));
    for layers in [6usize, 3] {
        let mut m = toml::Table::new();
        m.insert("arch".into(), "bert".into());
        m.insert("layers".into(), (layers as i64).into());
        let spec = ModelSpec::parse(&m)?;
        let net = build_model(&spec, Head::Classify(2), &models, 0, &Device::Cpu)?;
        let ids: Vec<u32> = (0..b * t)
            .map(|i| 1000 + (i as u32 * 7919) % 20000)
            .collect();
        let x = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
        let vars = net.varmap().all_vars();
        for step in 0..4 {
            let t0 = Instant::now();
            let out = net.forward(&x, Mode::Train { seed: step })?;
            let t1 = Instant::now();
            let loss = out.logits.sqr()?.mean_all()?;
            let grads = loss.backward()?;
            let t2 = Instant::now();
            let n = vars
                .iter()
                .filter(|v| grads.get(v.as_tensor()).is_some())
                .count();
            let t3 = Instant::now();
            let _ = net.forward(&x, Mode::Eval)?;
            println!(
                "{layers} layers, batch {b}x{t}: forward {:.0} ms, backward {:.0} ms, eval forward {:.0} ms ({n} grads)",
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                t3.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
