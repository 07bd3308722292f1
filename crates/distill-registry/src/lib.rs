//! # distill-registry
//!
//! The plugin registry behind `distill`: a TOML file (`plugins.toml`) lists the plugins a user can pick, each
//! either **builtin** (compiled into the binary; named by its crate) or a **dylib** (a third party's library,
//! loaded with libloading at run time). A user registry (`--registry FILE` or `$DISTILL_REGISTRY`) is merged
//! on top of the project's.
//!
//! ```toml
//! schema_version = 1
//!
//! [[plugin]]
//! name = "image-classification"
//! source = "builtin"
//! crate = "distill-vision"
//!
//! [[plugin]]
//! name = "tabular"
//! source = "dylib"
//! path = "target/release/libdistill_plugin_template.so"   # relative to this file
//! ```
//!
//! ```
//! use distill_registry::{Registry, Source};
//! let text = "schema_version = 1\n[[plugin]]\nname = \"demo\"\nsource = \"dylib\"\npath = \"lib/libdemo.so\"\n";
//! let reg = Registry::parse(text, "plugins.toml", "/opt/distill".as_ref()).unwrap();
//! let e = reg.get("demo").unwrap();
//! assert_eq!(e.source, Source::Dylib);
//! assert_eq!(e.path.as_deref(), Some(std::path::Path::new("/opt/distill/lib/libdemo.so")));
//! assert_eq!(e.origin, "plugins.toml:2");
//! ```
//!
//! A library is checked before anything in it runs: its exported [`PluginDeclaration`] must carry this
//! binary's plugin ABI version, rustc, distill-core and candle versions, features and type layout (see
//! [`distill_core::abi`]). Loaded libraries are never unloaded.
#![warn(missing_docs)]

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use distill_core::{
    abi::{DeclaredVersions, PluginDeclaration, DECLARATION_SYMBOL},
    recipe::{line_col, toml_error},
    Error, Plugin, Result,
};
use serde::Deserialize;

/// The registry format this build reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a plugin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Compiled into the `distill` binary.
    Builtin,
    /// A dynamic library loaded at run time.
    Dylib,
}

impl Source {
    /// `"builtin"` or `"dylib"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Builtin => "builtin",
            Source::Dylib => "dylib",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    schema_version: toml::Spanned<u32>,
    #[serde(default)]
    plugin: Vec<toml::Spanned<EntryFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    source: Source,
    #[serde(rename = "crate")]
    crate_name: Option<String>,
    path: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

/// One `[[plugin]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The name recipes use (`plugin = "..."`).
    pub name: String,
    /// Builtin or dylib.
    pub source: Source,
    /// The crate of a builtin plugin.
    pub crate_name: Option<String>,
    /// The library of a dylib plugin, resolved against the registry file's directory.
    pub path: Option<PathBuf>,
    /// One line, shown by `distill plugins`.
    pub description: String,
    /// Disabled entries are listed but cannot be used.
    pub enabled: bool,
    /// `file:line` of the entry, for error messages.
    pub origin: String,
}

/// A plugin compiled into the binary, offered to the registry under its crate name.
#[derive(Clone, Copy)]
pub struct Builtin {
    /// The crate, as a registry entry's `crate` names it.
    pub crate_name: &'static str,
    /// Makes the plugin.
    pub make: fn() -> Box<dyn Plugin>,
}

/// The merged registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<Entry>,
    files: Vec<String>,
}

