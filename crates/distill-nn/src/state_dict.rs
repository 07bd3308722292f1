//! PyTorch state dicts: reading them from `.safetensors` and `.pt` / `.pth` / `.bin` files, and matching
//! their names onto a model's parameters the way PyTorch's `load_state_dict` does, with the renamings real
//! checkpoints need.
//!
//! * [`read_state_dict`] reads a file by its contents (not its extension): safetensors, or a `torch.save`
//!   zip archive through candle's pickle reader — a bare state dict or one nested under `state_dict`,
//!   `model_state_dict`, `model`, `net` or `module` (training checkpoints). Half, bfloat16 and double
//!   tensors become `f32`; integer buffers are kept as they are.
//! * [`load_state_dict`] loads one into a `VarMap`, strictly (one error listing everything that does not
//!   fit) or not (a warning); [`weights_file`] finds the weights of a Hugging Face model folder.
//! * [`match_names`] pairs the file's keys with the model's parameter names, in this order for each key:
//!   1. the same name;
//!   2. the name without wrapper prefixes ([`WRAPPER_PREFIXES`]: `module.` of `DataParallel`, `_orig_mod.`
//!      of `torch.compile`, `model.` of Lightning, `bert.` of Hugging Face's task models), as many as lead
//!      (at each step also with old BERT checkpoints' `LayerNorm.gamma` / `.beta` read as `.weight` / `.bias`);
//!   3. PyTorch-only buffers no layer here keeps (`*.num_batches_tracked`, BERT's `embeddings.position_ids`
//!      and `embeddings.token_type_ids`) and the model's [`ImportRules::unused_prefixes`] are ignored;
//!   4. for a network built as a sequence of layers ([`ImportRules::sequential`]), `nn.Sequential`'s numeric
//!      names: the k-th numbered module with parameters (`0.`, `3.`, `6.`, … in numeric order) is the k-th
//!      layer (`fc1.`, `fc2.`, …), when the counts agree;
//!   5. anything else is *unexpected*. Model names no key reached are *missing*; a pair whose shapes differ
//!      is a *shape mismatch*. [`NameMatch::describe`] lists all three.
//!
//! ```
//! use std::collections::BTreeMap;
//! use distill_nn::state_dict::{match_names, ImportRules};
//! let ours: BTreeMap<String, Vec<usize>> =
//!     [("fc1.weight", vec![4, 2]), ("fc1.bias", vec![4]), ("fc2.weight", vec![3, 4]), ("fc2.bias", vec![3])]
//!         .into_iter().map(|(k, s)| (k.to_string(), s)).collect();
//! // `torch.save(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3)).state_dict(), ...)` under DataParallel
//! let file: BTreeMap<String, Vec<usize>> =
//!     [("module.0.weight", vec![4, 2]), ("module.0.bias", vec![4]), ("module.2.weight", vec![3, 4]),
//!      ("module.2.bias", vec![3])].into_iter().map(|(k, s)| (k.to_string(), s)).collect();
//! let rules = ImportRules { sequential: Some(vec!["fc1".into(), "fc2".into()]), ..Default::default() };
//! let m = match_names(&ours, &file, &rules);
//! assert!(m.is_complete());
//! assert!(m.pairs.contains(&("fc2.weight".to_string(), "module.2.weight".to_string())));
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::{Error, Result};

/// Prefixes that wrap a model's names in common checkpoints, stripped (repeatedly) when a key does not
/// match as it is: `module.` (`nn.DataParallel` / DDP), `_orig_mod.` (`torch.compile`), `model.`
/// (Lightning, timm EMA wrappers), `bert.` (Hugging Face's `BertFor…` task models).
pub const WRAPPER_PREFIXES: &[&str] = &["module.", "_orig_mod.", "model.", "bert."];

/// Keys under which a training checkpoint nests its state dict, tried in this order when a `.pt` file's top
/// level holds no tensors.
pub const NESTED_KEYS: &[&str] = &["state_dict", "model_state_dict", "model", "net", "module"];

