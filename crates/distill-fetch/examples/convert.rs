//! Runs one conversion by hand: `cargo run -p distill-fetch --example convert -- NAME SOURCES OUT`
//! (SOURCES holds the card's `[[source]]` files by name; OUT the downloadable files, and receives the rest).

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, sources, out] = args.as_slice() else {
        anyhow::bail!("usage: convert NAME SOURCES OUT");
    };
    distill_fetch::convert::run(name, sources.as_ref(), out.as_ref())
}
