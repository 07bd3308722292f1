//! What a run directory records about the run that writes it, so that a run cannot silently mix two recipes or
//! two writers:
//!
//! - `run.json`: the effective recipe (after `[quick]` and any overrides; without the seeds, which each have
//!   their own `seed-N/` directory) and its hash. A later run or `--resume` in the same directory must present
//!   the same recipe; a difference is refused with the differing keys listed, unless every differing key is
//!   allowed explicitly (`--allow-changed KEYS`), which is then recorded in `run.json` and the report's notes.
//! - `.distill.lock`: an advisory lock ([`RunLock`]) held for the whole life of a run, naming its holder.
//!
//! ```
//! use distill_core::run_record::{diff_recipes, key_allowed};
//! let old: toml::Table = toml::from_str("[teacher]\nepochs = 4\noptimizer = { lr = 0.1 }").unwrap();
//! let new: toml::Table = toml::from_str("[teacher]\nepochs = 6\noptimizer = { lr = 0.1 }").unwrap();
//! let changes = diff_recipes(&old, &new);
//! assert_eq!(changes[0].key, "teacher.epochs");
//! assert_eq!((changes[0].from.as_str(), changes[0].to.as_str()), ("4", "6"));
//! assert!(key_allowed("teacher.epochs", &["teacher.epochs".into()]));
//! assert!(key_allowed("teacher.optimizer.lr", &["teacher".into()]));
//! assert!(!key_allowed("teacher.epochs", &["student.epochs".into()]));
//! ```

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::{read_json, write_json_atomic},
    recipe::Recipe,
    Error, Phase, Result,
};

/// The run record's file name inside a run directory.
pub const RUN_FILE: &str = "run.json";
/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".distill.lock";

/// `run.json`: the recipe a run directory belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`recipe_hash`] of `recipe`.
    pub recipe_hash: String,
    /// The effective recipe as TOML (no `[quick]` table, no `seeds`).
    pub recipe: String,
    /// Changes accepted with `--allow-changed`, oldest first.
    #[serde(default)]
    pub changes: Vec<RecipeChange>,
}

/// One recipe key whose value differs between the recorded and the presented recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipeChange {
    /// Dotted key, arrays by index: `distill.losses[0].temperature`.
    pub key: String,
    /// The recorded value (TOML), or `(absent)`.
    pub from: String,
    /// The presented value (TOML), or `(absent)`.
    pub to: String,
}

impl std::fmt::Display for RecipeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} -> {})", self.key, self.from, self.to)
    }
}

/// The recipe as a run directory records it: the recipe without `[quick]` (already applied) and `seeds`.
pub fn effective_recipe(recipe: &Recipe) -> Result<toml::Table> {
    let mut r = recipe.clone();
    r.quick = None;
    let mut t = toml::Table::try_from(&r).map_err(|e| Error::msg(format!("recipe: {e}")))?;
    t.remove("seeds");
    Ok(t)
}

/// SHA-256 (the first 16 hex digits) of a recipe table, independent of key order.
pub fn recipe_hash(table: &toml::Table) -> String {
    let canonical = serde_json::to_value(table)
        .map(|v| v.to_string())
        .unwrap_or_default();
    crate::checkpoint::sha256_hex(canonical.as_bytes())[..16].to_string()
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
            if t.is_empty() {
                out.insert(prefix.to_string(), "{}".into());
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
            if a.is_empty() {
                out.insert(prefix.to_string(), "[]".into());
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.to_string());
        }
    }
}

/// The keys whose values differ between two recipe tables, in key order.
pub fn diff_recipes(old: &toml::Table, new: &toml::Table) -> Vec<RecipeChange> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &toml::Value::Table(old.clone()), &mut a);
    flatten("", &toml::Value::Table(new.clone()), &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| RecipeChange {
            key: k.clone(),
            from: a.get(k).cloned().unwrap_or_else(|| "(absent)".into()),
            to: b.get(k).cloned().unwrap_or_else(|| "(absent)".into()),
        })
        .collect()
}