/// How a network wants a foreign state dict read, beyond exact names: its answer to
/// `Network::import_rules` in distill-core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportRules {
    /// The layer prefixes of a network that PyTorch users write as an `nn.Sequential`, in forward order
    /// (e.g. `["fc1", "fc2", "fc3"]`): numbered keys (`0.weight`, `3.weight`, …) map onto them in order.
    pub sequential: Option<Vec<String>>,
    /// Prefixes of checkpoint tensors the network leaves out by configuration (e.g. BERT's `pooler.` when it
    /// pools by mean): ignored instead of reported as unexpected.
    pub unused_prefixes: Vec<String>,
}

/// Whether `key` is a PyTorch-only buffer that no layer here keeps: batch norm's `num_batches_tracked`
/// (distill uses a fixed momentum) and Hugging Face BERT's `embeddings.position_ids` /
/// `embeddings.token_type_ids` (index tables, not weights).
pub fn is_torch_only_buffer(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
        || key.ends_with("embeddings.position_ids")
        || key.ends_with("embeddings.token_type_ids")
}

/// A file key paired with a model name whose shapes differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The model's name.
    pub name: String,
    /// The file's key.
    pub key: String,
    /// The model's shape.
    pub expected: Vec<usize>,
    /// The file's shape.
    pub found: Vec<usize>,
}

/// How a state dict's keys meet a model's names (see the module docs for the rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameMatch {
    /// `(model name, file key)` pairs with equal shapes, in model-name order.
    pub pairs: Vec<(String, String)>,
    /// Model names no key reached, with their shapes.
    pub missing: Vec<(String, Vec<usize>)>,
    /// File keys that match nothing, with their shapes.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Pairs whose shapes differ.
    pub mismatched: Vec<ShapeMismatch>,
    /// File keys left out on purpose (PyTorch-only buffers, parts the model leaves out by configuration).
    pub ignored: Vec<String>,
    /// Why a sequential mapping was not made, when the file looked like an `nn.Sequential`.
    pub hint: Option<String>,
}

impl NameMatch {
    /// Whether every model name found a key of its shape and no key was left over.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// The missing keys, unexpected keys and shape mismatches in one line, each list complete, e.g.
    /// ``1 missing key: `fc.bias` [10]; 1 unexpected key: `fc.extra` [3]``.
    pub fn describe(&self) -> String {
        let plural = |n: usize, what: &str| {
            if n == 1 {
                format!("1 {what}")
            } else if what.ends_with('h') {
                format!("{n} {what}es")
            } else {
                format!("{n} {what}s")
            }
        };
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            let l: Vec<String> = self
                .missing
                .iter()
                .map(|(k, s)| format!("`{k}` {s:?}"))
                .collect();
            parts.push(format!(
                "{} (the model has them, the file not): {}",
                plural(l.len(), "missing key"),
                l.join(", ")
            ));
        }
        if !self.unexpected.is_empty() {
            let l: Vec<String> = self
                .unexpected
                .iter()
                .map(|(k, s)| format!("`{k}` {s:?}"))
                .collect();
            parts.push(format!(
                "{} (in the file, not in the model): {}",
                plural(l.len(), "unexpected key"),
                l.join(", ")
            ));
        }
        if !self.mismatched.is_empty() {
            let l: Vec<String> = self
                .mismatched
                .iter()
                .map(|m| {
                    let from = if m.key == m.name {
                        String::new()
                    } else {
                        format!(" (file key `{}`)", m.key)
                    };
                    format!(
                        "`{}`{from}: the model expects {:?}, the file has {:?}",
                        m.name, m.expected, m.found
                    )
                })
                .collect();
            parts.push(format!(
                "{}: {}",
                plural(l.len(), "shape mismatch"),
                l.join(", ")
            ));
        }
        if let Some(h) = &self.hint {
            parts.push(h.clone());
        }
        parts.join("; ")
    }
}

