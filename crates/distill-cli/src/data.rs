//! `distill data fetch|verify`: data set cards (`datasets/NAME/dataset.toml`), downloads that resume and
//! are checked before they land, and checks of what is on disk.
//!
//! A download goes to `FILE.part` (continued with an HTTP `Range` request when one is already there), is
//! fsynced, checked against the card (size, sha256, md5, or the sha256 of its gunzipped bytes), and only
//! then renamed to `FILE` (and the directory fsynced). So the final path holds either nothing, the previous
//! file, or a complete checked file — never half of one.

use std::{
    collections::BTreeMap,
    fs,
    io::{IsTerminal, Read, Write},
    path::{Component, Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use md5::Md5;
use sha2::{Digest, Sha256};

/// The project's data set cards, compiled in (`--card FILE` reads another one).
const BUILTIN_CARDS: &[(&str, &str)] = &[
    (
        "mnist",
        include_str!("../../../datasets/mnist/dataset.toml"),
    ),
    (
        "cifar10",
        include_str!("../../../datasets/cifar10/dataset.toml"),
    ),
    (
        "cifar100",
        include_str!("../../../datasets/cifar100/dataset.toml"),
    ),
    ("cora", include_str!("../../../datasets/cora/dataset.toml")),
    ("fsdd", include_str!("../../../datasets/fsdd/dataset.toml")),
    (
        "coco128",
        include_str!("../../../datasets/coco128/dataset.toml"),
    ),
    ("sst2", include_str!("../../../datasets/sst2/dataset.toml")),
    ("stsb", include_str!("../../../datasets/stsb/dataset.toml")),
];

/// `distill data ...`
#[derive(Subcommand)]
pub enum DataCmd {
    /// Download every file of a data set card into DATA_DIR/NAME, resuming partial downloads and checking
    /// each file's checksum before it is put in place.
    Fetch {
        #[command(flatten)]
        which: Which,
        /// Download from a mirror of a data dir instead of the card's URLs: FILE comes from URL/NAME/FILE
        /// (default: $DISTILL_DATA_MIRROR).
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
    /// Data dir (default: $DISTILL_DATA, else datasets/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Read this card (a dataset.toml) instead of the built-in one of NAME.
    #[arg(long)]
    card: Option<PathBuf>,
}

/// A data set card.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Card {
    name: String,
    #[serde(default)]
    description: Option<String>,
    license: String,
    source: String,
    #[serde(default)]
    source_commit: Option<String>,
    #[serde(default)]
    mirror: Option<String>,
    #[serde(default)]
    conversion: Option<String>,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    extra_splits: Option<String>,
    /// What to do after a fetch (printed), e.g. unpack an archive.
    #[serde(default)]
    after_fetch: Option<String>,
    /// Where `fetch` downloads a file: path prefix -> URL prefix (the longest matching prefix wins).
    #[serde(default)]
    urls: BTreeMap<String, String>,
    /// Why some files have no public URL (they come from a conversion): said when one is fetched without
    /// a mirror.
    #[serde(default)]
    no_url: Option<String>,
    #[serde(default)]
    file: Vec<FileSpec>,
}

/// One file of a card.
#[derive(serde::Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// Path relative to DATA_DIR/NAME.
    name: String,
    #[serde(default)]
    sha256: Option<String>,
    /// sha256 of the gunzipped bytes (for `.gz` files whose compressed bytes differ between copies).
    #[serde(default)]
    uncompressed_sha256: Option<String>,
    #[serde(default)]
    md5: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    /// This file's own URL (instead of the card's `urls`).
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
    /// A checksum list (`SHA256  PATH` per line, as `sha256sum` writes): every path in it is also a file
    /// of the data set, checked against its line.
    #[serde(default)]
    list: bool,
}

impl FileSpec {
    fn has_checksum(&self) -> bool {
        self.sha256.is_some() || self.uncompressed_sha256.is_some() || self.md5.is_some()
    }
}

/// Runs `distill data ...`.
pub fn cmd_data(what: DataCmd) -> Result<()> {
    match what {
        DataCmd::List => {
            for (name, text) in BUILTIN_CARDS {
                let card = parse_card(text, &format!("datasets/{name}/dataset.toml"))?;
                let desc = card.description.as_deref().unwrap_or(&card.source);
                println!("{name:<10} {desc}");
            }
            Ok(())
        }
        DataCmd::Verify { which } => {
            let (card, root) = open(&which)?;
            verify(&card, &root)
        }
        DataCmd::Fetch {
            which,
            base_url,
            connect_timeout,
            read_timeout,
        } => {
            let (card, root) = open(&which)?;
            let mirror = base_url.or_else(|| {
                std::env::var("DISTILL_DATA_MIRROR")
                    .ok()
                    .filter(|s| !s.is_empty())
            });
            let seconds = |flag: &str, s: f64| {
                if s.is_finite() && s > 0.0 {
                    Ok(Duration::from_secs_f64(s))
                } else {
                    Err(anyhow!(
                        "--{flag} {s}: expected a positive number of seconds"
                    ))
                }
            };
            let agent = ureq::AgentBuilder::new()
                .timeout_connect(seconds("connect-timeout", connect_timeout)?)
                .timeout_read(seconds("read-timeout", read_timeout)?)
                .build();
            fetch(&card, &root, mirror.as_deref(), &agent)
        }
    }
}

fn open(which: &Which) -> Result<(Card, PathBuf)> {
    let card = match &which.card {
        Some(path) => {
            let text = fs::read_to_string(path).with_context(|| path.display().to_string())?;
            let card = parse_card(&text, &path.display().to_string())?;
            if card.name != which.name {
                bail!(
                    "{}: the card is for `{}`, not `{}`",
                    path.display(),
                    card.name,
                    which.name
                );
            }
            card
        }
        None => {
            let Some((_, text)) = BUILTIN_CARDS.iter().find(|(n, _)| *n == which.name) else {
                let known: Vec<&str> = BUILTIN_CARDS.iter().map(|(n, _)| *n).collect();
                bail!(
                    "unknown data set `{}` (cards: {}; or give one with --card FILE)",
                    which.name,
                    known.join(", ")
                );
            };
            parse_card(text, &format!("datasets/{}/dataset.toml", which.name))?
        }
    };
    let data_dir = crate::dirs::dir_from(&which.data_dir, "DISTILL_DATA", "datasets");
    Ok((card, data_dir.join(&which.name)))
}

/// Parses and checks a card; `label` names it in errors.
fn parse_card(text: &str, label: &str) -> Result<Card> {
    let card: Card =
        toml::from_str(text).map_err(|e| distill_core::recipe::toml_error(text, label, &e))?;
    let _ = (
        &card.license,
        &card.source_commit,
        &card.mirror,
        &card.conversion,
        &card.split,
        &card.extra_splits,
    );
    if card.name.is_empty() {
        bail!("{label}: `name` is empty");
    }
    for (prefix, url) in &card.urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("{label}: urls.\"{prefix}\" = `{url}` is not an http(s) URL");
        }
    }
    for f in &card.file {
        let at = format!("{label}: [[file]] `{}`", f.name);
        check_rel_path(&f.name).map_err(|e| anyhow!("{at}: {e}"))?;
        for (key, value, len) in [
            ("sha256", &f.sha256, 64),
            ("uncompressed_sha256", &f.uncompressed_sha256, 64),
            ("md5", &f.md5, 32),
        ] {
            if let Some(v) = value {
                if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("{at}: {key} `{v}` is not {len} hexadecimal digits");
                }
            }
        }
        if f.list && f.sha256.is_none() {
            bail!("{at}: a checksum list (list = true) needs its own sha256");
        }
        if f.uncompressed_sha256.is_some() && !f.name.ends_with(".gz") {
            bail!("{at}: uncompressed_sha256 is only for .gz files");
        }
        let _ = &f.source;
    }
    Ok(card)
}

