//! The trained-teacher cache, safe to share between processes and machines on one filesystem.
//!
//! An entry is `<cache>/teachers/<key>/` holding `model.safetensors` (checksummed like every file distill
//! writes), `result.json` and `entry.json` (what the key was made of). The key ([`teacher_cache_key`]) covers
//! everything that determines the trained teacher: the plugin and its identity (a builtin's crate version, a
//! plugin library's content hash), the data set name, data options and a fingerprint of the data files (their
//! paths, sizes and modification times, and the content of a `SHA256SUMS`), the recipe's teacher section and the
//! seed. A process that needs an entry holds `<key>.lock` (an advisory `flock`) from the lookup until the teacher
//! it trained is stored, so two processes that need one teacher train it once: the second waits, then reuses it.
//! An entry is written into a temp directory and renamed into place; a damaged entry fails its checksum and is
//! trained again, never used. Every lookup appends a line to `<cache>/log.jsonl`.
//!
//! The scratch student is cached the same way ([`scratch_cache_key`]: the student section instead of the
//! teacher's; the entry also keeps its per-example test scores): it never sees the teacher, so every run of a
//! seed with the same data and student (the variants of a loss, the rows of the methods table) trains it once.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    checkpoint::{read_json, sha256_hex, verify_safetensors, write_json_atomic},
    network::{load_network, save_network},
    recipe::Recipe,
    report::PhaseResult,
    run_record::RunLock,
    Error, Network, Result,
};

/// Bumped when a change to training code makes cached teachers invalid.
const TEACHER_CACHE_VERSION: u32 = 2;

/// File names inside an entry.
const MODEL: &str = "model.safetensors";
const RESULT: &str = "result.json";
const ENTRY: &str = "entry.json";

/// What an entry was made from (`entry.json`), listed by `distill cache list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryInfo {
    /// The entry's key.
    pub key: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin identity (builtin version or library hash).
    pub plugin_identity: String,
    /// Data set.
    pub dataset: String,
    /// The recipe that first trained it.
    pub recipe: String,
    /// The phase: `teacher` (entries written before scratch students were cached have none) or `scratch student`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Seed.
    pub seed: u64,
    /// [`data_fingerprint`] of the data it was trained on.
    pub data_fingerprint: String,
    /// When it was stored (seconds since the Unix epoch).
    pub created_unix: u64,
    /// The teacher's test metric.
    pub metric: f64,
}

/// Hash of everything that determines a trained teacher: plugin and its identity, data set, data options, data
/// fingerprint, the teacher section and the seed.
pub fn teacher_cache_key(
    recipe: &Recipe,
    seed: u64,
    plugin_identity: &str,
    data_fingerprint: &str,
) -> String {
    let key = serde_json::json!({
        "v": TEACHER_CACHE_VERSION,
        "plugin": recipe.plugin,
        "plugin_identity": plugin_identity,
        "dataset": recipe.dataset,
        "data": recipe.data,
        "data_fingerprint": data_fingerprint,
        "teacher": recipe.teacher,
        "seed": seed,
    });
    sha256_hex(key.to_string().as_bytes())[..24].to_string()
}

/// Hash of everything that determines a trained scratch student: as [`teacher_cache_key`], with the student
/// section in place of the teacher's (the scratch student never sees the teacher or the distill section), and
/// whether the run is `--quick` (its latency protocol is the quick one).
pub fn scratch_cache_key(
    recipe: &Recipe,
    seed: u64,
    quick: bool,
    plugin_identity: &str,
    data_fingerprint: &str,
) -> String {
    let key = serde_json::json!({
        "v": TEACHER_CACHE_VERSION,
        "phase": "scratch",
        "quick": quick,
        "plugin": recipe.plugin,
        "plugin_identity": plugin_identity,
        "dataset": recipe.dataset,
        "data": recipe.data,
        "data_fingerprint": data_fingerprint,
        "student": recipe.student,
        "seed": seed,
    });
    sha256_hex(key.to_string().as_bytes())[..24].to_string()
}

