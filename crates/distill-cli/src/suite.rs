//! What a `distill bench` runs: the suite (`quick`, `full`, or a suite file) planned into runs, the bench's
//! options, and where its runs live (shared by the local bench and the Slurm sweep).
//!
//! A suite file lists runs:
//!
//! ```toml
//! seeds = [0, 1, 2]          # default for every run (else the recipe's own)
//! quick = false              # default for every run: apply the recipes' [quick] overrides
//!
//! [[run]]
//! recipe = "../plugins/vision/recipes/hinton-mnist.toml"   # relative to the suite file
//! seeds = [0]                # optional
//! quick = true               # optional
//! [run.overrides]            # optional, merged over the recipe like [quick] (after it)
//! name = "hinton-mnist-t4"
//! distill.losses = [{ name = "kd", temperature = 4.0 }]
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use distill_core::recipe::{line_col, toml_error, Recipe};
use distill_registry::Registry;
use serde::Deserialize;

use crate::plugins::BUILTINS;

/// What `--suite` names.
#[derive(Debug, Clone, PartialEq)]
pub enum SuiteKind {
    /// Every selected plugin's manifest recipes with their `[quick]` overrides.
    Quick,
    /// The same recipes as they are.
    Full,
    /// A suite file.
    File(PathBuf),
}

impl SuiteKind {
    /// `quick`, `full`, or a path.
    pub fn parse(s: &str) -> Self {
        match s {
            "quick" => SuiteKind::Quick,
            "full" => SuiteKind::Full,
            p => SuiteKind::File(PathBuf::from(p)),
        }
    }

