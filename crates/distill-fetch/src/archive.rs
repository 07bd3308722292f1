//! Archive extraction (zip, tar.gz) that an archive cannot turn against the machine: every entry's path is
//! checked before anything is written — an absolute path, a `..` component, a backslash, a symbolic or hard
//! link, a device or a duplicate name refuses the whole archive — and entries are counted as they are
//! written, so one larger than the card allows (or an archive unpacking to more than its total limit, a zip
//! bomb) is refused even when its header lies about its size.
//!
//! [`unpack`] writes into a folder the caller owns (the fetch uses a fresh `.partial` folder and renames it
//! only when the whole archive went well), so a refused or interrupted archive leaves nothing in use.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    path::{Component, Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::http::write_error;

/// How much an archive may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest entry, in bytes.
    pub max_entry: u64,
    /// All entries together, in bytes.
    pub max_total: u64,
}

/// The archive formats [`unpack`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A zip file (stored or deflated entries).
    Zip,
    /// A gzip-compressed tar file.
    TarGz,
}

impl Kind {
    /// `zip` or `tar.gz`.
    pub fn parse(s: &str) -> Result<Kind> {
        match s {
            "zip" => Ok(Kind::Zip),
            "tar.gz" | "tgz" => Ok(Kind::TarGz),
            other => bail!("unknown archive kind `{other}` (expected zip or tar.gz)"),
        }
    }
}

/// The relative path an entry named `raw` is written to, or why it is refused.
pub fn entry_path(raw: &str) -> std::result::Result<Option<PathBuf>, String> {
    if raw.contains('\\') {
        return Err(format!("`{raw}` has a backslash in its path"));
    }
    if raw.contains('\0') {
        return Err(format!("`{raw}` has a NUL byte in its path"));
    }
    if raw.starts_with('/') || (raw.len() > 1 && raw.as_bytes()[1] == b':') {
        return Err(format!("`{raw}` is an absolute path"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("`{raw}` climbs out of the target folder with `..`"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("`{raw}` is an absolute path"))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Everything an extraction refuses, with the archive named.
fn refuse(archive: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{}: archive refused: {why}; nothing was extracted outside the target folder",
        archive.display()
    )
}

/// Extracts `archive` into `dest` (created; it should be empty) within `limits`; returns the files written,
/// relative to `dest`. On an error `dest` may hold part of the archive: the caller removes it.
pub fn unpack(archive: &Path, kind: Kind, dest: &Path, limits: Limits) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dest).map_err(|e| write_error(dest, e))?;
    let mut state = State {
        archive,
        dest,
        limits,
        total: 0,
        seen: BTreeSet::new(),
        files: Vec::new(),
    };
    match kind {
        Kind::Zip => unpack_zip(&mut state)?,
        Kind::TarGz => unpack_tar_gz(&mut state)?,
    }
    Ok(state.files)
}

struct State<'a> {
    archive: &'a Path,
    dest: &'a Path,
    limits: Limits,
    total: u64,
    seen: BTreeSet<PathBuf>,
    files: Vec<PathBuf>,
}