/// A path inside the data set's folder: relative, no `..`, not empty.
fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    let path = Path::new(p);
    if p.is_empty() || p.ends_with('/') {
        return Err("not a file name".into());
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "`{p}` must be a relative path inside the data set's folder (no `..`, no leading `/`)"
        ));
    }
    Ok(())
}

/// Reads a checksum list (`HEX  PATH` lines) that has been checked against the card.
fn read_list(path: &Path, list_name: &str) -> Result<Vec<FileSpec>> {
    let text = fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: &str| anyhow!("{}:{}: {msg}", path.display(), i + 1);
        let (hex, rest) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `SHA256  PATH`"))?;
        let name = rest.trim_start_matches([' ', '*']);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(&format!("`{hex}` is not a sha256 (64 hex digits)")));
        }
        check_rel_path(name).map_err(|e| bad(&e))?;
        if name == list_name {
            continue;
        }
        out.push(FileSpec {
            name: name.to_string(),
            sha256: Some(hex.to_ascii_lowercase()),
            ..FileSpec::default()
        });
    }
    Ok(out)
}

/// What is wrong with a file on disk, or `Ok(sha256)` when it matches its card entry.
fn check_file(path: &Path, f: &FileSpec) -> std::result::Result<String, String> {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Err("not a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("missing".into()),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(size) = f.size {
        if meta.len() != size {
            return Err(format!(
                "wrong size: expected {size} bytes, found {}",
                meta.len()
            ));
        }
    }
    let mut sha = Sha256::new();
    let mut md5 = Md5::new();
    let mut file = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        if f.md5.is_some() {
            md5.update(&buf[..n]);
        }
    }
    let sha = hex(&sha.finalize());
    if let Some(want) = &f.sha256 {
        if !sha.eq_ignore_ascii_case(want) {
            return Err(format!("sha256 mismatch: expected {want}, found {sha}"));
        }
    }
    if let Some(want) = &f.md5 {
        let got = hex(&md5.finalize());
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!("md5 mismatch: expected {want}, found {got}"));
        }
    }
    if let Some(want) = &f.uncompressed_sha256 {
        let file = fs::File::open(path).map_err(|e| e.to_string())?;
        let mut dec = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
        let mut h = Sha256::new();
        loop {
            let n = dec
                .read(&mut buf)
                .map_err(|e| format!("not a valid gzip file: {e}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let got = hex(&h.finalize());
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!(
                "sha256 of the gunzipped bytes mismatch: expected {want}, found {got}"
            ));
        }
    }
    Ok(sha)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `distill data verify`: every file of the card (and of its checksum lists) checked on disk.
fn verify(card: &Card, root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    let mut unpinned = Vec::new();
    let mut checked = 0usize;
    let mut report = |path: &Path, f: &FileSpec, problems: &mut Vec<String>| -> bool {
        checked += 1;
        match check_file(path, f) {
            Ok(sha) => {
                if !f.has_checksum() {
                    unpinned.push(format!(
                        "{}: the card has no checksum for this file yet, so it is NOT verified (its sha256 is {sha}: fill it in)",
                        path.display()
                    ));
                }
                true
            }
            Err(p) => {
                problems.push(format!("{}: {p}", path.display()));
                false
            }
        }
    };
    for f in &card.file {
        let path = root.join(&f.name);
        let ok = report(&path, f, &mut problems);
        if f.list {
            if !ok {
                problems.push(format!(
                    "{}: the files it lists were not checked (fix this list first)",
                    path.display()
                ));
                continue;
            }
            for e in read_list(&path, &f.name)? {
                // a file the card names itself is checked once, against the card
                if !card.file.iter().any(|c| c.name == e.name) {
                    report(&root.join(&e.name), &e, &mut problems);
                }
            }
        }
    }
    for p in &problems {
        println!("FAILED {p}");
    }
    for u in &unpinned {
        println!("UNVERIFIED {u}");
    }
    if !problems.is_empty() {
        let first = problems.first().cloned().unwrap_or_default();
        bail!(
            "{}: {} of {checked} files failed verification (first: {first})",
            card.name,
            problems.len()
        );
    }
    if !unpinned.is_empty() {
        bail!(
            "{}: {} of {checked} files have no checksum in the card and could not be verified (first: {})",
            card.name,
            unpinned.len(),
            unpinned[0]
        );
    }
    println!(
        "{}: all {checked} files verified in {}",
        card.name,
        root.display()
    );
    Ok(())
}

/// Where `fetch` downloads `f` from.
fn url_of(card: &Card, f: &FileSpec, mirror: Option<&str>) -> Result<String> {
    if let Some(m) = mirror {
        return Ok(format!(
            "{}/{}/{}",
            m.trim_end_matches('/'),
            card.name,
            f.name
        ));
    }
    if let Some(u) = &f.url {
        return Ok(u.clone());
    }
    if let Some((prefix, base)) = card
        .urls
        .iter()
        .filter(|(p, _)| f.name.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
    {
        return Ok(format!("{base}{}", &f.name[prefix.len()..]));
    }
    bail!(
        "{}/{}: the card gives no download URL for it{}; fetch from a mirror of a data dir with --base-url URL or DISTILL_DATA_MIRROR",
        card.name,
        f.name,
        card.no_url
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default()
    )
}

/// `distill data fetch`.
fn fetch(card: &Card, root: &Path, mirror: Option<&str>, agent: &ureq::Agent) -> Result<()> {
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} {wide_msg} {bytes}/{total_bytes} {bytes_per_sec} {bar:30}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut failures = Vec::new();
    let (mut fetched, mut present) = (0usize, 0usize);
    let mut todo: Vec<FileSpec> = card.file.clone();
    let mut i = 0;
    while i < todo.len() {
        let f = todo[i].clone();
        i += 1;
        bar.set_prefix(format!("[{i}/{}]", todo.len()));
        let dest = root.join(&f.name);
        match fetch_one(card, &f, &dest, mirror, agent, &bar) {
            Ok(Fetched::AlreadyThere) => present += 1,
            Ok(Fetched::Downloaded { url, sha }) => {
                fetched += 1;
                bar.suspend(|| {
                    println!("fetched {} from {url}", dest.display());
                    if f.sha256.is_none() && f.uncompressed_sha256.is_none() {
                        println!(
                            "note: the card pins no sha256 for {}; it is {sha} (fill it in)",
                            f.name
                        );
                    }
                });
            }
            Err(e) => {
                bar.suspend(|| eprintln!("failed: {e:#}"));
                failures.push(format!("{e:#}"));
                continue;
            }
        }
        if f.list {
            match read_list(&dest, &f.name) {
                Ok(entries) => todo.extend(
                    entries
                        .into_iter()
                        .filter(|e| !card.file.iter().any(|c| c.name == e.name)),
                ),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    bar.finish_and_clear();
    if !failures.is_empty() {
        bail!(
            "{}: {} of {} files failed ({}); nothing incomplete was put in place, run the fetch again to resume",
            card.name,
            failures.len(),
            todo.len(),
            failures.join("; ")
        );
    }
    println!(
        "{}: {} files in {} ({fetched} downloaded, {present} already there and verified)",
        card.name,
        todo.len(),
        root.display()
    );
    if let Some(next) = &card.after_fetch {
        println!("next: {next}");
    }
    Ok(())
}

enum Fetched {
    AlreadyThere,
    Downloaded { url: String, sha: String },
}

/// `dest` with `.part` appended to its name.
fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

fn fetch_one(
    card: &Card,
    f: &FileSpec,
    dest: &Path,
    mirror: Option<&str>,
    agent: &ureq::Agent,
    bar: &ProgressBar,
) -> Result<Fetched> {
    if f.has_checksum() && check_file(dest, f).is_ok() {
        return Ok(Fetched::AlreadyThere);
    }
    let url = url_of(card, f, mirror)?;
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    let part = part_path(dest);
    bar.set_message(f.name.clone());
    download(agent, &url, &part, f.size, bar)?;
    let sha = match check_file(&part, f) {
        Ok(sha) => sha,
        Err(problem) => {
            // a bad download is not kept: resuming it would only grow a wrong file
            let _ = fs::remove_file(&part);
            bail!(
                "{url}: {problem}; the download was deleted and {} was left as it was",
                dest.display()
            );
        }
    };
    fs::rename(&part, dest)
        .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(Fetched::Downloaded { url, sha })
}

/// Downloads `url` into `part`, continuing what is already there with a `Range` request; the file is
/// fsynced before this returns. Errors name the URL and say that the partial file is kept for a resume.
fn download(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    size: Option<u64>,
    bar: &ProgressBar,
) -> Result<()> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > 0 && size == Some(have) {
        return Ok(()); // complete already (a fetch killed before its check); checked by the caller
    }
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // the part file is the whole file already, or longer than it: the caller's check decides
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            bail!("{url}: HTTP {code} {}", r.status_text())
        }
        Err(ureq::Error::Transport(t)) => bail!("{url}: {}", transport_message(&t)),
    };
    let start = match resp.status() {
        206 => {
            let range = resp.header("Content-Range").unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                bail!("{url}: the server answered the range request bytes={have}- with Content-Range `{range}`");
            }
            have
        }
        200 => 0,
        code => bail!(
            "{url}: unexpected HTTP status {code} {}",
            resp.status_text()
        ),
    };
    let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let total = length.map(|l| l + start).or(size);
    let mut out = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(start > 0)
        .truncate(start == 0)
        .open(part)
        .with_context(|| part.display().to_string())?;
    bar.set_length(total.unwrap_or(0));
    bar.set_position(start);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    let kept = |received: u64| {
        format!(
            "{} bytes kept in {}; run the fetch again to resume",
            start + received,
            part.display()
        )
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = out.sync_all();
                let what = if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) {
                    "timed out waiting for data (stalled server)".to_string()
                } else {
                    e.to_string()
                };
                bail!(
                    "{url}: download interrupted after {received}{} bytes: {what} ({})",
                    length.map(|l| format!(" of {l}")).unwrap_or_default(),
                    kept(received)
                );
            }
        };
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .with_context(|| part.display().to_string())?;
        received += n as u64;
        bar.inc(n as u64);
    }
    out.sync_all().with_context(|| part.display().to_string())?;
    if let Some(l) = length {
        if received < l {
            bail!(
                "{url}: truncated response: the server closed the connection after {received} of {l} bytes ({})",
                kept(received)
            );
        }
    }
    Ok(())
}