    /// The suite's name in messages and in the default out dir (`quick`, `full`, or the file).
    pub fn label(&self) -> String {
        match self {
            SuiteKind::Quick => "quick".into(),
            SuiteKind::Full => "full".into(),
            SuiteKind::File(p) => p.display().to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    seeds: Option<Vec<u64>>,
    #[serde(default)]
    quick: bool,
    #[serde(default)]
    run: Vec<toml::Spanned<RunEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunEntry {
    recipe: String,
    seeds: Option<Vec<u64>>,
    quick: Option<bool>,
    #[serde(default)]
    overrides: toml::Table,
}

/// One run of the plan: a recipe (overrides applied) and where it came from.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The recipe file.
    pub recipe_path: PathBuf,
    /// The recipe as it will run (quick and suite overrides, seeds applied).
    pub recipe: Recipe,
    /// Whether `[quick]` overrides were applied.
    pub quick: bool,
    /// Where this run was asked for (`suite.toml:4:1`, or `plugin `x``), for error messages.
    pub origin: String,
}

/// The fewest seeds a run of the full suite has: a recipe listing fewer runs more (a KD gain from one seed
/// cannot be told from noise).
pub const FULL_MIN_SEEDS: usize = 3;

/// `seeds` extended with the smallest seeds not in it until there are `n`.
fn at_least_seeds(seeds: &[u64], n: usize) -> Vec<u64> {
    let mut out = seeds.to_vec();
    let mut next = 0u64;
    while out.len() < n {
        if !out.contains(&next) {
            out.push(next);
        }
        next += 1;
    }
    out
}

/// The runs a suite asks for, in order. `plugins` restricts them to those plugins (each must be in the
/// registry); `seeds` (`--seeds N`) replaces every run's seeds with `0..N`.
pub fn plan(
    reg: &Registry,
    suite: &SuiteKind,
    plugins: Option<&[String]>,
    seeds: Option<usize>,
) -> Result<Vec<PlannedRun>> {
    if let Some(names) = plugins {
        for n in names {
            reg.get(n).map_err(|e| anyhow!("--plugins: {e}"))?;
        }
    }
    if seeds == Some(0) {
        bail!("--seeds 0: at least one seed is needed");
    }
    let wanted = |name: &str| plugins.is_none_or(|p| p.iter().any(|n| n == name));
    let mut runs = match suite {
        SuiteKind::Quick | SuiteKind::Full => {
            let quick = *suite == SuiteKind::Quick;
            let mut runs = Vec::new();
            for e in reg.entries() {
                if !e.enabled || !wanted(&e.name) {
                    continue;
                }
                let plugin = distill_registry::load_entry(e, BUILTINS)?;
                for rel in plugin.manifest().recipes {
                    let path = PathBuf::from(&rel);
                    if !path.is_file() {
                        bail!(
                            "plugin `{}` lists the recipe {rel} (relative to the project root), but {} has no such \
                             file: run `distill bench` from the project root",
                            e.name,
                            std::env::current_dir()
                                .map(|d| d.display().to_string())
                                .unwrap_or_else(|_| ".".into())
                        );
                    }
                    let mut recipe = Recipe::load(&path, quick)?;
                    if !quick {
                        recipe.seeds = at_least_seeds(&recipe.seeds, FULL_MIN_SEEDS);
                    }
                    if recipe.plugin != e.name {
                        bail!(
                            "{rel}: `plugin = \"{}\"`, but plugin `{}` lists it as one of its recipes",
                            recipe.plugin,
                            e.name
                        );
                    }
                    runs.push(PlannedRun {
                        recipe_path: path,
                        recipe,
                        quick,
                        origin: format!("plugin `{}`", e.name),
                    });
                }
            }
            runs
        }
        SuiteKind::File(path) => {
            let runs = read_suite(path)?;
            for r in &runs {
                reg.get(&r.recipe.plugin).map_err(|e| {
                    anyhow!("{} ({}): `plugin`: {e}", r.origin, r.recipe_path.display())
                })?;
            }
            runs.into_iter()
                .filter(|r| wanted(&r.recipe.plugin))
                .collect()
        }
    };
    if runs.is_empty() {
        bail!(
            "suite {} selects no runs{}",
            suite.label(),
            if plugins.is_some() {
                " (check --plugins)"
            } else {
                ""
            }
        );
    }
    if let Some(n) = seeds {
        for r in &mut runs {
            r.recipe.seeds = (0..n as u64).collect();
        }
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for r in &runs {
        if let Some(first) = seen.insert(r.recipe.name.clone(), r.origin.clone()) {
            bail!(
                "{}: a second run named `{}` (the first is at {first}); runs write to OUT/<recipe name>/, so give \
                 one of them `overrides.name = \"...\"`",
                r.origin,
                r.recipe.name
            );
        }
    }
    Ok(runs)
}

/// Reads a suite file; errors name the file, line and column.
pub fn read_suite(path: &Path) -> Result<Vec<PlannedRun>> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{label}: {e}"))?;
    let file: SuiteFile = toml::from_str(&text).map_err(|e| toml_error(&text, &label, &e))?;
    if file.run.is_empty() {
        bail!("{label}: the suite lists no runs (add [[run]] entries with `recipe = \"...\"`)");
    }
    if file.seeds.as_ref().is_some_and(|s| s.is_empty()) {
        bail!("{label}: `seeds` must list at least one seed");
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let mut runs = Vec::new();
    for spanned in file.run {
        let (line, col) = line_col(&text, spanned.span().start);
        let origin = format!("{label}:{line}:{col}");
        let entry = spanned.into_inner();
        let recipe_path = base.join(&entry.recipe);
        if !recipe_path.is_file() {
            bail!(
                "{origin}: recipe {} not found (at {}; recipe paths are relative to the suite file)",
                entry.recipe,
                recipe_path.display()
            );
        }
        let quick = entry.quick.unwrap_or(file.quick);
        let rtext = std::fs::read_to_string(&recipe_path)
            .with_context(|| recipe_path.display().to_string())?;
        let mut recipe = Recipe::parse_with_overrides(
            &rtext,
            &recipe_path.display().to_string(),
            quick,
            &entry.overrides,
            &format!("{origin} [run.overrides]"),
        )?;
        if let Some(s) = entry.seeds.or_else(|| file.seeds.clone()) {
            if s.is_empty() {
                bail!("{origin}: `seeds` must list at least one seed");
            }
            recipe.seeds = s;
        }
        runs.push(PlannedRun {
            recipe_path,
            recipe,
            quick,
            origin,
        });
    }
    Ok(runs)
}

/// Options of `distill bench`.
pub struct BenchOptions {
    /// `--collect`: report the finished runs, train nothing.
    pub collect: bool,
    /// `--device` as given.
    pub device_name: String,
    /// The suite.
    pub suite: SuiteKind,
    /// `--plugins`.
    pub plugins: Option<Vec<String>>,
    /// `--seeds N`.
    pub seeds: Option<usize>,
    /// `--out`.
    pub out: Option<PathBuf>,
    /// Teacher cache.
    pub cache_dir: Option<PathBuf>,
    /// No progress output.
    pub quiet: bool,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Fetch a missing data set of a planned recipe first (`--fetch`).
    pub fetch: bool,
    /// Models dir.
    pub models_dir: PathBuf,
    /// Device name and device.
    pub device: (String, candle_core::Device),
}

/// Whether every phase of `seed` of the run in `dir` has finished (its result.json written).
pub fn seed_finished(dir: &Path, seed: u64) -> bool {
    distill_core::train::files::PHASES.iter().all(|p| {
        dir.join(format!("seed-{seed}"))
            .join(p)
            .join(distill_core::train::files::RESULT)
            .is_file()
    })
}

/// The bench's out dir: `--out`, else `runs/bench-SUITE`.
pub fn default_out(opts: &BenchOptions) -> PathBuf {
    opts.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(match &opts.suite {
            SuiteKind::File(p) => format!(
                "bench-{}",
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "suite".into())
            ),
            k => format!("bench-{}", k.label()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("suite.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const RECIPE: &str = r#"name = "r"
plugin = "image-classification"
dataset = "mnist"
seeds = [5]
[teacher]
model = { arch = "mlp", hidden = [8] }
epochs = 2
optimizer = { kind = "sgd", lr = 0.1 }
[student]
model = { arch = "mlp", hidden = [4] }
epochs = 2
optimizer = { kind = "sgd", lr = 0.1 }
[distill]
losses = [{ name = "kd", temperature = 4.0 }]
[quick.teacher]
epochs = 1
"#;

    fn setup() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("recipes")).unwrap();
        std::fs::write(tmp.path().join("recipes/r.toml"), RECIPE).unwrap();
        tmp
    }

    #[test]
    fn the_full_suite_tops_seeds_up_to_three() {
        assert_eq!(at_least_seeds(&[0], 3), [0, 1, 2]);
        assert_eq!(at_least_seeds(&[1], 3), [1, 0, 2]);
        assert_eq!(at_least_seeds(&[4, 0], 3), [4, 0, 1]);
        assert_eq!(at_least_seeds(&[0, 1, 2, 3, 4], 3), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn suite_applies_defaults_quick_overrides_and_seeds() {
        let tmp = setup();
        let p = suite(
            tmp.path(),
            "seeds = [1, 2]\n\n[[run]]\nrecipe = \"recipes/r.toml\"\n\n[[run]]\nrecipe = \"recipes/r.toml\"\n\
             quick = true\nseeds = [7]\n[run.overrides]\nname = \"r-quick\"\nstudent = { epochs = 9 }\n",
        );
        let runs = read_suite(&p).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (
                runs[0].recipe.seeds.clone(),
                runs[0].recipe.teacher.epochs,
                runs[0].quick
            ),
            (vec![1, 2], 2, false)
        );
        let q = &runs[1];
        assert_eq!(
            (
                q.recipe.name.as_str(),
                q.recipe.seeds.clone(),
                q.recipe.teacher.epochs,
                q.recipe.student.epochs
            ),
            ("r-quick", vec![7], 1, 9)
        );
        assert!(q.origin.ends_with("suite.toml:6:1"), "{}", q.origin);
    }

    #[test]
    fn suite_errors_name_file_line_and_column() {
        let tmp = setup();
        let err = |text: &str| {
            let p = suite(tmp.path(), text);
            let e = read_suite(&p).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let e = err("[[run]]\nrecipe = \"recipes/r.toml\"\nseed = [1]\n");
        assert!(
            e.contains("suite.toml:3:1") && e.contains("unknown field `seed`"),
            "{e}"
        );
        let e = err("[[run]]\nrecipe = 3\n");
        assert!(
            e.contains("suite.toml:2:10") && e.contains("invalid type"),
            "{e}"
        );
        let e = err("[[run]]\nrecipe = \"recipes/nope.toml\"\n");
        assert!(
            e.contains("suite.toml:1:1") && e.contains("recipes/nope.toml not found"),
            "{e}"
        );
        let e =
            err("[[run]]\nrecipe = \"recipes/r.toml\"\n[run.overrides]\nteacher = { epoks = 1 }\n");
        assert!(
            e.contains("suite.toml:1:1 [run.overrides]") && e.contains("epoks"),
            "{e}"
        );
        let e = err("description = \"empty\"\n");
        assert!(e.contains("lists no runs"), "{e}");
        let e = err("[[run]]\nrecipe = \"recipes/r.toml\"\nseeds = []\n");
        assert!(
            e.contains("suite.toml:1:1") && e.contains("at least one seed"),
            "{e}"
        );
    }
}
