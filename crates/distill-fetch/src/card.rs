//! Data set cards (`datasets/NAME/dataset.toml`): what a data set is made of, where each part comes from and
//! the checksum of every file.
//!
//! A card has three kinds of entries:
//! * `[[upstream]]`: a file as its public upstream publishes it (a pickle, an archive, a CSV), downloaded into
//!   the fetch's `sources/` folder and checked (size, sha256 or md5) before anything reads it; an archive
//!   (`unpack = "zip"` or `"tar.gz"`) is then extracted with guards (archive.rs);
//! * `[[file]]`: a file of the data set as the plugin reads it, with its checksum. It is downloaded directly
//!   when it has a URL (its own `url` or a `[urls]` prefix), written from the card's own folder when
//!   `builtin = true` (a checksum list that ships with the card), else made by the card's conversion
//!   (`convert = "NAME"`) or by unpacking an upstream archive into the data set;
//! * `list = true` on a `[[file]]`: a checksum list (`SHA256  PATH` lines) whose every path is a file of the
//!   data set too.

use std::{
    collections::BTreeMap,
    fs,
    path::{Component, Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::convert::CONVERSIONS;

/// A card compiled into the binary: its name, its text and the files that ship with it (`builtin = true`).
pub struct BuiltinCard {
    /// The data set's name (the folder under the data dir).
    pub name: &'static str,
    /// The text of `dataset.toml`.
    pub text: &'static str,
    /// The card's `builtin` files: name and content.
    pub files: &'static [(&'static str, &'static str)],
}

/// The project's data set cards, compiled in (`--card FILE` reads another one).
pub const BUILTIN_CARDS: &[BuiltinCard] = &[
    BuiltinCard {
        name: "mnist",
        text: include_str!("../../../datasets/mnist/dataset.toml"),
        files: &[],
    },
    BuiltinCard {
        name: "cifar10",
        text: include_str!("../../../datasets/cifar10/dataset.toml"),
        files: &[],
    },
    BuiltinCard {
        name: "cifar100",
        text: include_str!("../../../datasets/cifar100/dataset.toml"),
        files: &[],
    },
    BuiltinCard {
        name: "cora",
        text: include_str!("../../../datasets/cora/dataset.toml"),
        files: &[],
    },
    BuiltinCard {
        name: "fsdd",
        text: include_str!("../../../datasets/fsdd/dataset.toml"),
        files: &[(
            "SHA256SUMS",
            include_str!("../../../datasets/fsdd/SHA256SUMS"),
        )],
    },
    BuiltinCard {
        name: "coco128",
        text: include_str!("../../../datasets/coco128/dataset.toml"),
        files: &[(
            "SHA256SUMS",
            include_str!("../../../datasets/coco128/SHA256SUMS"),
        )],
    },
    BuiltinCard {
        name: "sst2",
        text: include_str!("../../../datasets/sst2/dataset.toml"),
        files: &[],
    },
    BuiltinCard {
        name: "stsb",
        text: include_str!("../../../datasets/stsb/dataset.toml"),
        files: &[],
    },
];

/// The built-in card of `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static BuiltinCard> {
    BUILTIN_CARDS.iter().find(|c| c.name == name)
}

/// A data set card.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// The folder under the data dir.
    pub name: String,
    /// One line for `distill data list`.
    #[serde(default)]
    pub description: Option<String>,
    /// The data set's license.
    pub license: String,
    /// Where the data comes from (for people).
    pub source: String,
    /// The upstream commit, when the source is a repository.
    #[serde(default)]
    pub source_commit: Option<String>,
    /// A mirror of the upstream (for people).
    #[serde(default)]
    pub mirror: Option<String>,
    /// How the upstream files become the data set (for people; `convert` names the code).
    #[serde(default)]
    pub conversion: Option<String>,
    /// The split rules (for people).
    #[serde(default)]
    pub split: Option<String>,
    /// Other splits (for people).
    #[serde(default)]
    pub extra_splits: Option<String>,
    /// What to do after a fetch (printed).
    #[serde(default)]
    pub after_fetch: Option<String>,
    /// The built-in conversion that makes the data set's files from the upstream files (convert/mod.rs).
    #[serde(default)]
    pub convert: Option<String>,
    /// Where a `[[file]]` is downloaded: path prefix -> URL prefix (the longest matching prefix wins).
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
    /// Where an `[[upstream]]` file is downloaded: name prefix -> URL prefix (the longest matching prefix wins).
    #[serde(default)]
    pub upstream_urls: BTreeMap<String, String>,
    /// The upstream files.
    #[serde(default)]
    pub upstream: Vec<Upstream>,
    /// The data set's files.
    #[serde(default)]
    pub file: Vec<FileSpec>,
    /// Where the card was read from (for its `builtin` files); not a key of the TOML.
    #[serde(skip)]
    pub origin: Origin,
}

