//! Checks of a data set folder against its card: every `[[file]]` and every file its checksum lists name.
//! A file the card pins no checksum for (the members of an archive whose publisher gives only the archive's
//! checksum) is checked against the manifest the fetch wrote when it unpacked that checked archive.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::Result;

use crate::card::{read_list, Card, FileSpec};
use crate::check::{check_file, Expect};

/// The manifest a fetch writes in a data set folder for the files the card pins no checksum for.
pub const MANIFEST: &str = ".distill-fetch.sha256";

/// What a check of a folder found.
#[derive(Default, Debug)]
pub struct Checked {
    /// Files checked.
    pub count: usize,
    /// `PATH: problem` for each file that failed.
    pub problems: Vec<String>,
    /// Files with no checksum in the card or the manifest: `(path, sha256)`.
    pub unpinned: Vec<(String, String)>,
    /// Files checked against the fetch's manifest rather than the card.
    pub by_manifest: usize,
}

impl Checked {
    /// Whether every file is there and matches.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.unpinned.is_empty()
    }
}

/// The card's files with the entries of its checksum lists, as found under `root` (a list that is missing
/// or wrong is reported and its entries are not added).
pub fn all_files(card: &Card, root: &Path, problems: &mut Vec<String>) -> Vec<FileSpec> {
    let mut out: Vec<FileSpec> = card.file.clone();
    for f in card.file.iter().filter(|f| f.list) {
        let path = root.join(&f.name);
        if check_file(&path, f.into()).is_err() {
            continue; // reported with the file itself
        }
        match read_list(&path, &f.name) {
            Ok(entries) => out.extend(
                entries
                    .into_iter()
                    .filter(|e| !card.file.iter().any(|c| c.name == e.name)),
            ),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    out
}

/// Reads a manifest (`SHA256  PATH` lines); a missing one is empty.
pub fn read_manifest(root: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(root.join(MANIFEST)).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, p)| (p.to_string(), h.to_string()))
        .collect()
}

/// Checks every file of `card` under `root`.
pub fn check_all(card: &Card, root: &Path) -> Checked {
    let mut c = Checked::default();
    let manifest = read_manifest(root);
    for f in all_files(card, root, &mut c.problems) {
        let path = root.join(&f.name);
        c.count += 1;
        let mut want: Expect = (&f).into();
        let pinned_by_manifest = !f.has_checksum() && manifest.contains_key(&f.name);
        if pinned_by_manifest {
            want.sha256 = manifest.get(&f.name).map(String::as_str);
            c.by_manifest += 1;
        }
        match check_file(&path, want) {
            Ok(sha) if !f.has_checksum() && !pinned_by_manifest => {
                c.unpinned.push((path.display().to_string(), sha))
            }
            Ok(_) => {}
            Err(p) => c.problems.push(format!("{}: {p}", path.display())),
        }
    }
    c
}

/// `distill data verify`: prints one line per bad file and a summary; fails unless every file matches.
pub fn verify(card: &Card, root: &Path) -> Result<()> {
    if !root.is_dir() {
        anyhow::bail!(
            "{}: not there; get it with `distill data fetch {}` (or point --data-dir / DISTILL_DATA at the folder that holds it)",
            root.display(),
            card.name
        );
    }
    let c = check_all(card, root);
    for p in &c.problems {
        println!("FAILED {p}");
    }
    for (path, sha) in &c.unpinned {
        println!("UNVERIFIED {path}: the card has no checksum for this file, so it is NOT verified (its sha256 is {sha}: fill it in)");
    }
    if let Some(first) = c.problems.first() {
        anyhow::bail!(
            "{}: {} of {} files failed verification (first: {first})",
            card.name,
            c.problems.len(),
            c.count
        );
    }
    if let Some((first, _)) = c.unpinned.first() {
        anyhow::bail!(
            "{}: {} of {} files have no checksum in the card and could not be verified (first: {first})",
            card.name,
            c.unpinned.len(),
            c.count
        );
    }
    let note = if c.by_manifest > 0 {
        format!(
            " ({} of them against the checksums recorded when their archive, itself checked against the card, was unpacked)",
            c.by_manifest
        )
    } else {
        String::new()
    };
    println!(
        "{}: all {} files verified in {}{note}",
        card.name,
        c.count,
        root.display()
    );
    Ok(())
}
