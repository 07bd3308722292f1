//! `distill data fetch NAME`: a data set assembled in a staging folder and put in place in one rename.
//!
//! ```text
//! DATA/.NAME.fetch.lock        flock: one fetch of NAME at a time
//! DATA/.NAME.fetch/sources/    the upstream files (downloads resume from FILE.part), unpacked archives
//! DATA/.NAME.fetch/out/        the data set being made: files downloaded directly, unpacked or converted
//! DATA/NAME/                   appears only by renaming out/ once every file in it verifies
//! ```
//!
//! 1. every `[[upstream]]` file is downloaded (from its URL, or `MIRROR/NAME/<name>`) and checked, then each
//!    archive is unpacked with the guards of archive.rs into a fresh folder renamed when complete;
//! 2. the card's `builtin` files are written, and every `[[file]]` with a URL (and every file its checksum
//!    lists name) is downloaded into `out/` and checked — or taken from an existing `DATA/NAME/` copy that
//!    already matches the card;
//! 3. the card's conversion writes the rest of `out/`;
//! 4. every file in `out/` is checked against the card; only then is an old `DATA/NAME` (if any) moved to
//!    `DATA/NAME.replaced-<secs>` (never deleted), `out/` renamed to `DATA/NAME`, and the staging folder
//!    removed.
//!
//! A fetch killed at any point leaves `DATA/NAME` as it was (or absent), never half made; the next fetch
//! resumes downloads from their `.part` files and redoes the unpacking and the conversion.

use std::{
    fs,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::archive::{unpack, Kind, Limits};
use crate::card::{read_list, Card, FileSpec, Upstream};
use crate::check::{check_file, Expect};
use crate::http::{download, part_path, write_error, Client, Unreachable};
use crate::verify::{check_all, MANIFEST};

/// How a fetch gets its files.
pub struct Options<'a> {
    /// A mirror: every downloaded file comes from `MIRROR/NAME/<name>` instead of the card's URLs.
    pub mirror: Option<&'a str>,
    /// The HTTP client.
    pub client: &'a Client,
}

/// What a fetch did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files downloaded now.
    pub downloaded: usize,
    /// Files (upstream or of the data set) already there and checked.
    pub reused: usize,
    /// Files in the finished data set.
    pub files: usize,
    /// The data set was complete already: nothing was done.
    pub already_complete: bool,
    /// Where the previous folder (which did not verify) was moved, if there was one.
    pub replaced: Option<PathBuf>,
}

/// The staging folder of data set `name`.
pub fn staging_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(format!(".{name}.fetch"))
}

fn progress_bar() -> ProgressBar {
    if std::io::stderr().is_terminal() {
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
    }
}

/// Holds `DATA/.NAME.fetch.lock` while a fetch runs (released by the kernel if the process dies).
fn lock(data_dir: &Path, name: &str) -> Result<fs::File> {
    let path = data_dir.join(format!(".{name}.fetch.lock"));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| write_error(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!(
                "another fetch of {name} holds {}; waiting for it to finish",
                path.display()
            );
            file.lock().with_context(|| path.display().to_string())?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(anyhow!("locking {}: {e}", path.display())),
    }
    Ok(file)
}