/// A fingerprint of the files a recipe reads: every file under `DATA_DIR/<dataset>/` and, when the data options
/// name a `root` folder, under `DATA_DIR/<root>/` — relative path, size and modification time of each, plus the
/// content of any `SHA256SUMS` (the dataset card's checksums). Cheap (metadata only), and any edit, copy or
/// replacement of a data file changes it.
pub fn data_fingerprint(data_dir: &Path, recipe: &Recipe) -> String {
    let mut roots = vec![recipe.dataset.clone()];
    if let Some(root) = recipe
        .data
        .options
        .as_ref()
        .and_then(|o| o.get("root"))
        .and_then(|r| r.as_str())
    {
        roots.push(root.to_string());
    }
    let mut h = Sha256::new();
    for r in roots {
        h.update(r.as_bytes());
        let dir = data_dir.join(&r);
        let mut files = Vec::new();
        walk(&dir, &mut files);
        files.sort();
        for f in files {
            let rel = f
                .strip_prefix(&dir)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            h.update(rel.as_bytes());
            if let Ok(m) = fs::metadata(&f) {
                h.update(m.len().to_le_bytes());
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                h.update(mtime.to_le_bytes());
            }
            if f.file_name().is_some_and(|n| n == "SHA256SUMS") {
                if let Ok(bytes) = fs::read(&f) {
                    h.update(&bytes);
                }
            }
        }
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else {
        if dir.is_file() {
            out.push(dir.to_path_buf());
        }
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, out),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A verified entry, loaded into the network; its result.
    Hit(Box<PhaseResult>),
    /// No entry.
    Miss,
    /// An entry that failed verification (why); it will be replaced.
    Damaged(String),
}

/// The cache under `<cache_dir>/teachers/`.
#[derive(Debug, Clone)]
pub struct TeacherCache {
    root: PathBuf,
    log: PathBuf,
}

impl TeacherCache {
    /// The cache in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            root: cache_dir.join("teachers"),
            log: cache_dir.join("log.jsonl"),
        }
    }

    /// The directory of the entry `key`.
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Appends one line to `log.jsonl`: time, pid, host, key, event and detail. Best effort: a log line that
    /// cannot be written never fails a run.
    pub fn log(&self, key: &str, event: &str, detail: &str) {
        let line = serde_json::json!({
            "unix": crate::report::unix_now(),
            "pid": std::process::id(),
            "host": crate::run_record::hostname(),
            "key": key,
            "event": event,
            "detail": detail,
        });
        let _ = fs::create_dir_all(&self.root);
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }

    /// Locks the entry `key` (blocking: waits for a process that is training the same teacher).
    pub fn lock(&self, key: &str, label: &str) -> Result<RunLock> {
        RunLock::wait_file(&self.root.join(format!("{key}.lock")), || {
            eprintln!(
                "[{label}] another process is training this teacher ({}); waiting for it",
                self.entry_dir(key).display()
            );
            self.log(key, "waited", label);
        })
    }

    /// Looks up `key` and, on a hit, loads the network's weights into `net` and copies the entry's per-example
    /// test scores (if it has them) into `phase_dir`.
    pub fn load(
        &self,
        key: &str,
        net: &dyn Network,
        device: &candle_core::Device,
        phase_dir: &Path,
    ) -> Lookup {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Lookup::Miss;
        }
        let examples = dir.join(crate::stats::EXAMPLES_FILE);
        let loaded = load_network(net, &dir.join(MODEL), device)
            .and_then(|()| read_json::<PhaseResult>(&dir.join(RESULT)))
            .and_then(|r| {
                if examples.exists() {
                    let scores: crate::stats::ExampleScores = read_json(&examples)?;
                    fs::create_dir_all(phase_dir).map_err(|e| Error::io(phase_dir, e))?;
                    write_json_atomic(&scores, &phase_dir.join(crate::stats::EXAMPLES_FILE))?;
                }
                Ok(r)
            });
        match loaded {
            Ok(r) => Lookup::Hit(Box::new(r)),
            Err(e) => Lookup::Damaged(e.to_string()),
        }
    }

    /// Stores a trained network under `key`, with the per-example test scores in `phase_dir` when there are
    /// any: written into a temp directory, then renamed into place (a damaged entry there is removed first).
    /// Call with the entry's lock held.
    pub fn store(
        &self,
        key: &str,
        net: &dyn Network,
        result: &PhaseResult,
        info: &EntryInfo,
        phase_dir: &Path,
    ) -> Result<()> {
        let tmp = self.root.join(format!(".tmp-{key}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let written = (|| {
            fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            save_network(net, &tmp.join(MODEL))?;
            write_json_atomic(result, &tmp.join(RESULT))?;
            let examples = phase_dir.join(crate::stats::EXAMPLES_FILE);
            if examples.exists() {
                let scores: crate::stats::ExampleScores = read_json(&examples)?;
                write_json_atomic(&scores, &tmp.join(crate::stats::EXAMPLES_FILE))?;
            }
            write_json_atomic(info, &tmp.join(ENTRY))
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let dir = self.entry_dir(key);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        fs::rename(&tmp, &dir).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            Error::io(&dir, e)
        })
    }

    /// Every entry: its key, what `entry.json` says (if readable) and its size in bytes.
    pub fn list(&self) -> Result<Vec<(String, Option<EntryInfo>, u64)>> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().is_dir() || name.starts_with('.') {
                continue;
            }
            let mut files = Vec::new();
            walk(&e.path(), &mut files);
            let size = files
                .iter()
                .filter_map(|f| fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
            out.push((name, read_json(&e.path().join(ENTRY)).ok(), size));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Verifies an entry: its weights against their checksum, its result and description parse.
    pub fn verify(&self, key: &str) -> Result<()> {
        let dir = self.entry_dir(key);
        verify_safetensors(&dir.join(MODEL))?;
        read_json::<PhaseResult>(&dir.join(RESULT))?;
        read_json::<EntryInfo>(&dir.join(ENTRY))?;
        Ok(())
    }

    /// Removes every entry (and leftover temp directories and lock files); returns how many entries it removed.
    pub fn clear(&self) -> Result<usize> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Ok(0);
        };
        let mut n = 0;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                let entry = !e.file_name().to_string_lossy().starts_with('.');
                fs::remove_dir_all(&p).map_err(|err| Error::io(&p, err))?;
                n += usize::from(entry);
            } else {
                fs::remove_file(&p).map_err(|err| Error::io(&p, err))?;
            }
        }
        Ok(n)
    }

    /// The cache's root (`<cache_dir>/teachers`).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = r#"name = "t"
