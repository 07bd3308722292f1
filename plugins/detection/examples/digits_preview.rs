//! Generates (or finds) a digits-on-canvas set and writes a preview: the first 8 training canvases side by
//! side, 2x enlarged, with their boxes drawn.
//!
//! ```sh
//! cargo run --release -p distill-detection --example digits_preview -- DATA_DIR OUT.png
//! ```

use std::path::PathBuf;

use distill_detection::data::{
    coco::load_coco,
    digits::{ensure_generated, DigitsConfig},
};

fn main() -> distill_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: digits_preview DATA_DIR OUT.png");
        std::process::exit(2);
    }
    let cfg = DigitsConfig::default();
    let dir = ensure_generated(&PathBuf::from(&args[1]), &cfg)?;
    let coco = load_coco(&dir.join("annotations/instances_train.json"))?;
    let by = coco.by_image();
    let (s, k) = (cfg.canvas as u32, 2u32);
    let mut out = image::RgbImage::new(8 * s * k, s * k);
    for (n, im) in coco.images.iter().take(8).enumerate() {
        let g = image::open(dir.join(&im.file_name))
            .map_err(|e| distill_core::Error::msg(e.to_string()))?
            .to_luma8();
        for (x, y, p) in g.enumerate_pixels() {
            for dy in 0..k {
                for dx in 0..k {
                    out.put_pixel(
                        n as u32 * s * k + x * k + dx,
                        y * k + dy,
                        image::Rgb([p.0[0]; 3]),
                    );
                }
            }
        }
        for a in by.get(&im.id).map(|v| v.as_slice()).unwrap_or(&[]) {
            let [x, y, w, h] = a.bbox.map(|v| (v * k as f64) as u32);
            let ox = n as u32 * s * k;
            for t in 0..=w {
                for yy in [y, (y + h).min(s * k - 1)] {
                    out.put_pixel(
                        (ox + x + t).min(ox + s * k - 1),
                        yy,
                        image::Rgb([255, 0, 0]),
                    );
                }
            }
            for t in 0..=h {
                for xx in [x, (x + w).min(s * k - 1)] {
                    out.put_pixel(ox + xx, (y + t).min(s * k - 1), image::Rgb([255, 0, 0]));
                }
            }
        }
    }
    out.save(&args[2])
        .map_err(|e| distill_core::Error::msg(e.to_string()))?;
    println!("{} -> {}", dir.display(), args[2]);
    Ok(())
}