/// What [`load_state_dict`] did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The file the tensors came from.
    pub path: PathBuf,
    /// How its keys met the model's names; `pairs` were loaded.
    pub names: NameMatch,
}

impl ImportReport {
    /// For a non-strict load that left something out: one line saying what.
    pub fn warning(&self) -> Option<String> {
        (!self.names.is_complete()).then(|| {
            let n = self.names.pairs.len();
            let what = self.names.describe();
            format!("{}: loaded {n} tensors; {what}", self.path.display())
        })
    }
}

/// The weights file a pretrained path names: the path itself, or in a folder (a Hugging Face model folder)
/// `model.safetensors`, else `pytorch_model.bin`.
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let files = ["model.safetensors", "pytorch_model.bin"].map(|f| path.join(f));
    files
        .into_iter()
        .find(|f| f.is_file())
        .ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "is a folder without model.safetensors or pytorch_model.bin".into(),
        })
}

/// Loads a state dict (`tensors`, read from `path`) into `varmap` like PyTorch's `load_state_dict`, names
/// paired by [`match_names`] with `rules`.
///
/// `strict`: every variable must be found with its shape and no tensor may be left over, else one error
/// (naming `path` and the model, `what`) lists every missing key, unexpected key and shape mismatch, and
/// nothing is loaded. Not strict: the tensors that fit are loaded, the other variables keep their values,
/// and [`ImportReport::warning`] lists what did not fit.
pub fn load_state_dict(
    varmap: &VarMap,
    tensors: &BTreeMap<String, Tensor>,
    rules: &ImportRules,
    strict: bool,
    path: &Path,
    what: &str,
) -> Result<ImportReport> {
    let data = varmap.data().lock().expect("varmap lock");
    let dims = |t: &Tensor| t.dims().to_vec();
    let expected = data.iter().map(|(k, v)| (k.clone(), dims(v))).collect();
    let found = tensors.iter().map(|(k, t)| (k.clone(), dims(t))).collect();
    let names = match_names(&expected, &found, rules);
    if strict && !names.is_complete() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!(
                "does not fit {what}: {} (strict loading, as PyTorch's load_state_dict; `strict = false` in \
                 the recipe's teacher/student section loads the tensors that fit and warns about the rest)",
                names.describe()
            ),
        });
    }
    for (name, key) in &names.pairs {
        let var = &data[name];
        var.set(&tensors[key].to_dtype(DType::F32)?.to_device(var.device())?)?;
    }
    Ok(ImportReport {
        path: path.to_path_buf(),
        names,
    })
}

/// `key` without as many leading [`WRAPPER_PREFIXES`] as it has, one at a time: every form, outermost first
/// (the key itself is not included).
fn stripped_forms(key: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut k = key;
    while let Some(rest) = WRAPPER_PREFIXES.iter().find_map(|p| k.strip_prefix(p)) {
        out.push(rest);
        k = rest;
    }
    out
}

/// A LayerNorm's TensorFlow-era names in old BERT checkpoints (`LayerNorm.gamma`, `LayerNorm.beta`, as
/// `bert-base-uncased`'s `pytorch_model.bin` has them) in PyTorch's (`weight`, `bias`), as transformers
/// renames them.
fn legacy_norm_name(key: &str) -> Option<String> {
    let (stem, last) = key.rsplit_once('.')?;
    let new = match last {
        "gamma" => "weight",
        "beta" => "bias",
        _ => return None,
    };
    Some(format!("{stem}.{new}"))
}

