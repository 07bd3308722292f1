//! `distill cache`: the trained-teacher cache's entries listed, verified or cleared.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;

use crate::dirs::dir_from;

/// `distill cache ...`.
#[derive(Subcommand)]
pub enum CacheCmd {
    /// One line per entry: key, plugin, data set, recipe, phase (teacher or scratch student), seed, test metric,
    /// size, date.
    List,
    /// Check every entry's weights against their checksum; exits 2 naming each damaged entry.
    Verify,
    /// Remove every entry.
    Clear,
}

/// `distill cache list|verify|clear`.
pub fn cmd_cache(what: CacheCmd, cache_dir: &Option<PathBuf>) -> Result<()> {
    let dir = dir_from(cache_dir, "DISTILL_CACHE", ".distill-cache");
    let cache = distill_core::teacher_cache::TeacherCache::new(&dir);
    match what {
        CacheCmd::List => {
            let entries = cache.list()?;
            for (key, info, size) in &entries {
                match info {
                    Some(i) => println!(
                        "{key}  {}  {}  {}  {}  seed {}  {:.4}  {:.1} MB  {}",
                        i.plugin,
                        i.dataset,
                        i.recipe,
                        i.phase.as_deref().unwrap_or("teacher"),
                        i.seed,
                        i.metric,
                        *size as f64 / 1e6,
                        distill_core::report::utc_date(i.created_unix)
                    ),
                    None => println!("{key}  (no entry.json)  {:.1} MB", *size as f64 / 1e6),
                }
            }
            println!("{} entries in {}", entries.len(), cache.root().display());
        }
        CacheCmd::Verify => {
            let entries = cache.list()?;
            let mut bad = Vec::new();
            for (key, _, _) in &entries {
                match cache.verify(key) {
                    Ok(()) => println!("{key}  ok"),
                    Err(e) => {
                        println!("{key}  DAMAGED: {e}");
                        bad.push(key.clone());
                    }
                }
            }
            if !bad.is_empty() {
                bail!(
                    "{} of {} cache entries are damaged ({}); a run retrains them, or `distill cache clear`",
                    bad.len(),
                    entries.len(),
                    bad.join(", ")
                );
            }
            println!(
                "{} entries verified in {}",
                entries.len(),
                cache.root().display()
            );
        }
        CacheCmd::Clear => {
            let n = cache.clear()?;
            println!("removed {n} entries from {}", cache.root().display());
        }
    }
    Ok(())
}