/// Where a card comes from.
#[derive(Debug, Default, Clone)]
pub enum Origin {
    /// Compiled in.
    #[default]
    Builtin,
    /// A `dataset.toml` on disk (its `builtin` files sit next to it).
    File(PathBuf),
}

/// One upstream file.
#[derive(serde::Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Its path under the fetch's `sources/` folder (and under a mirror's `NAME/`).
    pub name: String,
    /// Its URL (else from `[upstream_urls]`).
    #[serde(default)]
    pub url: Option<String>,
    /// Bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// sha256 of the file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// md5 of the file (where the upstream publishes only that).
    #[serde(default)]
    pub md5: Option<String>,
    /// An archive to extract: `zip` or `tar.gz`.
    #[serde(default)]
    pub unpack: Option<String>,
    /// Where the archive's entries go: `sources` (default: `sources/<name without extension>/`, for the
    /// conversion) or `dataset` (the data set's own folder).
    #[serde(default)]
    pub unpack_to: Option<String>,
    /// The largest entry the archive may hold, in bytes (default 4 GiB); a bigger one is refused.
    #[serde(default)]
    pub max_entry: Option<u64>,
    /// The most bytes the whole archive may unpack to (default 64 × its own size, at least 1 GiB).
    #[serde(default)]
    pub max_unpacked: Option<u64>,
}

/// One file of a data set.
#[derive(serde::Deserialize, Clone, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path relative to DATA_DIR/NAME.
    pub name: String,
    /// sha256 of the file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// sha256 of the gunzipped bytes (for `.gz` files whose compressed bytes differ between copies).
    #[serde(default)]
    pub uncompressed_sha256: Option<String>,
    /// md5 of the file.
    #[serde(default)]
    pub md5: Option<String>,
    /// Bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// This file's own URL (instead of the card's `urls`).
    #[serde(default)]
    pub url: Option<String>,
    /// Where it comes from (for people).
    #[serde(default)]
    pub source: Option<String>,
    /// A checksum list (`SHA256  PATH` per line, as `sha256sum` writes): every path in it is also a file
    /// of the data set, checked against its line.
    #[serde(default)]
    pub list: bool,
    /// The file ships with the card (next to its dataset.toml) instead of being downloaded or converted.
    #[serde(default)]
    pub builtin: bool,
}

impl FileSpec {
    /// Whether the card pins a checksum for the file.
    pub fn has_checksum(&self) -> bool {
        self.sha256.is_some() || self.uncompressed_sha256.is_some() || self.md5.is_some()
    }
}

impl Card {
    /// Reads the card of `name`: `card_file` when given (it must be for `name`), else the built-in one.
    pub fn open(name: &str, card_file: Option<&Path>) -> Result<Card> {
        match card_file {
            Some(path) => {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("reading the card {}", path.display()))?;
                let mut card = parse_card(&text, &path.display().to_string())?;
                if card.name != name {
                    bail!(
                        "{}: the card is for `{}`, not `{name}`",
                        path.display(),
                        card.name
                    );
                }
                card.origin = Origin::File(path.to_path_buf());
                Ok(card)
            }
            None => {
                let Some(b) = builtin(name) else {
                    let known: Vec<&str> = BUILTIN_CARDS.iter().map(|c| c.name).collect();
                    bail!(
                        "unknown data set `{name}` (cards: {}; or give one with --card FILE)",
                        known.join(", ")
                    );
                };
                parse_card(b.text, &format!("datasets/{name}/dataset.toml"))
            }
        }
    }

    /// The text of a `builtin = true` file of the card.
    pub fn builtin_text(&self, file: &str) -> Result<String> {
        match &self.origin {
            Origin::Builtin => builtin(&self.name)
                .and_then(|b| b.files.iter().find(|(n, _)| *n == file))
                .map(|(_, t)| t.to_string())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: `{file}` is marked builtin but does not ship with the binary",
                        self.name
                    )
                }),
            Origin::File(card) => {
                let path = card.parent().unwrap_or(Path::new(".")).join(file);
                fs::read_to_string(&path).with_context(|| {
                    format!(
                        "{}: `{file}` is marked builtin, so it must sit next to the card",
                        path.display()
                    )
                })
            }
        }
    }

    /// The URL of a `[[file]]`: its own `url`, else the longest `[urls]` prefix; `None` when the file is
    /// made by the conversion, shipped with the card or unpacked from an archive.
    pub fn file_url(&self, f: &FileSpec) -> Option<String> {
        if f.builtin {
            return None;
        }
        f.url.clone().or_else(|| prefix_url(&self.urls, &f.name))
    }

    /// The URL of an upstream file: its own `url`, else the longest `[upstream_urls]` prefix.
    pub fn upstream_url(&self, u: &Upstream) -> Option<String> {
        u.url
            .clone()
            .or_else(|| prefix_url(&self.upstream_urls, &u.name))
    }

    /// Whether some upstream archive unpacks into the data set's folder (its files need no URL).
    pub fn unpacks_into_dataset(&self) -> bool {
        self.upstream
            .iter()
            .any(|u| u.unpack.is_some() && u.unpack_to.as_deref() == Some("dataset"))
    }
}