fn transport_message(t: &ureq::Transport) -> String {
    let msg = t.to_string();
    if msg.contains("timed out")
        || msg.contains("WouldBlock")
        || msg.contains("temporarily unavailable")
    {
        format!("timed out waiting for the server (stalled or unreachable): {msg}")
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_card_parses_and_names_itself() {
        for (name, text) in BUILTIN_CARDS {
            let card = parse_card(text, name).unwrap();
            assert_eq!(&card.name, name);
            assert!(!card.file.is_empty(), "{name} lists no files");
        }
    }

    #[test]
    fn card_errors_name_the_file_and_entry() {
        let bad = "name = \"x\"\nlicense = \"l\"\nsource = \"s\"\n[[file]]\nname = \"../etc/passwd\"\nsha256 = \"00\"\n";
        let e = parse_card(bad, "x.toml").err().unwrap().to_string();
        assert!(e.contains("x.toml") && e.contains("../etc/passwd"), "{e}");
        let e = parse_card(
            "name = \"x\"\nlicense = \"l\"\nsource = \"s\"\n[[file]]\nname = \"a\"\nsha256 = \"zz\"\n",
            "x.toml",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("sha256 `zz` is not 64 hexadecimal digits"),
            "{e}"
        );
        let e = parse_card(
            "name = \"x\"\nlicense = \"l\"\nsource = \"s\"\nbase_ulr = \"h\"\n",
            "x.toml",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("x.toml:4") && e.contains("base_ulr"), "{e}");
    }

    #[test]
    fn urls_take_the_longest_prefix_and_a_mirror_wins() {
        let card = parse_card(
            "name = \"d\"\nlicense = \"l\"\nsource = \"s\"\nno_url = \"converted\"\n[urls]\n\"rec/\" = \"https://a/r/\"\n\"rec/x/\" = \"https://b/\"\n[[file]]\nname = \"rec/x/1.wav\"\n[[file]]\nname = \"index.tsv\"\n",
            "d.toml",
        )
        .unwrap();
        let f = |n: &str| FileSpec {
            name: n.into(),
            ..FileSpec::default()
        };
        assert_eq!(
            url_of(&card, &f("rec/x/1.wav"), None).unwrap(),
            "https://b/1.wav"
        );
        assert_eq!(
            url_of(&card, &f("rec/2.wav"), None).unwrap(),
            "https://a/r/2.wav"
        );
        let e = url_of(&card, &f("index.tsv"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("d/index.tsv") && e.contains("converted") && e.contains("--base-url"),
            "{e}"
        );
        assert_eq!(
            url_of(&card, &f("index.tsv"), Some("http://127.0.0.1:9/")).unwrap(),
            "http://127.0.0.1:9/d/index.tsv"
        );
    }

    #[test]
    fn checksum_lists_reject_paths_outside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("SUMS");
        fs::write(&p, format!("{}  ../x\n", "a".repeat(64))).unwrap();
        let e = read_list(&p, "SUMS").err().unwrap().to_string();
        assert!(e.contains("SUMS:1") && e.contains("../x"), "{e}");
        fs::write(
            &p,
            format!("{}  SUMS\n{}  a/b.wav\n", "a".repeat(64), "B".repeat(64)),
        )
        .unwrap();
        let l = read_list(&p, "SUMS").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "a/b.wav");
        assert_eq!(l[0].sha256.as_deref(), Some("b".repeat(64).as_str()));
    }
}
