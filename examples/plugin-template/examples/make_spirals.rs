//! Writes a three-arm spiral data set as CSV (train 900 rows, of which a recipe's `validation = 300` holds
//! out the last 300, and test 1500 rows) into a directory:
//! `cargo run -p distill-plugin-template --example make_spirals -- DIR`.
//!
//! Point i of arm k sits at radius r = t and angle 6t + 2πk/3 (t uniform in [0.05, 1)), plus Gaussian noise
//! (σ = 0.06): classes that no linear model separates, so a small MLP needs a wide teacher's help.

use std::{fmt::Write as _, path::PathBuf};

use distill_core::Rng;

fn rows(n: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut s = String::from("x,y,label\n");
    for i in 0..n {
        let k = i % 3;
        let t = 0.05 + 0.95 * rng.uniform();
        let a = 6.0 * t + 2.0 * std::f64::consts::PI * k as f64 / 3.0;
        let x = t * a.cos() + 0.06 * rng.normal();
        let y = t * a.sin() + 0.06 * rng.normal();
        writeln!(s, "{x:.5},{y:.5},{k}").expect("write to a String");
    }
    s
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "spirals".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, n, seed) in [("train.csv", 900, 1), ("test.csv", 1500, 3)] {
        std::fs::write(dir.join(name), rows(n, seed))?;
    }
    println!("wrote {}/{{train,test}}.csv", dir.display());
    Ok(())
}