fn prefix_url(map: &BTreeMap<String, String>, name: &str) -> Option<String> {
    map.iter()
        .filter(|(p, _)| name.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        .map(|(prefix, base)| format!("{base}{}", &name[prefix.len()..]))
}

fn check_hex(at: &str, key: &str, value: &Option<String>, len: usize) -> Result<()> {
    if let Some(v) = value {
        if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{at}: {key} `{v}` is not {len} hexadecimal digits");
        }
    }
    Ok(())
}

fn check_http(at: &str, url: &str) -> Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("{at}: `{url}` is not an http(s) URL");
    }
    Ok(())
}

/// Parses and checks a card; `label` names it in errors.
pub fn parse_card(text: &str, label: &str) -> Result<Card> {
    let card: Card = toml::from_str(text).map_err(|e| toml_error(text, label, &e))?;
    if card.name.is_empty() {
        bail!("{label}: `name` is empty");
    }
    check_rel_path(&card.name)
        .map_err(|e| anyhow!("{label}: name: {e}"))
        .and_then(|()| {
            if card.name.contains('/') {
                bail!("{label}: name `{}` must be one folder name", card.name)
            }
            Ok(())
        })?;
    for (prefix, url) in card.urls.iter().chain(&card.upstream_urls) {
        check_http(&format!("{label}: urls.\"{prefix}\""), url)?;
    }
    if let Some(c) = &card.convert {
        if !CONVERSIONS.contains(&c.as_str()) {
            bail!(
                "{label}: convert = `{c}` is not a known conversion (known: {})",
                CONVERSIONS.join(", ")
            );
        }
    }
    for u in &card.upstream {
        let at = format!("{label}: [[upstream]] `{}`", u.name);
        check_rel_path(&u.name).map_err(|e| anyhow!("{at}: {e}"))?;
        check_hex(&at, "sha256", &u.sha256, 64)?;
        check_hex(&at, "md5", &u.md5, 32)?;
        if u.sha256.is_none() && u.md5.is_none() {
            bail!("{at}: an upstream file needs a sha256 (or the md5 its publisher gives), checked before it is used");
        }
        match card.upstream_url(u) {
            Some(url) => check_http(&at, &url)?,
            None => bail!("{at}: no `url` and no [upstream_urls] prefix matches it"),
        }
        match u.unpack.as_deref() {
            None | Some("zip") | Some("tar.gz") => {}
            Some(other) => bail!("{at}: unpack = `{other}`: expected \"zip\" or \"tar.gz\""),
        }
        match u.unpack_to.as_deref() {
            None | Some("sources") | Some("dataset") => {}
            Some(other) => {
                bail!("{at}: unpack_to = `{other}`: expected \"sources\" or \"dataset\"")
            }
        }
        if u.unpack_to.is_some() && u.unpack.is_none() {
            bail!("{at}: unpack_to without unpack");
        }
    }
    for (i, u) in card.upstream.iter().enumerate() {
        if card.upstream[..i].iter().any(|o| o.name == u.name) {
            bail!("{label}: [[upstream]] `{}` is listed twice", u.name);
        }
    }
    for f in &card.file {
        let at = format!("{label}: [[file]] `{}`", f.name);
        check_rel_path(&f.name).map_err(|e| anyhow!("{at}: {e}"))?;
        check_hex(&at, "sha256", &f.sha256, 64)?;
        check_hex(&at, "uncompressed_sha256", &f.uncompressed_sha256, 64)?;
        check_hex(&at, "md5", &f.md5, 32)?;
        if f.list && f.sha256.is_none() {
            bail!("{at}: a checksum list (list = true) needs its own sha256");
        }
        if f.uncompressed_sha256.is_some() && !f.name.ends_with(".gz") {
            bail!("{at}: uncompressed_sha256 is only for .gz files");
        }
        if f.builtin && f.url.is_some() {
            bail!("{at}: a builtin file has no url");
        }
        if let Some(url) = &f.url {
            check_http(&at, url)?;
        }
        if card.file_url(f).is_none()
            && !f.builtin
            && card.convert.is_none()
            && !card.unpacks_into_dataset()
        {
            bail!("{at}: no url, not builtin, and the card has no conversion or archive that makes it");
        }
    }
    Ok(card)
}