/// Whether `key` is covered by one of `allow`: the key itself, or a table or array above it
/// (`teacher` covers `teacher.optimizer.lr`; `distill.losses` covers `distill.losses[1].weight`).
pub fn key_allowed(key: &str, allow: &[String]) -> bool {
    allow.iter().any(|a| {
        key == a
            || key
                .strip_prefix(a.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// The phases whose training a recipe key feeds.
pub fn phases_fed_by(key: &str) -> &'static [Phase] {
    let top = key.split(['.', '[']).next().unwrap_or(key);
    match top {
        "name" | "description" => &[],
        "teacher" => &[Phase::Teacher, Phase::Distilled],
        "student" => &[Phase::Scratch, Phase::Distilled],
        "distill" => &[Phase::Distilled],
        _ => &Phase::ALL,
    }
}

/// Checks `recipe` against the run directory's `run.json` and records it there.
///
/// Without a record (a new directory, or one from before records were kept), or with one but nothing trained
/// yet (no phase of any seed has written its state), the recipe is recorded. Otherwise every differing key
/// must be in `allow`, else the error lists the differences; accepted changes are appended to the record.
/// Returns the record as it now stands (its hash, and every change accepted so far for the report's notes) and
/// the changes accepted by this call.
pub fn check_and_record(
    out_dir: &Path,
    recipe: &Recipe,
    allow: &[String],
) -> Result<(RunRecord, Vec<RecipeChange>)> {
    let table = effective_recipe(recipe)?;
    let hash = recipe_hash(&table);
    // runs of other seeds may record the same dir at the same moment (a sweep's array tasks): one at a time
    let _guard = RunLock::wait(out_dir)?;
    let text = toml::to_string(&table).map_err(|e| Error::msg(format!("recipe: {e}")))?;
    let path = out_dir.join(RUN_FILE);
    if !path.exists() || !has_trained(out_dir) {
        let rec = RunRecord {
            recipe_hash: hash,
            recipe: text,
            changes: Vec::new(),
        };
        write_json_atomic(&rec, &path)?;
        return Ok((rec, Vec::new()));
    }
    let mut rec: RunRecord = read_json(&path)?;
    let old: toml::Table = toml::from_str(&rec.recipe).map_err(|e| Error::Checkpoint {
        path: path.clone(),
        msg: format!("its recorded recipe does not parse: {e}"),
    })?;
    let changes = diff_recipes(&old, &table);
    if changes.is_empty() {
        return Ok((rec, Vec::new()));
    }
    let refused: Vec<&RecipeChange> = changes
        .iter()
        .filter(|c| !key_allowed(&c.key, allow))
        .collect();
    if !refused.is_empty() {
        let keys: Vec<&str> = refused.iter().map(|c| c.key.as_str()).collect();
        return Err(Error::config(
            path.display().to_string(),
            format!(
                "this run dir holds a run of a different recipe: {}; resume it with the recipe it was \
                 started with, choose another --out, or accept the change with --allow-changed {}",
                refused
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                keys.join(",")
            ),
        ));
    }
    rec.changes.extend(changes.iter().cloned());
    rec.recipe = text;
    rec.recipe_hash = hash;
    write_json_atomic(&rec, &path)?;
    Ok((rec, changes))
}

/// Whether any phase of any seed in `out_dir` has written its state or result.
fn has_trained(out_dir: &Path) -> bool {
    let Ok(seeds) = fs::read_dir(out_dir) else {
        return false;
    };
    seeds.flatten().any(|seed| {
        seed.file_name().to_string_lossy().starts_with("seed-")
            && Phase::ALL.iter().any(|p| {
                let d = seed.path().join(p.name());
                d.join("state.json").exists() || d.join("result.json").exists()
            })
    })
}

/// An advisory lock on a run directory (`flock` on `.distill.lock`), held until dropped. The kernel releases
/// it when its process ends in any way, so the lock of a killed run is taken over by the next run without a
/// manual step; the file's text names the holder for the error a second process gets.
#[derive(Debug)]
pub struct RunLock {
    file: fs::File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `dir` (created if missing) or fails at once with [`Error::Busy`] naming the holder.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Busy {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "holder not yet recorded".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let who = format!(
            "pid {} on host {}, since {}, `{}`",
            std::process::id(),
            hostname(),
            crate::report::utc_now(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(who.as_bytes()))
            .and_then(|()| file.flush());
        written.map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { file, path })
    }

    /// Locks `dir` (created if missing), waiting for the holder to release it: for short critical sections.
    pub fn wait(dir: &Path) -> Result<RunLock> {
        Self::wait_file(&dir.join(LOCK_FILE), || {})
    }

    /// Locks the lock file `path` (its folder created if missing), waiting for the holder to release it;
    /// `on_busy` runs first when another process holds it (to say that this one waits).
    pub fn wait_file(path: &Path, on_busy: impl FnOnce()) -> Result<RunLock> {
        let file = open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_busy();
                file.lock().map_err(|e| Error::io(path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
        Ok(RunLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens (creating it and its folder if missing, never truncating) a lock file for reading and writing.
fn open_lock_file(path: &Path) -> Result<fs::File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Locks the directory of every seed a run will write (`OUT/seed-N/`), in seed order, failing at the first
/// one in use: runs of different seeds may share a run dir (a sweep runs one task per seed), runs of one seed
/// may not. Hold the locks until the run's report is written.
pub fn lock_seeds(out_dir: &Path, seeds: &[u64]) -> Result<Vec<RunLock>> {
    seeds
        .iter()
        .map(|s| RunLock::acquire(&out_dir.join(format!("seed-{s}"))))
        .collect()
}

/// This machine's host name (`/proc/sys/kernel/hostname`, `$HOSTNAME`), or `unknown`.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = r#"name = "t"
plugin = "p"
dataset = "d"
seeds = [0]
[teacher]
model = { arch = "mlp" }
epochs = 3
optimizer = { kind = "sgd", lr = 0.1 }
[student]
model = { arch = "mlp" }
epochs = 2
optimizer = { kind = "adamw", lr = 0.001 }
[distill]
losses = [{ name = "kd", temperature = 4.0, weight = 0.9 }, { name = "ce", weight = 0.1 }]
[quick.teacher]
epochs = 1
"#;

    fn recipe(text: &str) -> Recipe {
        Recipe::parse(text, "r.toml", false).unwrap()
    }

    #[test]
    fn each_edit_is_refused_with_its_key_and_allowed_edits_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        // nothing trained yet: a new recipe simply replaces the record
        check_and_record(dir.path(), &recipe(&R.replace("lr = 0.1", "lr = 0.3")), &[]).unwrap();
        let (rec0, c) = check_and_record(dir.path(), &recipe(R), &[]).unwrap();
        let h0 = rec0.recipe_hash;
        assert!(c.is_empty());
        fs::create_dir_all(dir.path().join("seed-0/teacher")).unwrap();
        fs::write(dir.path().join("seed-0/teacher/state.json"), "{}").unwrap();
        // the same recipe, other seeds and other [quick] values: same hash, accepted
        let same = R
            .replace("seeds = [0]", "seeds = [0, 1]")
            .replace("epochs = 1", "epochs = 2");
        assert_eq!(
            check_and_record(dir.path(), &recipe(&same), &[])
                .unwrap()
                .0
                .recipe_hash,
            h0
        );
        for (from, to, key) in [
            ("lr = 0.1", "lr = 0.2", "teacher.optimizer.lr"),
            (
                "temperature = 4.0",
                "temperature = 2.0",
                "distill.losses[0].temperature",
            ),
            ("epochs = 3", "epochs = 5", "teacher.epochs"),
            ("weight = 0.1", "weight = 0.2", "distill.losses[1].weight"),
        ] {
            let e = check_and_record(dir.path(), &recipe(&R.replace(from, to)), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("--allow-changed"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let longer = recipe(&R.replace("epochs = 3", "epochs = 5"));
        let (rec1, c) = check_and_record(dir.path(), &longer, &["teacher.epochs".into()]).unwrap();
        let h1 = rec1.recipe_hash;
        assert_ne!(h1, h0);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].to_string(), "teacher.epochs (3 -> 5)");
        let rec: RunRecord = read_json(&dir.path().join(RUN_FILE)).unwrap();
        assert_eq!(
            (rec.recipe_hash.as_str(), rec.changes.len()),
            (h1.as_str(), 1)
        );
        // the new recipe is now the recorded one
        assert!(check_and_record(dir.path(), &longer, &[])
            .unwrap()
            .1
            .is_empty());
    }

    #[test]
    fn phases_fed_by_keys() {
        assert_eq!(
            phases_fed_by("teacher.epochs"),
            [Phase::Teacher, Phase::Distilled]
        );
        assert_eq!(
            phases_fed_by("distill.losses[0].weight"),
            [Phase::Distilled]
        );
        assert_eq!(phases_fed_by("data.batch_size").len(), 3);
        assert!(phases_fed_by("description").is_empty());
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("in use"),
            "{e}"
        );
        drop(lock);
        let again = RunLock::acquire(dir.path()).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
    }
}
