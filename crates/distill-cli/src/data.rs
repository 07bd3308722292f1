//! `distill data fetch|verify|list` (the work is in the distill-fetch crate), and the check `distill run` /
//! `distill bench` make that a recipe's data set is there (`--fetch` gets it first).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use distill_fetch::{
    card::{builtin, parse_card, Card, BUILTIN_CARDS},
    fetch::{fetch, Options},
    http::Client,
    verify::verify,
};

use crate::dirs::data_dir;

/// `distill data ...`
#[derive(Subcommand)]
pub enum DataCmd {
    /// Get a data set from its public upstream into DATA_DIR/NAME: download the upstream files (resumable,
    /// each checked before use), unpack archives (refusing paths outside the folder, links and oversized
    /// entries), convert them into the layout the plugin reads, check every file against the card, and only
    /// then put the folder in place.
    Fetch {
        #[command(flatten)]
        which: Which,
        /// Download from a mirror of the upstream files instead of the card's URLs: each file comes from
        /// URL/NAME/FILE (default: $DISTILL_DATA_MIRROR).
        #[arg(long)]
        base_url: Option<String>,
        /// Seconds to wait for a connection.
        #[arg(long, default_value_t = 30.0)]
        connect_timeout: f64,
        /// Seconds a read may wait for data before the download fails as stalled.
        #[arg(long, default_value_t = 60.0)]
        read_timeout: f64,
    },
    /// Check the files of a data set in DATA_DIR/NAME against its card (missing, wrong size, wrong checksum).
    Verify {
        #[command(flatten)]
        which: Which,
    },
    /// List the data set cards built into this binary.
    List,
}

/// Which card and where its files go.
#[derive(Args)]
pub struct Which {
    /// The data set (a card under datasets/: mnist, cifar10, cifar100, cora, fsdd, coco128, sst2, stsb).
    name: String,
    /// Data dir (default: $DISTILL_DATA, else data/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Read this card (a dataset.toml) instead of the built-in one of NAME.
    #[arg(long)]
    card: Option<PathBuf>,
}

/// Runs `distill data ...`.
pub fn cmd_data(what: DataCmd) -> Result<()> {
    match what {
        DataCmd::List => {
            for b in BUILTIN_CARDS {
                let card = parse_card(b.text, &format!("datasets/{}/dataset.toml", b.name))?;
                let desc = card.description.as_deref().unwrap_or(&card.source);
                println!("{:<10} {desc}", b.name);
            }
            Ok(())
        }
        DataCmd::Verify { which } => {
            let card = Card::open(&which.name, which.card.as_deref())?;
            verify(&card, &data_dir(&which.data_dir).join(&which.name))
        }
        DataCmd::Fetch {
            which,
            base_url,
            connect_timeout,
            read_timeout,
        } => {
            let card = Card::open(&which.name, which.card.as_deref())?;
            let client = client(connect_timeout, read_timeout)?;
            fetch_card(&card, &data_dir(&which.data_dir), base_url, &client)
        }
    }
}

fn client(connect: f64, read: f64) -> Result<Client> {
    let seconds = |flag: &str, s: f64| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow!(
                "--{flag} {s}: expected a positive number of seconds"
            ))
        }
    };
    Ok(Client::new(
        seconds("connect-timeout", connect)?,
        seconds("read-timeout", read)?,
    ))
}

fn fetch_card(
    card: &Card,
    data_dir: &Path,
    base_url: Option<String>,
    client: &Client,
) -> Result<()> {
    let mirror = base_url.or_else(|| {
        std::env::var("DISTILL_DATA_MIRROR")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let s = fetch(
        card,
        data_dir,
        &Options {
            mirror: mirror.as_deref(),
            client,
        },
    )?;
    let root = data_dir.join(&card.name);
    if s.already_complete {
        println!(
            "{}: complete already, all {} files verified in {}",
            card.name,
            s.files,
            root.display()
        );
    } else {
        println!(
            "{}: {} files verified and in place in {} ({} downloaded, {} already there and checked)",
            card.name,
            s.files,
            root.display(),
            s.downloaded,
            s.reused
        );
    }
    if let Some(old) = &s.replaced {
        println!(
            "the previous {} did not verify; it was moved to {} (delete it once you no longer need it)",
            root.display(),
            old.display()
        );
    }
    if let Some(next) = &card.after_fetch {
        println!("next: {next}");
    }
    Ok(())
}

/// Checks that the data set `dataset` of a recipe is in `data_dir` when it is one of the built-in cards;
/// with `fetch` a missing one is fetched first, else the error says how to get it.
pub fn ensure_dataset(data_dir: &Path, dataset: &str, do_fetch: bool) -> Result<()> {
    if builtin(dataset).is_none() || data_dir.join(dataset).is_dir() {
        return Ok(()); // not a card (the plugin reads the user's own folder), or there
    }
    if !do_fetch {
        let where_ = if data_dir.is_dir() {
            format!("in {}", data_dir.display())
        } else {
            format!("(the data dir {} does not exist)", data_dir.display())
        };
        bail!(
            "data set `{dataset}` not found {where_}: get it with `distill data fetch {dataset}{}` (or rerun with --fetch), or point --data-dir / DISTILL_DATA at a folder that holds it",
            if std::env::var_os("DISTILL_DATA").is_some() {
                String::new()
            } else {
                format!(" --data-dir {}", data_dir.display())
            }
        );
    }
    eprintln!(
        "{dataset}: not in {}; fetching it (distill data fetch {dataset})",
        data_dir.display()
    );
    let card = Card::open(dataset, None)?;
    fetch_card(&card, data_dir, None, &client(30.0, 60.0)?)
}
