//! Crash-safe files: safetensors and JSON written atomically (temp file, fsync, rename, fsync of the directory).
//! Every safetensors file carries a SHA-256 of its tensors in its metadata, checked on every read, so a
//! file whose bytes changed on disk is refused instead of loaded.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use candle_core::{safetensors::Load, Device, Tensor};
use safetensors::tensor as st;
use sha2::{Digest, Sha256};

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
/// On an error (a full disk, say) the temp file is removed and the error names the file once.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    create_parent(path)?;
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    commit(&tmp, path)
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Renames a finished temp file into place and syncs the directory; the temp file is removed on failure.
fn commit(tmp: &Path, path: &Path) -> Result<()> {
    if let Err(e) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(Error::io(path, e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The safetensors metadata key under which every file distill writes carries the SHA-256 of its contents
/// (see [`content_digest`]); [`read_safetensors`] checks it.
pub const CHECKSUM_KEY: &str = "distill.sha256";

/// One tensor's bytes, ready to be hashed and written.
struct OwnedView {
    dtype: st::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl st::View for &OwnedView {
    fn dtype(&self) -> st::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// SHA-256 (hex) over every tensor in name order: its name, dtype, shape and raw little-endian bytes, each
/// length-prefixed. Independent of the file's layout, so a reader recomputes it from the parsed tensors.
pub fn content_digest<'a>(
    tensors: impl IntoIterator<Item = (&'a str, st::Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = Sha256::new();
    for (name, dtype, shape, data) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let dt = dtype.to_string();
        h.update((dt.len() as u64).to_le_bytes());
        h.update(dt.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes tensors as a safetensors file, atomically, with their [`content_digest`] in the metadata. Returns
/// the file size in bytes.
pub fn write_safetensors_atomic(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<u64> {
    write_safetensors_with_metadata(tensors, &BTreeMap::new(), path)
}

/// [`write_safetensors_atomic`] with extra string metadata (e.g. a checkpoint's training state) stored in
/// the file's header beside the checksum.
pub fn write_safetensors_with_metadata(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<u64> {
    create_parent(path)?;
    let views = tensors
        .iter()
        .map(|(k, t)| {
            let data = st::View::data(&t).into_owned();
            Ok((
                k.as_str(),
                OwnedView {
                    dtype: st::View::dtype(t),
                    shape: t.dims().to_vec(),
                    data,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let digest = content_digest(
        views
            .iter()
            .map(|(k, v)| (*k, v.dtype, v.shape.as_slice(), v.data.as_slice())),
    );
    let mut meta: std::collections::HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("format".into(), "pt".into());
    meta.insert(CHECKSUM_KEY.into(), digest);
    let tmp = tmp_path(path);
    let written = st::serialize_to_file(views.iter().map(|(k, v)| (*k, v)), Some(meta), &tmp)
        .map_err(|e| match e {
            st::SafeTensorError::IoError(e) => Error::io(path, e),
            e => Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("cannot serialise: {e}"),
            },
        })
        .and_then(|()| {
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(path, e))
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    commit(&tmp, path)?;
    Ok(fs::metadata(path).map_err(|e| Error::io(path, e))?.len())
}

/// Reads a safetensors file; a missing or corrupt file is an error naming it. A file that carries a
/// [`CHECKSUM_KEY`] (every file distill writes) must match it: flipped bytes are an error, never loaded.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    Ok(read_safetensors_with_metadata(path, device)?.0)
}

/// [`read_safetensors`] that also returns the file's string metadata.
pub fn read_safetensors_with_metadata(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: "file not found".into(),
            })
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let (views, meta) = checked_views(&bytes, path, false)?;
    let mut out = BTreeMap::new();
    for (name, view) in views {
        let t = view.load(device).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("tensor `{name}`: {e}"),
        })?;
        out.insert(name, t);
    }
    Ok((out, meta))
}

/// Checks a safetensors file written by distill against its recorded checksum without building tensors: the
/// file must parse and carry a [`CHECKSUM_KEY`] that matches its contents.
pub fn verify_safetensors(path: &Path) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    checked_views(&bytes, path, true).map(|_| ())
}

/// Parses a safetensors file's bytes into its tensor views (in name order) and string metadata, checking the
/// recorded [`CHECKSUM_KEY`]: a mismatch is an error, and so is a missing checksum when `required`.
#[allow(clippy::type_complexity)]
fn checked_views<'a>(
    bytes: &'a [u8],
    path: &Path,
    required: bool,
) -> Result<(Vec<(String, st::TensorView<'a>)>, BTreeMap<String, String>)> {
    let bad = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let file = st::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let (_, header) = st::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut views = file.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    match meta.get(CHECKSUM_KEY) {
        Some(expected) => {
            let found = content_digest(
                views
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.dtype(), v.shape(), v.data())),
            );
            if &found != expected {
                return Err(bad(format!(
                    "checksum mismatch: the contents changed after the file was written (sha256 {found}, \
                     recorded {expected})"
                )));
            }
        }
        None if required => return Err(bad(format!("carries no `{CHECKSUM_KEY}` checksum"))),
        None => {}
    }
    Ok((views, meta))
}

/// The key of the checksum line that [`write_json_atomic`] puts first in every JSON object it writes.
pub const JSON_CHECKSUM_KEY: &str = "_sha256";

/// The SHA-256 of `bytes`, in hex: every checksum and key distill writes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Writes a value as pretty JSON, atomically. An object gets a first line `"_sha256": "<hex>"`: the SHA-256
/// of the file's text without that line, which [`read_json`] checks, so an edited or damaged file (a flipped
/// digit in a metric, say) is refused instead of read.
pub fn write_json_atomic<T: serde::Serialize>(value: &T, path: &Path) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    if s.starts_with("{\n") {
        let line = format!(
            "  \"{JSON_CHECKSUM_KEY}\": \"{}\",\n",
            sha256_hex(s.as_bytes())
        );
        s.insert_str(2, &line);
    }
    write_atomic(path, s.as_bytes())
}

/// Reads JSON written by [`write_json_atomic`], checking its checksum line when it has one (files written
/// before checksums were, and files written by other tools, have none and are read as they are).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let prefix = format!("{{\n  \"{JSON_CHECKSUM_KEY}\": \"");
    if let Some(rest) = s.strip_prefix(&prefix) {
        let (recorded, body) = rest
            .split_once("\",\n")
            .ok_or_else(|| bad("a malformed checksum line".into()))?;
        let text = format!("{{\n{body}");
        let found = sha256_hex(text.as_bytes());
        if found != recorded {
            return Err(bad(format!(
                "checksum mismatch: the file was edited or damaged after it was written (sha256 {found}, \
                 recorded {recorded})"
            )));
        }
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&s).map_err(|e| bad(format!("corrupt JSON: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove(JSON_CHECKSUM_KEY);
    }
    serde_json::from_value(v).map_err(|e| bad(format!("corrupt JSON: {e}")))
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
    fn json_carries_a_checksum_and_an_edit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json");
        let v = serde_json::json!({ "metric": 0.774, "curve": [1.5, 0.25], "name": "teacher" });
        write_json_atomic(&v, &p).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("{\n  \"_sha256\": \""), "{text}");
        let back: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(back, v, "the checksum line is not part of the value");
        // one digit of a metric changed: refused, naming the file
        fs::write(&p, text.replace("0.774", "0.794")).unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(
            e.contains("result.json") && e.contains("checksum mismatch"),
            "{e}"
        );
        // a file without a checksum line (older, or another tool's) is read as it is
        fs::write(&p, "{\"metric\": 0.5}").unwrap();
        assert_eq!(read_json::<serde_json::Value>(&p).unwrap()["metric"], 0.5);
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