plugin = "p"
dataset = "d"
[data]
options = { root = "g" }
[teacher]
model = { arch = "mlp" }
epochs = 3
optimizer = { kind = "sgd", lr = 0.1 }
[student]
model = { arch = "mlp" }
epochs = 2
optimizer = { kind = "sgd", lr = 0.1 }
[distill]
losses = [{ name = "kd", temperature = 4.0 }]
"#;

    #[test]
    fn the_key_covers_plugin_identity_data_files_teacher_and_seed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recipe::parse(R, "t.toml", false).unwrap();
        fs::create_dir_all(dir.path().join("d/sub")).unwrap();
        fs::create_dir_all(dir.path().join("g")).unwrap();
        fs::write(dir.path().join("d/sub/a.bin"), b"abc").unwrap();
        fs::write(dir.path().join("g/nodes.tsv"), b"x").unwrap();
        let fp = data_fingerprint(dir.path(), &r);
        assert_eq!(fp, data_fingerprint(dir.path(), &r), "stable");
        let k = teacher_cache_key(&r, 0, "builtin 0.1.0", &fp);
        assert_ne!(k, teacher_cache_key(&r, 1, "builtin 0.1.0", &fp));
        assert_ne!(k, teacher_cache_key(&r, 0, "dylib sha256:00", &fp));
        // a changed data file (size), a file under the options' root, a new file: each a new fingerprint
        fs::write(dir.path().join("d/sub/a.bin"), b"abcd").unwrap();
        let fp2 = data_fingerprint(dir.path(), &r);
        assert_ne!(fp, fp2);
        fs::write(dir.path().join("g/nodes.tsv"), b"yy").unwrap();
        let fp3 = data_fingerprint(dir.path(), &r);
        assert_ne!(fp2, fp3);
        fs::write(dir.path().join("d/extra"), b"").unwrap();
        assert_ne!(fp3, data_fingerprint(dir.path(), &r));
        let other = Recipe::parse(&R.replace("epochs = 3", "epochs = 4"), "t.toml", false).unwrap();
        assert_ne!(k, teacher_cache_key(&other, 0, "builtin 0.1.0", &fp));
        // the student section is not part of the teacher's key
        let student =
            Recipe::parse(&R.replace("epochs = 2", "epochs = 5"), "t.toml", false).unwrap();
        assert_eq!(k, teacher_cache_key(&student, 0, "builtin 0.1.0", &fp));
    }
}
