//! The conversions from each data set's upstream format into the layout its plugin reads. A card names
//! one with `convert = "NAME"`; it runs after every `[[source]]` is downloaded and checked (into
//! `sources/`) and every downloadable `[[file]]` is in place (in `out/`), and writes the remaining files of
//! the data set into `out/`. Everything it writes is checked against the card before the data set lands.

use std::path::Path;

use anyhow::{bail, Result};

pub mod coco128;
pub mod fsdd;
pub mod pickle;
pub mod planetoid;
pub mod text;

/// The conversions a card may name.
pub const CONVERSIONS: &[&str] = &["planetoid-cora", "fsdd", "coco128", "sst2", "stsb"];

/// Runs conversion `name`: reads `sources/` (the card's `[[source]]` files by name) and the files already in
/// `out/`, writes the data set's converted files into `out/`.
pub fn run(name: &str, sources: &Path, out: &Path) -> Result<()> {
    match name {
        "planetoid-cora" => planetoid::convert(sources, out),
        "fsdd" => fsdd::convert(sources, out),
        "coco128" => coco128::convert(sources, out),
        "sst2" => text::convert_sst2(sources, out),
        "stsb" => text::convert_stsb(sources, out),
        other => bail!(
            "unknown conversion `{other}` (known: {})",
            CONVERSIONS.join(", ")
        ),
    }
}
