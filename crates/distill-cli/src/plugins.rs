//! The plugins this binary offers: the builtin plugins it links (the only place the CLI names a plugin
//! crate), the registry that lists them (plugins.toml, a user registry), finding a plugin by name, and
//! `distill plugins`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use distill_core::Plugin;
use distill_registry::{Builtin, Registry};

/// The plugins compiled into this binary, by crate. They are offered to the registry, which lists the ones
/// plugins.toml names; a plugin is usable because the registry lists it, not because it is linked.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        crate_name: "distill-vision",
        make: || Box::new(distill_vision::VisionPlugin),
    },
    Builtin {
        crate_name: "distill-graph",
        make: || Box::new(distill_graph::GraphPlugin),
    },
    Builtin {
        crate_name: "distill-audio",
        make: || Box::new(distill_audio::AudioPlugin),
    },
    Builtin {
        crate_name: "distill-text",
        make: || Box::new(distill_text::TextPlugin),
    },
    Builtin {
        crate_name: "distill-detection",
        make: || Box::new(distill_detection::DetectionPlugin),
    },
];

/// The project's plugins.toml, compiled in: used when the working directory has no plugins.toml of its own.
const PROJECT_REGISTRY: &str = include_str!("../../../plugins.toml");

/// `distill plugins ...`.
#[derive(Subcommand)]
pub enum PluginsCmd {
    /// Show one plugin's manifest.
    Info {
        /// Plugin name.
        name: String,
        /// Print the manifest as JSON (with `source` and `origin`).
        #[arg(long)]
        json: bool,
    },
}

/// The registry. The project's is `./plugins.toml` when that file declares builtin plugins (the project root's,
/// possibly edited), else the one compiled into the binary. A `./plugins.toml` that declares no builtin (a
/// third-party plugin's own registry) is not the project's: it only adds its plugins, like the user registry
/// (`--registry`, else `$DISTILL_REGISTRY`), which is merged last.
pub fn registry(user: Option<&Path>) -> Result<Registry> {
    let cwd = std::env::current_dir().context("current directory")?;
    let local = Path::new("plugins.toml");
    let builtin = || Registry::parse(PROJECT_REGISTRY, "plugins.toml (built in)", &cwd);
    let user = user
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("DISTILL_REGISTRY").map(PathBuf::from));
    let same_file = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    let mut reg = if local.is_file() {
        let here = Registry::from_file(local)?;
        let declares_builtins = here
            .entries()
            .iter()
            .any(|e| e.source == distill_registry::Source::Builtin);
        if declares_builtins {
            here
        } else {
            let mut reg = builtin()?;
            if !user.as_deref().is_some_and(|u| same_file(u, local)) {
                reg.merge(here)?;
            }
            reg
        }
    } else {
        builtin()?
    };
    if let Some(u) = user {
        reg.merge(Registry::from_file(&u)?)?;
    }
    Ok(reg)
}

/// The plugin the registry lists as `name`, loaded (a builtin made, or a library opened and checked).
pub fn find_plugin(reg: &Registry, name: &str) -> Result<Box<dyn Plugin>> {
    Ok(reg.load(name, BUILTINS)?)
}

/// `distill plugins [info NAME]`.
pub fn cmd_plugins(reg: &Registry, what: Option<PluginsCmd>) -> Result<()> {
    match what {
        None => {
            let mut rows: Vec<[String; 7]> = vec![[
                "name", "source", "domain", "version", "models", "losses", "recipes",
            ]
            .map(String::from)];
            let mut failed = Vec::new();
            for e in reg.entries() {
                let (src, name) = (e.source.as_str().to_string(), e.name.clone());
                let blank = || String::new();
                if !e.enabled {
                    rows.push([
                        name,
                        src,
                        "(disabled)".into(),
                        blank(),
                        blank(),
                        blank(),
                        blank(),
                    ]);
                    continue;
                }
                match distill_registry::load_entry(e, BUILTINS) {
                    Ok(p) => {
                        let m = p.manifest();
                        rows.push([
                            name,
                            src,
                            m.domain,
                            m.version,
                            m.models.len().to_string(),
                            m.losses.len().to_string(),
                            m.recipes.len().to_string(),
                        ]);
                    }
                    Err(err) => {
                        rows.push([
                            name,
                            src,
                            "(failed to load)".into(),
                            blank(),
                            blank(),
                            blank(),
                            blank(),
                        ]);
                        failed.push(format!("{err}"));
                    }
                }
            }
            let mut width = [0usize; 7];
            for r in &rows {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for r in &rows {
                let line: Vec<String> = r
                    .iter()
                    .zip(width)
                    .enumerate()
                    .map(|(i, (c, w))| {
                        if i < 4 {
                            format!("{c:<w$}")
                        } else {
                            format!("{c:>w$}")
                        }
                    })
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
            println!("registry: {}", reg.files().join(" + "));
            if !failed.is_empty() {
                bail!("{}", failed.join("; "));
            }
        }
        Some(PluginsCmd::Info { name, json }) => {
            let e = reg.get(&name)?;
            let m = find_plugin(reg, &name)?.manifest();
            if json {
                let mut v = serde_json::to_value(&m)?;
                v["source"] = e.source.as_str().into();
                v["origin"] = e.origin.clone().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{} ({}, {})", m.name, e.source.as_str(), e.origin);
            if let Some(p) = &e.path {
                println!("  library      {}", p.display());
            }
            if let Some(c) = &e.crate_name {
                println!("  crate        {c}");
            }
            println!("  domain       {}", m.domain);
            println!("  version      {}", m.version);
            println!("  description  {}", m.description);
            println!("  datasets     {}", m.datasets.join(", "));
            println!("  models       {}", m.models.join(", "));
            println!("  losses       {}", m.losses.join(", "));
            println!("  recipes      {}", m.recipes.join(", "));
        }
    }
    Ok(())
}