/// Removes `.` and resolves `..` components lexically (without following links), so errors show the path
/// a user would type.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Registry {
    /// Reads a registry file. Relative library paths are resolved against the file's directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).map_err(|e| Error::io(base, e))?;
        Self::parse(&text, &path.display().to_string(), &base)
    }

    /// Parses registry text; `label` names it in errors and `base` is the directory relative paths start from.
    pub fn parse(text: &str, label: &str, base: &Path) -> Result<Self> {
        let file: RegistryFile = toml::from_str(text).map_err(|e| toml_error(text, label, &e))?;
        let at = |offset: usize| {
            let (line, col) = line_col(text, offset);
            (format!("{label}:{line}"), format!("{label}:{line}:{col}"))
        };
        if *file.schema_version.get_ref() != SCHEMA_VERSION {
            return Err(Error::config(
                at(file.schema_version.span().start).1,
                format!(
                    "schema_version {} is not supported (this distill reads schema_version {SCHEMA_VERSION})",
                    file.schema_version.get_ref()
                ),
            ));
        }
        let mut reg = Registry {
            entries: Vec::new(),
            files: vec![label.to_string()],
        };
        for spanned in file.plugin {
            let (origin, origin_col) = at(spanned.span().start);
            let e = spanned.into_inner();
            let err = |msg: String| Error::config(origin_col.clone(), msg);
            if !valid_name(&e.name) {
                return Err(err(format!(
                    "plugin name `{}` must be non-empty lowercase letters, digits, `-` or `_`",
                    e.name
                )));
            }
            let path = match e.source {
                Source::Builtin => {
                    if e.crate_name.is_none() {
                        return Err(err(format!(
                            "builtin plugin `{}` needs `crate = \"...\"` (the crate linked into distill)",
                            e.name
                        )));
                    }
                    if e.path.is_some() {
                        return Err(err(format!(
                            "builtin plugin `{}` takes no `path` (did you mean source = \"dylib\"?)",
                            e.name
                        )));
                    }
                    None
                }
                Source::Dylib => {
                    let Some(p) = &e.path else {
                        return Err(err(format!(
                            "dylib plugin `{}` needs `path = \"...\"` (its library, relative to this file)",
                            e.name
                        )));
                    };
                    if e.crate_name.is_some() {
                        return Err(err(format!(
                            "dylib plugin `{}` takes no `crate` (did you mean source = \"builtin\"?)",
                            e.name
                        )));
                    }
                    Some(normalize(&base.join(p)))
                }
            };
            reg.push(Entry {
                name: e.name,
                source: e.source,
                crate_name: e.crate_name,
                path,
                description: e.description,
                enabled: e.enabled,
                origin,
            })?;
        }
        Ok(reg)
    }

    fn push(&mut self, e: Entry) -> Result<()> {
        if let Some(prev) = self.entries.iter().find(|p| p.name == e.name) {
            return Err(Error::config(
                e.origin.clone(),
                format!(
                    "duplicate plugin name `{}` (already defined at {})",
                    e.name, prev.origin
                ),
            ));
        }
        self.entries.push(e);
        Ok(())
    }

    /// Adds another registry's entries (a user registry over the project's). A name defined in both is an
    /// error naming both places.
    pub fn merge(&mut self, other: Registry) -> Result<()> {
        for e in other.entries {
            self.push(e)?;
        }
        self.files.extend(other.files);
        Ok(())
    }

    /// All entries, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The registry files read, in merge order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::Unknown {
                what: "plugin",
                name: name.to_string(),
                known: self
                    .entries
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Loads the plugin named `name` (it must be enabled).
    pub fn load(&self, name: &str, builtins: &[Builtin]) -> Result<Box<dyn Plugin>> {
        let e = self.get(name)?;
        if !e.enabled {
            return Err(Error::config(
                e.origin.clone(),
                format!("plugin `{name}` is disabled (enabled = false)"),
            ));
        }
        load_entry(e, builtins)
    }
}

/// What identifies a plugin's code, for the teacher cache's key: a builtin's crate, its manifest version and
/// distill-core's version; a library's SHA-256 (so a rebuilt plugin never reuses a teacher its old code trained).
pub fn identity(e: &Entry, plugin: &dyn Plugin) -> Result<String> {
    match e.source {
        Source::Builtin => Ok(format!(
            "builtin {} {} (distill-core {})",
            e.crate_name.as_deref().unwrap_or(&e.name),
            plugin.manifest().version,
            distill_core::abi::CORE_VERSION
        )),
        Source::Dylib => {
            let path = e.path.clone().unwrap_or_default();
            let bytes = std::fs::read(&path).map_err(|err| Error::io(&path, err))?;
            Ok(format!(
                "dylib sha256:{}",
                distill_core::checkpoint::sha256_hex(&bytes)
            ))
        }
    }
}