impl State<'_> {
    /// Checks an entry's name and declared size; the path to write a file to (None: nothing to write).
    fn admit(&mut self, raw: &str, declared: u64) -> Result<Option<PathBuf>> {
        let Some(rel) = entry_path(raw).map_err(|e| refuse(self.archive, e))? else {
            return Ok(None);
        };
        if declared > self.limits.max_entry {
            return Err(refuse(
                self.archive,
                format!(
                    "entry `{raw}` is {declared} bytes, more than the {} the card allows for one entry",
                    self.limits.max_entry
                ),
            ));
        }
        if !self.seen.insert(rel.clone()) {
            return Err(refuse(self.archive, format!("entry `{raw}` appears twice")));
        }
        Ok(Some(rel))
    }

    fn make_dir(&self, rel: &Path) -> Result<()> {
        let p = self.dest.join(rel);
        fs::create_dir_all(&p).map_err(|e| write_error(&p, e))
    }

    /// Writes one file entry, counting its bytes against the limits as they come.
    fn write(&mut self, rel: PathBuf, raw: &str, reader: &mut dyn Read) -> Result<()> {
        let path = self.dest.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| write_error(&path, e))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| refuse(self.archive, format!("entry `{raw}` cannot be read: {e}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            self.total += n as u64;
            if written > self.limits.max_entry {
                return Err(refuse(
                    self.archive,
                    format!(
                        "entry `{raw}` unpacks to more than the {} bytes the card allows for one entry (its header said less)",
                        self.limits.max_entry
                    ),
                ));
            }
            if self.total > self.limits.max_total {
                return Err(refuse(
                    self.archive,
                    format!(
                        "the archive unpacks to more than the {} bytes the card allows in all",
                        self.limits.max_total
                    ),
                ));
            }
            out.write_all(&buf[..n])
                .map_err(|e| write_error(&path, e))?;
        }
        out.sync_all().map_err(|e| write_error(&path, e))?;
        self.files.push(rel);
        Ok(())
    }
}

fn unpack_zip(st: &mut State) -> Result<()> {
    let file = fs::File::open(st.archive).with_context(|| st.archive.display().to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| refuse(st.archive, format!("not a readable zip file: {e}")))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| refuse(st.archive, format!("entry {i} cannot be read: {e}")))?;
        let raw = String::from_utf8_lossy(entry.name_raw()).to_string();
        let is_link =
            entry.is_symlink() || entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000);
        if is_link {
            return Err(refuse(
                st.archive,
                format!("entry `{raw}` is a symbolic link"),
            ));
        }
        if let Some(mode) = entry.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 && kind != 0o040000 {
                return Err(refuse(
                    st.archive,
                    format!("entry `{raw}` is not a regular file or folder (mode {mode:o})"),
                ));
            }
        }
        if entry.encrypted() {
            return Err(refuse(st.archive, format!("entry `{raw}` is encrypted")));
        }
        let declared = entry.size();
        let Some(rel) = st.admit(&raw, declared)? else {
            continue;
        };
        if entry.is_dir() {
            st.make_dir(&rel)?;
        } else {
            st.write(rel, &raw, &mut entry)?;
        }
    }
    Ok(())
}

fn unpack_tar_gz(st: &mut State) -> Result<()> {
    let file = fs::File::open(st.archive).with_context(|| st.archive.display().to_string())?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut tar = tar::Archive::new(gz);
    let entries = tar
        .entries()
        .map_err(|e| refuse(st.archive, format!("not a readable tar.gz file: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| refuse(st.archive, format!("a tar entry cannot be read: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue; // e.g. the commit id `git archive` records
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).to_string())
                .unwrap_or_default();
            let what = if kind.is_symlink() {
                "symbolic"
            } else {
                "hard"
            };
            return Err(refuse(
                st.archive,
                format!("entry `{raw}` is a {what} link (to `{target}`)"),
            ));
        }
        if !(kind.is_file() || kind.is_dir() || kind.is_contiguous()) {
            return Err(refuse(
                st.archive,
                format!(
                    "entry `{raw}` is not a regular file or folder (tar type {:?})",
                    kind
                ),
            ));
        }
        let declared = entry.header().size().unwrap_or(u64::MAX);
        let Some(rel) = st.admit(&raw, declared)? else {
            continue;
        };
        if kind.is_dir() {
            st.make_dir(&rel)?;
        } else {
            st.write(rel, &raw, &mut entry)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside() {
        assert_eq!(
            entry_path("a/b.txt").unwrap(),
            Some(PathBuf::from("a/b.txt"))
        );
        assert_eq!(entry_path("./a/").unwrap(), Some(PathBuf::from("a")));
        assert_eq!(entry_path("./").unwrap(), None);
        for bad in ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\..\\x"] {
            assert!(entry_path(bad).is_err(), "{bad}");
        }
    }
}
