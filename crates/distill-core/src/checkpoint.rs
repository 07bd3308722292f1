//! Crash-safe files: safetensors and JSON written atomically (temp file, fsync, rename, fsync of the directory).

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Removes temp files that a killed writer left in `dir`, so they do not pile up over restarts: ours
/// (`NAME.tmpPID`, never renamed into place) and the safetensors crate's own (`.tmpXXXXXX`, from the
/// `tempfile` crate). Returns how many it removed.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name
            .rsplit_once(".tmp")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        let tempfile_crate = name.len() == 10
            && name.starts_with(".tmp")
            && name[4..].bytes().all(|b| b.is_ascii_alphanumeric());
        let stale = ours || tempfile_crate;
        if stale && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Writes `bytes` to `path` atomically: a reader (or a crash) sees either the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = tmp_path(path);
    {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes tensors as a safetensors file, atomically. Returns the file size in bytes.
pub fn write_safetensors_atomic(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<u64> {
    let tmp = tmp_path(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, &tmp)?;
    {
        let f = fs::File::open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(fs::metadata(path).map_err(|e| Error::io(path, e))?.len())
}

/// Reads a safetensors file; a missing or corrupt file is an error naming it.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "file not found".into(),
        });
    }
    let map = candle_core::safetensors::load(path, device).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    Ok(map.into_iter().collect())
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json_atomic<T: serde::Serialize>(value: &T, path: &Path) -> Result<()> {
    let s = serde_json::to_string_pretty(value)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    write_atomic(path, s.as_bytes())
}

/// Reads JSON written by [`write_json_atomic`].
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("corrupt JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_and_corruption_is_reported() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.safetensors");
        let mut m = BTreeMap::new();
        m.insert(
            "w".to_string(),
            Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?,
        );
        let n = write_safetensors_atomic(&m, &p)?;
        assert_eq!(n, fs::metadata(&p).unwrap().len());
        let back = read_safetensors(&p, &Device::Cpu)?;
        assert_eq!(
            back["w"].to_vec2::<f32>()?,
            vec![vec![1., 2.], vec![3., 4.]]
        );
        // no temp file left behind
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_safetensors(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("b.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn stale_temps_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "checkpoint.safetensors.tmp123",
            "state.json.tmp9",
            ".tmpY23yIy",
            "state.json",
            "notes.tmp",
            "x.tmpabc",
        ] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()), 3);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.tmp", "state.json", "x.tmpabc"]);
    }
}
