//! The BERT encoder is [`distill_nn::layers::bert`] (Hugging Face's names, so a pretrained
//! `model.safetensors` or `pytorch_model.bin` loads as is); this module reads pretrained weights (and a
//! fine-tuned model's pooler and classifier) and initialises students from a teacher's layers (DistilBERT's
//! initialisation, with magnitude width pruning).

use std::{collections::BTreeMap, path::Path};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use distill_core::{Error, Result};
pub use distill_nn::layers::bert::{dense, mean_pool, Bert, BertConfig, EncoderOutput, PAD_ID};

/// Reads the tensors of a Hugging Face BERT checkpoint (`model.safetensors` or `pytorch_model.bin` of a
/// `BertModel` or `BertFor…` model, or a folder holding one), as `f32`, dropping the `bert.` prefix of the
/// task models' encoder keys and reading old checkpoints' `LayerNorm.gamma` / `.beta` as `.weight` / `.bias`.
pub fn read_pretrained(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let raw = distill_core::network::read_checkpoint(path)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let k = k.strip_prefix("bert.").unwrap_or(&k);
            let k = match k.rsplit_once('.') {
                Some((stem, "gamma")) if stem.ends_with("LayerNorm") => format!("{stem}.weight"),
                Some((stem, "beta")) if stem.ends_with("LayerNorm") => format!("{stem}.bias"),
                _ => k.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// Puts a checkpoint's task head into `varmap` before the network is built: `pooler.dense` (when `pooler`)
/// and `classifier` (when `classes` is some), each only when the checkpoint has it in the shapes the network
/// needs (hidden width `hidden`). Returns the names of the parts taken.
pub fn preload_head(
    varmap: &VarMap,
    tensors: &BTreeMap<String, Tensor>,
    hidden: usize,
    pooler: bool,
    classes: Option<usize>,
    device: &Device,
) -> Result<Vec<&'static str>> {
    let mut parts: Vec<(&'static str, [usize; 2])> = Vec::new();
    if pooler {
        parts.push(("pooler.dense", [hidden, hidden]));
    }
    if let Some(c) = classes {
        parts.push(("classifier", [c, hidden]));
    }
    let mut taken = Vec::new();
    let mut data = varmap.data().lock().expect("varmap lock");
    for (part, [out, inp]) in parts {
        let (w, b) = (format!("{part}.weight"), format!("{part}.bias"));
        let fits = tensors.get(&w).is_some_and(|t| t.dims() == [out, inp])
            && tensors.get(&b).is_some_and(|t| t.dims() == [out]);
        if fits {
            for k in [w, b] {
                let t = tensors[&k].to_dtype(DType::F32)?.to_device(device)?;
                data.insert(k, Var::from_tensor(&t)?);
            }
            taken.push(part);
        }
    }
    Ok(taken)
}

/// Puts the encoder parameters of a pretrained model into `varmap` before the network is built, so the
/// builder finds them instead of initialising new ones. Student layer `i` takes teacher layer
/// `layers[i]` (DistilBERT's "every other layer" is `[0, 2, 4]` of a 6-layer teacher).
///
/// A student narrower than the source keeps the source's most important units (magnitude width pruning,
/// original order kept):
/// - a smaller `intermediate_size`: per layer, the feed-forward neurons with the largest ‖w_in‖·‖w_out‖;
/// - a smaller `hidden_size` (same number of heads): the residual dimensions with the largest summed |γ| over
///   the LayerNorms of the embeddings and of the taken layers, in every tensor that reads or writes the
///   residual stream; and per layer and head, the query/key dimensions with the largest ‖w_q‖·‖w_k‖ and the
///   value dimensions with the largest ‖w_v‖·‖w_o‖.
///
/// Other shapes must match `cfg` (the build then reports a mismatch). Returns how many tensors were taken.
pub fn preload(
    varmap: &VarMap,
    tensors: &BTreeMap<String, Tensor>,
    cfg: &BertConfig,
    layers: &[usize],
    source: &Path,
    device: &Device,
) -> Result<usize> {
    if layers.len() != cfg.num_hidden_layers {
        return Err(Error::config(
            "model.init_layers",
            format!(
                "lists {} teacher layers for a {}-layer model",
                layers.len(),
                cfg.num_hidden_layers
            ),
        ));
    }
    // (source name, student name, source layer, name within the layer or the embeddings)
    let mut wanted: Vec<(String, String, Option<usize>, String)> = Vec::new();
    for k in tensors.keys() {
        if let Some(rest) = k.strip_prefix("embeddings.") {
            if rest != "position_ids" && rest != "token_type_ids" {
                wanted.push((k.clone(), k.clone(), None, rest.to_string()));
            }
        }
    }
    for (i, &src) in layers.iter().enumerate() {
        let from = format!("encoder.layer.{src}.");
        let n0 = wanted.len();
        for k in tensors.keys() {
            if let Some(rest) = k.strip_prefix(&from) {
                let dst = format!("encoder.layer.{i}.{rest}");
                wanted.push((k.clone(), dst, Some(src), rest.to_string()));
            }
        }
        if wanted.len() == n0 {
            return Err(Error::data(
                source,
                format!("has no layer {src} (asked for by model.init_layers)"),
            ));
        }
    }
    let get = |name: &str| {
        tensors
            .get(name)
            .ok_or_else(|| Error::data(source, format!("has no tensor {name}")))
    };
    let layer_get = |src: usize, rest: &str| get(&format!("encoder.layer.{src}.{rest}"));
    let base_hidden = get("embeddings.LayerNorm.weight")?.dim(0)?;
    let heads = cfg.num_attention_heads;
    let residual = if cfg.hidden_size < base_hidden {
        let mut score = get("embeddings.LayerNorm.weight")?
            .to_dtype(DType::F32)?
            .abs()?;
        for &src in layers {
            for ln in [
                "attention.output.LayerNorm.weight",
                "output.LayerNorm.weight",
            ] {
                score = (score + layer_get(src, ln)?.to_dtype(DType::F32)?.abs()?)?;
            }
        }
        Some(top_k_per_group(&score.to_vec1()?, 1, cfg.hidden_size)?)
    } else {
        None
    };
    let mut kept: BTreeMap<usize, LayerKeep> = BTreeMap::new();
    for &src in layers {
        let mut keep = LayerKeep::default();
        let w = |rest: &str| layer_get(src, &format!("{rest}.weight"));
        if cfg.intermediate_size < w("intermediate.dense")?.dim(0)? {
            keep.ffn = Some(pair_norm_keep(
                w("intermediate.dense")?,
                w("output.dense")?,
                1,
                cfg.intermediate_size,
            )?);
        }
        if cfg.hidden_size < base_hidden {
            let d = cfg.hidden_size / heads;
            keep.qk = Some(pair_norm_keep(
                w("attention.self.query")?,
                &w("attention.self.key")?.t()?,
                heads,
                d,
            )?);
            keep.vo = Some(pair_norm_keep(
                w("attention.self.value")?,
                w("attention.output.dense")?,
                heads,
                d,
            )?);
        }
        kept.insert(src, keep);
    }
    let mut data = varmap.data().lock().expect("varmap lock");
    for (src, dst, layer, rest) in &wanted {
        let mut t = tensors[src].to_dtype(DType::F32)?;
        let none = LayerKeep::default();
        let k = layer.and_then(|l| kept.get(&l)).unwrap_or(&none);
        let r = residual.as_ref();
        // (dim, kept indices) per tensor; `None` keeps the dimension whole
        let picks: [(usize, Option<&Tensor>); 2] = match (layer.is_some(), rest.as_str()) {
            (false, "LayerNorm.weight" | "LayerNorm.bias") => [(0, r), (1, None)],
            (false, _) => [(1, r), (0, None)],
            (true, "attention.self.query.weight" | "attention.self.key.weight") => {
                [(0, k.qk.as_ref()), (1, r)]
            }
            (true, "attention.self.query.bias" | "attention.self.key.bias") => {
                [(0, k.qk.as_ref()), (1, None)]
            }
            (true, "attention.self.value.weight") => [(0, k.vo.as_ref()), (1, r)],
            (true, "attention.self.value.bias") => [(0, k.vo.as_ref()), (1, None)],
            (true, "attention.output.dense.weight") => [(0, r), (1, k.vo.as_ref())],
            (true, "intermediate.dense.weight") => [(0, k.ffn.as_ref()), (1, r)],
            (true, "intermediate.dense.bias") => [(0, k.ffn.as_ref()), (1, None)],
            (true, "output.dense.weight") => [(0, r), (1, k.ffn.as_ref())],
            // biases and LayerNorms of the residual stream
            (true, _) => [(0, r), (1, None)],
        };
        for (dim, idx) in picks {
            if let Some(idx) = idx {
                if dim < t.rank() {
                    t = t.index_select(idx, dim)?;
                }
            }
        }
        data.insert(dst.clone(), Var::from_tensor(&t.to_device(device)?)?);
    }
    Ok(wanted.len())
}

/// What a narrower student keeps of one source layer (ascending u32 indices; `None`: all).
#[derive(Default)]
struct LayerKeep {
    ffn: Option<Tensor>,
    qk: Option<Tensor>,
    vo: Option<Tensor>,
}

/// Splits the `n` rows of `a` (`[n, _]`, columns of `b`, `[_, n]`) into `groups` equal consecutive blocks
/// (attention heads) and keeps in each the `k` with the largest `‖a[j, :]‖ · ‖b[:, j]‖`: ascending indices
/// into `0..n` (`[groups·k]`, u32).
pub fn pair_norm_keep(a: &Tensor, b: &Tensor, groups: usize, k: usize) -> Result<Tensor> {
    let na = a.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?;
    let nb = b.to_dtype(DType::F32)?.sqr()?.sum(0)?.sqrt()?;
    top_k_per_group(&(na * nb)?.to_vec1()?, groups, k)
}

/// Ascending indices of the `k` largest scores in each of `groups` equal consecutive blocks of `score`
/// (ties: the lower index).
fn top_k_per_group(score: &[f32], groups: usize, k: usize) -> Result<Tensor> {
    let size = score.len() / groups.max(1);
    let mut keep: Vec<u32> = Vec::with_capacity(groups * k);
    for g in 0..groups {
        let mut order: Vec<usize> = (g * size..(g + 1) * size).collect();
        order.sort_by(|&i, &j| score[j].total_cmp(&score[i]).then(i.cmp(&j)));
        keep.extend(order.into_iter().take(k).map(|i| i as u32));
    }
    keep.sort_unstable();
    let n = keep.len();
    Ok(Tensor::from_vec(keep, n, &Device::Cpu)?)
}

/// Checks, after building, that every preloaded tensor had the shape the model asked for: the builder
/// returns an existing variable only when shapes agree, so a mismatch surfaces as a build error; this
/// turns candle's message into one that names the file.
pub fn shape_error(source: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(
        source,
        format!("does not fit the model's shape ({e}); check hidden/heads/intermediate against its config.json"),
    )
}