/// Fetches the data set of `card` into `data_dir/NAME`.
pub fn fetch(card: &Card, data_dir: &Path, opts: &Options) -> Result<Summary> {
    fs::create_dir_all(data_dir).map_err(|e| write_error(data_dir, e))?;
    let _lock = lock(data_dir, &card.name)?;
    let target = data_dir.join(&card.name);
    if target.is_dir() {
        let present = check_all(card, &target);
        if present.ok() {
            return Ok(Summary {
                files: present.count,
                already_complete: true,
                ..Summary::default()
            });
        }
    }
    let staging = staging_dir(data_dir, &card.name);
    let (sources, out) = (staging.join("sources"), staging.join("out"));
    for d in [&sources, &out] {
        fs::create_dir_all(d).map_err(|e| write_error(d, e))?;
    }
    let bar = progress_bar();
    let mut summary = Summary::default();
    let mut failures = Vec::new();

    // 1. upstream files, checked, then unpacked
    for (i, u) in card.upstream.iter().enumerate() {
        bar.set_prefix(format!("[upstream {}/{}]", i + 1, card.upstream.len()));
        let dest = sources.join(&u.name);
        let url = match opts.mirror {
            Some(m) => mirror_url(m, &card.name, &u.name),
            None => card
                .upstream_url(u)
                .ok_or_else(|| anyhow!("{}: [[upstream]] `{}` has no URL", card.name, u.name))?,
        };
        let got = get(opts.client, &url, &dest, u.into(), &bar);
        if tally(got, &mut summary, &mut failures, &bar) == Tally::Unreachable {
            break; // no network: the other files cannot come either
        }
    }
    if !failures.is_empty() {
        bar.finish_and_clear();
        return Err(incomplete(card, &staging, &target, &failures));
    }
    let mut unpacked_manifest = Vec::new();
    for u in card.upstream.iter().filter(|u| u.unpack.is_some()) {
        unpack_upstream(card, u, &sources, &out, &mut unpacked_manifest)?;
    }

    // 2. builtin files, then the files downloaded directly (with those their lists name)
    for f in card.file.iter().filter(|f| f.builtin) {
        let text = card.builtin_text(&f.name)?;
        write_atomic(&out.join(&f.name), text.as_bytes())?;
    }
    let mut todo: Vec<FileSpec> = card.file.clone();
    let mut i = 0;
    while i < todo.len() {
        let f = todo[i].clone();
        i += 1;
        let dest = out.join(&f.name);
        if let Some(url) = file_url(card, &f, opts.mirror) {
            bar.set_prefix(format!("[{i}/{}]", todo.len()));
            // staged already, else a matching copy in the old folder, else downloaded: each file hashed once
            let reuse = target.join(&f.name);
            let pinned = f.has_checksum();
            let got = if pinned && check_file(&dest, (&f).into()).is_ok() {
                Ok(false)
            } else if pinned && check_file(&reuse, (&f).into()).is_ok() {
                copy_atomic(&reuse, &dest).map(|()| false)
            } else {
                get(opts.client, &url, &dest, (&f).into(), &bar)
            };
            match tally(got, &mut summary, &mut failures, &bar) {
                Tally::Done => {}
                Tally::Failed => continue,
                Tally::Unreachable => break, // no network: the other files cannot come either
            }
        }
        if f.list && check_file(&dest, (&f).into()).is_ok() {
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
        return Err(incomplete(card, &staging, &target, &failures));
    }

    // 3. the conversion
    if let Some(conv) = &card.convert {
        eprintln!("{}: converting the upstream files ({conv})", card.name);
        crate::convert::run(conv, &sources, &out).with_context(|| {
            format!(
                "{}: the conversion `{conv}` of the upstream files in {} failed; {} was not touched",
                card.name,
                sources.display(),
                target.display()
            )
        })?;
    }

    // 4. check everything (the members of a checked archive that the card pins no checksum for go into the
    // manifest with the sha256 this check computed), then put it in place
    let mut checked = check_all(card, &out);
    if !unpacked_manifest.is_empty() {
        let from_archive = |path: &str| {
            unpacked_manifest
                .iter()
                .find(|n| out.join(n).display().to_string() == path)
                .cloned()
        };
        let mut text = String::new();
        checked
            .unpinned
            .retain(|(path, sha)| match from_archive(path) {
                Some(name) => {
                    text.push_str(&format!("{sha}  {name}\n"));
                    false
                }
                None => true,
            });
        write_atomic(&out.join(MANIFEST), text.as_bytes())?;
    }
    if !checked.ok() {
        let mut all = checked.problems.clone();
        all.extend(
            checked
                .unpinned
                .iter()
                .map(|(p, _)| format!("{p}: no checksum in the card")),
        );
        bail!(
            "{}: {} of {} files of the fetched data set failed their check (first: {}); {} was not touched and the staging folder {} is kept for inspection",
            card.name,
            all.len(),
            checked.count,
            all[0],
            target.display(),
            staging.display()
        );
    }
    summary.files = checked.count;
    summary.replaced = put_in_place(&staging, &out, &target)?;
    Ok(summary)
}

/// The URL of a `[[file]]` to download, or `None` when it is made here.
fn file_url(card: &Card, f: &FileSpec, mirror: Option<&str>) -> Option<String> {
    let url = card.file_url(f)?;
    Some(match mirror {
        Some(m) => mirror_url(m, &card.name, &f.name),
        None => url,
    })
}

fn mirror_url(mirror: &str, name: &str, file: &str) -> String {
    format!("{}/{name}/{file}", mirror.trim_end_matches('/'))
}

fn incomplete(card: &Card, staging: &Path, target: &Path, failures: &[String]) -> anyhow::Error {
    let first = failures.first().map(String::as_str).unwrap_or_default();
    let more = match failures.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more, listed above)", n - 1),
    };
    anyhow!(
        "{}: a download failed: {first}{more}; {} was not touched, and what was downloaded is kept in {} for the next fetch to resume",
        card.name,
        target.display(),
        staging.display()
    )
}

/// What one download's outcome means for the rest of the fetch.
#[derive(PartialEq)]
enum Tally {
    /// Downloaded or already there.
    Done,
    /// Failed (said, and kept for the summary); the other files are still tried.
    Failed,
    /// The host cannot be reached: no other file can come either.
    Unreachable,
}