/// The leading module number of a key in `nn.Sequential` form (`3.weight` → 3), after wrapper prefixes.
fn sequential_index(key: &str) -> Option<(usize, &str)> {
    let k = stripped_forms(key).last().copied().unwrap_or(key);
    let (n, rest) = k.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// Pairs the keys of a state dict (`found`, with shapes) with a model's parameter names (`expected`), by
/// the rules of the module docs.
pub fn match_names(
    expected: &BTreeMap<String, Vec<usize>>,
    found: &BTreeMap<String, Vec<usize>>,
    rules: &ImportRules,
) -> NameMatch {
    let mut m = NameMatch::default();
    // model name -> file key
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut left: Vec<&String> = Vec::new();
    for key in found.keys() {
        let target = std::iter::once(key.as_str())
            .chain(stripped_forms(key))
            .flat_map(|k| [Some(k.to_string()), legacy_norm_name(k)])
            .flatten()
            .find(|k| expected.contains_key(k) && !taken.contains_key(k));
        if let Some(t) = target {
            taken.insert(t, key.clone());
            continue;
        }
        let unused = std::iter::once(key.as_str())
            .chain(stripped_forms(key))
            .any(|k| {
                rules
                    .unused_prefixes
                    .iter()
                    .any(|p| k.starts_with(p.as_str()))
            });
        if is_torch_only_buffer(key) || unused {
            m.ignored.push(key.clone());
        } else {
            left.push(key);
        }
    }
    if let Some(layers) = &rules.sequential {
        sequential(expected, layers, &mut taken, &mut left, &mut m);
    }
    for (name, shape) in expected {
        match taken.get(name) {
            None => m.missing.push((name.clone(), shape.clone())),
            Some(key) if &found[key] != shape => m.mismatched.push(ShapeMismatch {
                name: name.clone(),
                key: key.clone(),
                expected: shape.clone(),
                found: found[key].clone(),
            }),
            Some(key) => m.pairs.push((name.clone(), key.clone())),
        }
    }
    m.unexpected = left
        .into_iter()
        .map(|k| (k.clone(), found[k].clone()))
        .collect();
    m
}

/// Step 4 of the rules: numbered `nn.Sequential` modules onto the model's layers, in order, when every key
/// left over is numbered and the counts agree (else a hint says why not).
fn sequential(
    expected: &BTreeMap<String, Vec<usize>>,
    layers: &[String],
    taken: &mut BTreeMap<String, String>,
    left: &mut Vec<&String>,
    m: &mut NameMatch,
) {
    if left.is_empty() || left.iter().any(|k| sequential_index(k).is_none()) {
        return;
    }
    let modules: BTreeSet<usize> = left
        .iter()
        .filter_map(|k| sequential_index(k).map(|(n, _)| n))
        .collect();
    let free = layers
        .iter()
        .all(|l| !taken.keys().any(|t| t.starts_with(&format!("{l}."))));
    if modules.len() != layers.len() || !free {
        m.hint = Some(format!(
            "the file looks like an nn.Sequential with {} modules holding parameters ({}), the model has {} \
             layers ({})",
            modules.len(),
            modules
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            layers.len(),
            layers.join(", ")
        ));
        return;
    }
    let order: BTreeMap<usize, &String> = modules.into_iter().zip(layers).collect();
    let mut rest = Vec::new();
    for key in left.drain(..) {
        let (n, param) = sequential_index(key).expect("checked above");
        let name = format!("{}.{param}", order[&n]);
        if expected.contains_key(&name) && !taken.contains_key(&name) {
            taken.insert(name, key.clone());
        } else {
            rest.push(key);
        }
    }
    *left = rest;
}

/// Reads a state dict from `path`: a safetensors file or a `torch.save` zip archive (`.pt`, `.pth`,
/// `.bin`), told apart by their contents. Floating-point tensors come back as `f32` on the CPU.
///
/// A missing or unreadable file, a legacy (pre-1.6, non-zip) `torch.save` file and a pickle without
/// tensors are errors naming the file.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bad = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("file not found".into()))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let tensors = match format_of(&bytes) {
        Format::Zip => read_pickle(path)?,
        Format::LegacyPickle => {
            return Err(bad(
                "is a legacy (pre-1.6) torch.save file, which only the zip format replaced: load it in PyTorch \
                 and save it again with `torch.save(model.state_dict(), path)` (or as safetensors)"
                    .into(),
            ))
        }
        Format::Safetensors => candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?
            .into_iter()
            .collect(),
        Format::Unknown => {
            return Err(bad(
                "is neither safetensors nor a PyTorch (torch.save zip) file".into(),
            ))
        }
    };
    to_f32(tensors)
}