/// A TOML error as `FILE:LINE:COL: message`.
fn toml_error(text: &str, label: &str, e: &toml::de::Error) -> anyhow::Error {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            anyhow!("{label}:{line}:{col}: {}", e.message())
        }
        None => anyhow!("{label}: {}", e.message()),
    }
}

/// A path inside the data set's folder: relative, no `..`, not empty.
pub fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    let path = Path::new(p);
    if p.is_empty() || p.ends_with('/') {
        return Err("not a file name".into());
    }
    if p.contains('\\') || p.contains('\0') {
        return Err(format!("`{p}` has a backslash or NUL in it"));
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
pub fn read_list(path: &Path, list_name: &str) -> Result<Vec<FileSpec>> {
    let text = fs::read_to_string(path).with_context(|| path.display().to_string())?;
    parse_list(&text, &path.display().to_string(), list_name)
}

/// Parses a checksum list's text; `label` names it in errors.
pub fn parse_list(text: &str, label: &str, list_name: &str) -> Result<Vec<FileSpec>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: &str| anyhow!("{label}:{}: {msg}", i + 1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_card_parses_and_names_itself() {
        for b in BUILTIN_CARDS {
            let card = parse_card(b.text, b.name).unwrap();
            assert_eq!(card.name, b.name);
            assert!(!card.file.is_empty(), "{} lists no files", b.name);
            for f in card.file.iter().filter(|f| f.builtin) {
                let text = card.builtin_text(&f.name).unwrap();
                assert!(!text.is_empty());
            }
        }
    }

    #[test]
    fn card_errors_name_the_file_and_entry() {
        let head = "name = \"x\"\nlicense = \"l\"\nsource = \"s\"\n";
        let e = parse_card(
            &format!("{head}[[file]]\nname = \"../etc/passwd\"\nurl = \"https://a/b\"\n"),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.toml") && e.contains("../etc/passwd"), "{e}");
        let e = parse_card(
            &format!("{head}[[file]]\nname = \"a\"\nsha256 = \"zz\"\nurl = \"https://a/b\"\n"),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sha256 `zz` is not 64 hexadecimal digits"),
            "{e}"
        );
        let e = parse_card(&format!("{head}base_ulr = \"h\"\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml:4") && e.contains("base_ulr"), "{e}");
        let e = parse_card(
            &format!("{head}[[upstream]]\nname = \"a.zip\"\nurl = \"https://h/a.zip\"\n"),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`a.zip`") && e.contains("needs a sha256"), "{e}");
        let e = parse_card(&format!("{head}convert = \"nope\"\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`nope`") && e.contains("planetoid-cora"), "{e}");
        let e = parse_card(&format!("{head}[[file]]\nname = \"a\"\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no url, not builtin"), "{e}");
    }

    #[test]
    fn urls_take_the_longest_prefix() {
        let card = parse_card(
            "name = \"d\"\nlicense = \"l\"\nsource = \"s\"\nconvert = \"sst2\"\n[urls]\n\"rec/\" = \"https://a/r/\"\n\"rec/x/\" = \"https://b/\"\n[[file]]\nname = \"rec/x/1.wav\"\n[[file]]\nname = \"index.tsv\"\n",
            "d.toml",
        )
        .unwrap();
        let f = |n: &str| FileSpec {
            name: n.into(),
            ..FileSpec::default()
        };
        assert_eq!(card.file_url(&f("rec/x/1.wav")).unwrap(), "https://b/1.wav");
        assert_eq!(card.file_url(&f("rec/2.wav")).unwrap(), "https://a/r/2.wav");
        assert_eq!(card.file_url(&f("index.tsv")), None);
    }

    #[test]
    fn checksum_lists_reject_paths_outside_the_folder() {
        let e = parse_list(&format!("{}  ../x\n", "a".repeat(64)), "SUMS", "SUMS")
            .unwrap_err()
            .to_string();
        assert!(e.contains("SUMS:1") && e.contains("../x"), "{e}");
        let l = parse_list(
            &format!("{}  SUMS\n{}  a/b.wav\n", "a".repeat(64), "B".repeat(64)),
            "SUMS",
            "SUMS",
        )
        .unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "a/b.wav");
        assert_eq!(l[0].sha256.as_deref(), Some("b".repeat(64).as_str()));
    }
}