/// Counts `got` into the summary, or records and says its failure.
fn tally(
    got: Result<bool>,
    summary: &mut Summary,
    failures: &mut Vec<String>,
    bar: &ProgressBar,
) -> Tally {
    match got {
        Ok(true) => summary.downloaded += 1,
        Ok(false) => summary.reused += 1,
        Err(e) => {
            let unreachable = e.downcast_ref::<Unreachable>().is_some();
            if !unreachable {
                bar.suspend(|| eprintln!("failed: {e:#}"));
            }
            failures.push(format!("{e:#}"));
            return if unreachable {
                Tally::Unreachable
            } else {
                Tally::Failed
            };
        }
    }
    Tally::Done
}

/// Makes `dest` a checked copy of `url`: `Ok(false)` when it already was one, `Ok(true)` when downloaded.
fn get(client: &Client, url: &str, dest: &Path, want: Expect, bar: &ProgressBar) -> Result<bool> {
    let pinned = want.sha256.is_some() || want.md5.is_some() || want.uncompressed_sha256.is_some();
    if pinned && check_file(dest, want).is_ok() {
        return Ok(false);
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
    let part = part_path(dest);
    bar.set_message(
        dest.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string(),
    );
    download(client, url, &part, want.size, bar)?;
    if let Err(problem) = check_file(&part, want) {
        // a bad download is not kept: resuming it would only grow a wrong file
        let _ = fs::remove_file(&part);
        bail!("{url}: {problem}; the download was deleted (nothing was put in place)");
    }
    fs::rename(&part, dest)
        .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    sync_dir(parent);
    Ok(true)
}

fn unpack_upstream(
    card: &Card,
    u: &Upstream,
    sources: &Path,
    out: &Path,
    manifest: &mut Vec<String>,
) -> Result<()> {
    let kind = Kind::parse(u.unpack.as_deref().unwrap_or_default())?;
    let archive = sources.join(&u.name);
    let size = fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    let limits = Limits {
        max_entry: u.max_entry.unwrap_or(4 << 30),
        max_total: u
            .max_unpacked
            .unwrap_or_else(|| size.saturating_mul(64).max(1 << 30)),
    };
    let stem = u
        .name
        .trim_end_matches(".zip")
        .trim_end_matches(".tar.gz")
        .trim_end_matches(".tgz");
    let into_dataset = u.unpack_to.as_deref() == Some("dataset");
    let partial = sources.join(format!("{stem}.unpacking"));
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| partial.display().to_string())?;
    }
    eprintln!("{}: unpacking {}", card.name, u.name);
    let files = match unpack(&archive, kind, &partial, limits) {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    if into_dataset {
        for rel in files {
            let to = out.join(&rel);
            if let Some(p) = to.parent() {
                fs::create_dir_all(p).map_err(|e| write_error(p, e))?;
            }
            fs::rename(partial.join(&rel), &to)
                .with_context(|| format!("moving {} into {}", rel.display(), out.display()))?;
            manifest.push(rel.to_string_lossy().replace('\\', "/"));
        }
        fs::remove_dir_all(&partial).with_context(|| partial.display().to_string())?;
    } else {
        let done = sources.join(stem);
        if done.exists() {
            fs::remove_dir_all(&done).with_context(|| done.display().to_string())?;
        }
        fs::rename(&partial, &done).with_context(|| done.display().to_string())?;
    }
    Ok(())
}

/// Moves the finished `out` to `target`, then removes `staging`. An old `target` (one that did not verify) is
/// not deleted: it is moved to `NAME.replaced-<unix seconds>` beside it, returned so the user can be told.
fn put_in_place(staging: &Path, out: &Path, target: &Path) -> Result<Option<PathBuf>> {
    let mut kept = None;
    if target.exists() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".replaced-{secs}"));
        let aside = target.with_file_name(name);
        fs::rename(target, &aside).with_context(|| {
            format!(
                "moving the old {} aside to {}",
                target.display(),
                aside.display()
            )
        })?;
        kept = Some(aside);
    }
    fs::rename(out, target)
        .with_context(|| format!("renaming {} to {}", out.display(), target.display()))?;
    if let Some(p) = target.parent() {
        sync_dir(p);
    }
    fs::remove_dir_all(staging).with_context(|| staging.display().to_string())?;
    Ok(kept)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).map_err(|e| write_error(p, e))?;
    }
    let tmp = part_path(path);
    let mut f = fs::File::create(&tmp).map_err(|e| write_error(&tmp, e))?;
    f.write_all(bytes).map_err(|e| write_error(&tmp, e))?;
    f.sync_all().map_err(|e| write_error(&tmp, e))?;
    fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    if let Some(p) = to.parent() {
        fs::create_dir_all(p).map_err(|e| write_error(p, e))?;
    }
    let tmp = part_path(to);
    fs::copy(from, &tmp).map_err(|e| write_error(&tmp, e))?;
    fs::rename(&tmp, to).with_context(|| to.display().to_string())?;
    Ok(())
}