enum Format {
    Safetensors,
    Zip,
    LegacyPickle,
    Unknown,
}

fn format_of(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"PK\x03\x04") {
        return Format::Zip;
    }
    // a pickle starts with PROTO (0x80) and its version; torch's legacy format is a pickled magic number
    if bytes.len() > 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Format::LegacyPickle;
    }
    // safetensors: an 8-byte little-endian header length, then the JSON header
    if bytes.len() >= 9 {
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if n as usize <= bytes.len() - 8 && bytes[8] == b'{' {
            return Format::Safetensors;
        }
    }
    Format::Unknown
}

/// The tensors of a `torch.save` zip archive: its top-level dict, else the first of [`NESTED_KEYS`] that
/// holds tensors.
fn read_pickle(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bad = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    for key in std::iter::once(None).chain(NESTED_KEYS.iter().map(Some)) {
        let pth = match candle_core::pickle::PthTensors::new(path, key.copied()) {
            Ok(p) => p,
            // a nested key that is not there
            Err(_) if key.is_some() => continue,
            Err(e) => return Err(bad(format!("not a readable PyTorch file: {e}"))),
        };
        if pth.tensor_infos().is_empty() {
            continue;
        }
        let mut out = BTreeMap::new();
        for name in pth.tensor_infos().keys() {
            let t = pth
                .get(name)
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))?
                .ok_or_else(|| bad(format!("tensor `{name}` cannot be read")))?;
            out.insert(name.clone(), t);
        }
        return Ok(out);
    }
    Err(bad(format!(
        "holds no tensors at its top level nor under {}: save the model's weights with \
         `torch.save(model.state_dict(), path)` (a whole pickled nn.Module cannot be read without Python)",
        NESTED_KEYS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Converts half, bfloat16 and double tensors to contiguous `f32`; other dtypes (integer buffers) stay.
pub fn to_f32(tensors: BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    tensors
        .into_iter()
        .map(|(k, t)| {
            let t = match t.dtype() {
                DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                _ => t,
            };
            Ok((k, t.contiguous()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(v: &[(&str, &[usize])]) -> BTreeMap<String, Vec<usize>> {
        v.iter().map(|(k, s)| (k.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn exact_prefixed_and_ignored_names() {
        let ours = shapes(&[
            ("embeddings.word_embeddings.weight", &[10, 4]),
            ("classifier.weight", &[2, 4]),
            ("bn.running_mean", &[4]),
        ]);
        let file = shapes(&[
            ("bert.embeddings.word_embeddings.weight", &[10, 4]),
            ("bert.embeddings.position_ids", &[1, 8]),
            ("classifier.weight", &[2, 4]),
            ("module.bn.running_mean", &[4]),
            ("module.bn.num_batches_tracked", &[]),
            ("bert.pooler.dense.weight", &[4, 4]),
        ]);
        let rules = ImportRules {
            unused_prefixes: vec!["pooler.".into()],
            ..Default::default()
        };
        let m = match_names(&ours, &file, &rules);
        assert!(m.is_complete(), "{}", m.describe());
        assert_eq!(m.pairs.len(), 3);
        assert_eq!(m.ignored.len(), 3);
        // old BERT checkpoints name LayerNorm's scale and shift gamma and beta
        let ln = shapes(&[
            ("embeddings.LayerNorm.weight", &[4]),
            ("embeddings.LayerNorm.bias", &[4]),
        ]);
        let old = shapes(&[
            ("bert.embeddings.LayerNorm.gamma", &[4]),
            ("bert.embeddings.LayerNorm.beta", &[4]),
        ]);
        let m = match_names(&ln, &old, &ImportRules::default());
        assert!(m.is_complete(), "{}", m.describe());
        // without the rule the pooler is unexpected
        let m = match_names(&ours, &file, &ImportRules::default());
        assert_eq!(
            m.unexpected,
            [("bert.pooler.dense.weight".to_string(), vec![4, 4])]
        );
    }

    #[test]
    fn missing_unexpected_and_mismatched_are_all_listed() {
        let ours = shapes(&[("a.weight", &[3, 2]), ("a.bias", &[3]), ("b.weight", &[4])]);
        let file = shapes(&[
            ("a.weight", &[2, 3]),
            ("b.weight", &[4]),
            ("c.weight", &[1]),
        ]);
        let m = match_names(&ours, &file, &ImportRules::default());
        assert!(!m.is_complete());
        let d = m.describe();
        assert!(
            d.contains("1 missing key") && d.contains("`a.bias` [3]"),
            "{d}"
        );
        assert!(
            d.contains("1 unexpected key") && d.contains("`c.weight` [1]"),
            "{d}"
        );
        assert!(
            d.contains("`a.weight`: the model expects [3, 2], the file has [2, 3]"),
            "{d}"
        );
        assert_eq!(m.pairs, [("b.weight".to_string(), "b.weight".to_string())]);
    }

    #[test]
    fn sequential_names_map_in_numeric_order_or_explain_why_not() {
        let ours = shapes(&[
            ("fc1.weight", &[4, 2]),
            ("fc1.bias", &[4]),
            ("fc2.weight", &[4, 4]),
            ("fc2.bias", &[4]),
            ("fc3.weight", &[1, 4]),
            ("fc3.bias", &[1]),
        ]);
        // 10 sorts before 2 as text, not as a number
        let file = shapes(&[
            ("1.weight", &[4, 2]),
            ("1.bias", &[4]),
            ("3.weight", &[4, 4]),
            ("3.bias", &[4]),
            ("10.weight", &[1, 4]),
            ("10.bias", &[1]),
        ]);
        let layers = ImportRules {
            sequential: Some(vec!["fc1".into(), "fc2".into(), "fc3".into()]),
            ..Default::default()
        };
        let m = match_names(&ours, &file, &layers);
        assert!(m.is_complete(), "{}", m.describe());
        assert!(m
            .pairs
            .contains(&("fc3.weight".to_string(), "10.weight".to_string())));
        // not sequential: nothing maps, and nothing is guessed
        assert_eq!(
            match_names(&ours, &file, &ImportRules::default())
                .pairs
                .len(),
            0
        );
        // one module too many: a hint names both counts
        let mut more = file.clone();
        more.insert("12.weight".into(), vec![1]);
        let m = match_names(&ours, &more, &layers);
        let d = m.describe();
        assert!(
            d.contains("4 modules holding parameters (1, 3, 10, 12)")
                && d.contains("3 layers (fc1, fc2, fc3)"),
            "{d}"
        );
    }

    #[test]
    fn files_are_told_apart_by_their_bytes() {
        let dir = std::env::temp_dir().join(format!("distill-sd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.pt");
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        candle_core::safetensors::save(&[("w".to_string(), t)].into_iter().collect(), &p).unwrap();
        // safetensors under a .pt name reads as safetensors, f16 as f32
        let sd = read_state_dict(&p).unwrap();
        assert_eq!(sd["w"].dtype(), DType::F32);
        assert_eq!(sd["w"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        std::fs::write(&p, b"\x80\x02\x8a\x0alegacy").unwrap();
        let e = read_state_dict(&p).unwrap_err().to_string();
        assert!(e.contains("w.pt") && e.contains("legacy"), "{e}");
        std::fs::write(&p, b"hello").unwrap();
        let e = read_state_dict(&p).unwrap_err().to_string();
        assert!(e.contains("neither safetensors nor"), "{e}");
        let e = read_state_dict(&dir.join("none.pth"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.pth") && e.contains("not found"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