/// Makes the plugin an entry names: a builtin's constructor or a library's, after the library's checks. The
/// plugin's manifest must carry the entry's name.
pub fn load_entry(e: &Entry, builtins: &[Builtin]) -> Result<Box<dyn Plugin>> {
    let plugin = match e.source {
        Source::Builtin => {
            let krate = e.crate_name.as_deref().unwrap_or_default();
            let b = builtins
                .iter()
                .find(|b| b.crate_name == krate)
                .ok_or_else(|| {
                    Error::config(
                        e.origin.clone(),
                        format!(
                            "builtin plugin `{}`: crate `{krate}` is not linked into this distill (linked: {})",
                            e.name,
                            builtins
                                .iter()
                                .map(|b| b.crate_name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
            (b.make)()
        }
        Source::Dylib => {
            let path = e.path.as_deref().unwrap_or(Path::new(""));
            load_library(path).map_err(|err| {
                Error::config(e.origin.clone(), format!("plugin `{}`: {err}", e.name))
            })?
        }
    };
    let got = plugin.manifest().name;
    if got != e.name {
        return Err(Error::config(
            e.origin.clone(),
            format!(
                "the entry is named `{}` but its plugin calls itself `{got}` (use `name = \"{got}\"`)",
                e.name
            ),
        ));
    }
    Ok(plugin)
}

/// Libraries loaded so far; kept for the life of the process (a plugin's code must outlive its objects).
static LIBRARIES: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// Loads a plugin library: checks its declaration against this build, then calls its constructor.
pub fn load_library(path: &Path) -> Result<Box<dyn Plugin>> {
    if !path.exists() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            msg: "plugin library not found (build it with `cargo build` first, or fix `path`)"
                .into(),
        });
    }
    let data_err = |msg: String| Error::Data {
        path: path.to_path_buf(),
        msg,
    };
    // SAFETY: loading runs the library's initialisers. Rust cdylibs have none beyond std's; we accept that
    // a library named in a registry is trusted code, as any program a user runs is.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| data_err(format!("cannot load the library: {e}")))?;
    let mut sym_name = DECLARATION_SYMBOL.as_bytes().to_vec();
    sym_name.push(0);
    // SAFETY: we only take the symbol's address here; it is read as a declaration below.
    let decl: *const PluginDeclaration = unsafe {
        lib.get::<*const PluginDeclaration>(&sym_name)
            .map(|s| *s)
            .map_err(|_| {
                data_err(format!(
                    "no `{DECLARATION_SYMBOL}` symbol: not a distill plugin (a plugin crate ends with \
                     `distill_core::export_plugin!(...)` and is built as crate-type cdylib)"
                ))
            })?
    };
    // SAFETY: the symbol is the declaration a distill plugin exports; its first field is the u32 ABI version.
    let declared = match unsafe { DeclaredVersions::read(decl) } {
        Ok(d) => d,
        Err(abi) => {
            return Err(data_err(format!(
                "incompatible plugin: plugin ABI version {abi}, distill expects ABI version {} \
                 (rebuild the plugin against this distill-core)",
                distill_core::abi::PLUGIN_ABI_VERSION
            )))
        }
    };
    declared
        .check_against(&DeclaredVersions::host())
        .map_err(|m| {
            data_err(format!(
                "incompatible plugin: {m} (rebuild one to match the other)"
            ))
        })?;
    // SAFETY: every field of the declaration matches this build, so the constructor has the signature we
    // call it with and returns a `Box<Box<dyn Plugin>>` laid out as ours.
    let plugin = unsafe {
        let mut err = vec![0u8; 4096];
        let raw = ((*decl).constructor)(err.as_mut_ptr(), err.len());
        if raw.is_null() {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(data_err(format!(
                "the plugin's constructor failed: {}",
                String::from_utf8_lossy(&err[..end])
            )));
        }
        *Box::from_raw(raw.cast::<Box<dyn Plugin>>())
    };
    LIBRARIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(lib);
    Ok(plugin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Registry> {
        Registry::parse(text, "reg.toml", Path::new("/base"))
    }

    #[test]
    fn reads_entries_and_resolves_paths_against_the_file() {
        let r = parse(
            "schema_version = 1\n\n[[plugin]]\nname = \"a\"\nsource = \"builtin\"\ncrate = \"distill-a\"\n\
             description = \"A\"\n\n[[plugin]]\nname = \"b\"\nsource = \"dylib\"\npath = \"x/libb.so\"\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(r.entries().len(), 2);
        let a = r.get("a").unwrap();
        assert_eq!(
            (
                a.source,
                a.crate_name.as_deref(),
                a.enabled,
                a.origin.as_str()
            ),
            (Source::Builtin, Some("distill-a"), true, "reg.toml:3")
        );
        let b = r.get("b").unwrap();
        assert_eq!(b.path.as_deref(), Some(Path::new("/base/x/libb.so")));
        let r2 = parse("schema_version = 1\n[[plugin]]\nname = \"c\"\nsource = \"dylib\"\npath = \"./y/../../lib/libc.so\"\n")
            .unwrap();
        assert_eq!(
            r2.get("c").unwrap().path.as_deref(),
            Some(Path::new("/lib/libc.so"))
        );
        assert!(!b.enabled);
        assert_eq!(b.origin, "reg.toml:9");
        let e = r.load("b", &[]).err().unwrap().to_string();
        assert_eq!(e, "reg.toml:9: plugin `b` is disabled (enabled = false)");
    }

    #[test]
    fn malformed_toml_names_file_line_and_column() {
        let e = parse("schema_version = 1\n[[plugin]]\nname = \"a\nsource = \"builtin\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("reg.toml:3:"), "{e}");
    }

    #[test]
    fn unknown_source_is_an_error_with_its_place() {
        let e = parse("schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("reg.toml:4:10: unknown variant `wasm`"),
            "{e}"
        );
        assert!(e.contains("builtin") && e.contains("dylib"), "{e}");
    }

    #[test]
    fn unknown_keys_and_missing_fields_are_errors() {
        let e = parse(
            "schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"dylib\"\npth = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("reg.toml:5:1: unknown field `pth`"), "{e}");
        let e = parse("schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"dylib\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "reg.toml:2:1: dylib plugin `a` needs `path = \"...\"` (its library, relative to this file)");
        let e = parse("schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"builtin\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("builtin plugin `a` needs `crate"), "{e}");
        let e = parse("[[plugin]]\nname = \"a\"\nsource = \"builtin\"\ncrate = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `schema_version`"), "{e}");
        let e = parse("schema_version = 2\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "reg.toml:1:18: schema_version 2 is not supported (this distill reads schema_version 1)"
        );
        let e = parse("schema_version = 1\n[[plugin]]\nname = \"My Plugin\"\nsource = \"builtin\"\ncrate = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugin name `My Plugin` must be"), "{e}");
    }

    #[test]
    fn duplicate_names_are_errors_in_one_file_and_across_files() {
        let text =
            "schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"builtin\"\ncrate = \"c\"\n";
        let e = parse(&format!(
            "{text}[[plugin]]\nname = \"a\"\nsource = \"dylib\"\npath = \"p\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "reg.toml:6: duplicate plugin name `a` (already defined at reg.toml:2)"
        );
        let mut base = parse(text).unwrap();
        let user = Registry::parse(text, "user.toml", Path::new("/u")).unwrap();
        let e = base.merge(user).unwrap_err().to_string();
        assert_eq!(
            e,
            "user.toml:2: duplicate plugin name `a` (already defined at reg.toml:2)"
        );
    }

    #[test]
    fn unknown_plugin_and_unlinked_builtin_are_errors() {
        let r = parse("schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"builtin\"\ncrate = \"distill-zzz\"\n")
            .unwrap();
        let e = r.load("nope", &[]).err().unwrap().to_string();
        assert_eq!(e, "unknown plugin `nope` (known: a)");
        let e = r.load("a", &[]).err().unwrap().to_string();
        assert!(
            e.starts_with("reg.toml:2: builtin plugin `a`: crate `distill-zzz` is not linked"),
            "{e}"
        );
    }

    #[test]
    fn missing_library_file_is_an_error_naming_it() {
        let r = parse("schema_version = 1\n[[plugin]]\nname = \"a\"\nsource = \"dylib\"\npath = \"nowhere/liba.so\"\n")
            .unwrap();
        let e = r.load("a", &[]).err().unwrap().to_string();
        assert_eq!(
            e,
            "reg.toml:2: plugin `a`: /base/nowhere/liba.so: plugin library not found (build it with `cargo build` first, or fix `path`)"
        );
    }

    #[test]
    fn a_file_that_is_not_a_library_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libfake.so");
        std::fs::write(&p, b"not an ELF file").unwrap();
        let e = load_library(&p).err().unwrap().to_string();
        assert!(e.contains("cannot load the library"), "{e}");
    }
}
