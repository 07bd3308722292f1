//! A BERT encoder (Devlin et al. 2019) in candle, with every intermediate state exposed for distillation.
//!
//! Parameter names are Hugging Face's `BertModel` names (`embeddings.word_embeddings.weight`,
//! `encoder.layer.0.attention.self.query.weight`, ...), so a pretrained `model.safetensors` loads as is, and a
//! student can take a subset of a teacher's layers (DistilBERT's initialisation) by renaming them.
//!
//! The input is `[B, T]` token ids (u32, or f32 holding integers); id 0 (`[PAD]`) is padding, masked out of
//! attention and of mean pooling. Token types are all 0 (single sentences).

use std::{collections::BTreeMap, path::Path};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use distill_core::{nn::dropout, Error, Mode, Result};
use serde::{Deserialize, Serialize};

/// Id of `[PAD]` in BERT's uncased vocabulary (and what marks padding in an input batch).
pub const PAD_ID: u32 = 0;

/// An encoder's shape, in the names of Hugging Face's `config.json` (extra keys there are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Longest input (position embeddings).
    pub max_position_embeddings: usize,
    /// Token-type vocabulary (segments).
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    /// Dropout on embeddings and sub-layer outputs.
    #[serde(default = "p01")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "p01")]
    pub attention_probs_dropout_prob: f64,
    /// Activation; only `gelu` (the exact, erf form) is supported.
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

fn two() -> usize {
    2
}
fn ln_eps() -> f64 {
    1e-12
}
fn p01() -> f64 {
    0.1
}
fn gelu() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::data(
                path,
                "not found (model.base names a folder of the models dir: --models-dir or $DISTILL_MODELS; \
                 models/README.md says where to download it)",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("not a BERT config.json: {e}")))?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Checks the shape is usable: widths positive, heads divide the hidden width, a known activation.
    pub fn validate(&self, where_: &str) -> Result<()> {
        let bad = |m: String| Err(Error::config(where_, m));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_attention_heads == 0
            || self.intermediate_size == 0
            || self.max_position_embeddings == 0
            || self.type_vocab_size == 0
        {
            return bad(
                "vocab, hidden, heads, intermediate and max positions must all be positive".into(),
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden size {} is not a multiple of the {} attention heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_act != "gelu" {
            return bad(format!(
                "activation `{}` is not supported (only `gelu`)",
                self.hidden_act
            ));
        }
        for (k, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{k} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    /// Parameters of the embedding layer (word, position and token-type tables plus its LayerNorm).
    pub fn embedding_params(&self) -> usize {
        let h = self.hidden_size;
        (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
    }

    /// Parameters of the transformer layers (`encoder.*` in the state dict).
    pub fn layer_params(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let per_layer = 4 * (h * h + h) + 2 * (h * i) + i + h + 4 * h;
        per_layer * self.num_hidden_layers
    }

    /// Forward multiply-adds ×2 per token of the transformer layers at sequence length `t`.
    pub fn flops_per_token(&self, t: usize) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * t as u64 * h;
        per_layer * self.num_hidden_layers as u64
    }
}

/// A dense layer `y = x Wᵀ + b` over the last dimension (any leading dimensions), weights `[out, in]`.
#[derive(Debug, Clone)]
pub struct Dense {
    w: Tensor,
    b: Tensor,
}

impl Dense {
    /// A layer `inp` → `out` (weights N(0, 0.02), bias 0 unless `vb` already holds them).
    pub fn new(inp: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_with_hints(
            (out, inp),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let b = vb.get_with_hints(out, "bias", Init::Const(0.0))?;
        Ok(Self { w, b })
    }

    /// Applies the layer (one fused node on the CPU: see `distill_core::ops::linear`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        distill_core::ops::linear(x, &self.w, Some(&self.b), false)
    }
}

/// LayerNorm over the last dimension, written with differentiable tensor ops (candle-nn's fused kernel
/// has no backward pass).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        let b = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
        Ok(Self { w, b, eps })
    }

    /// Normalises `x`'s last dimension, then scales and shifts (one fused node on the CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        distill_core::ops::layer_norm(x, &self.w, &self.b, self.eps)
    }
}

/// Softmax over the last dimension (one fused node on the CPU: `distill_core::ops::softmax_last`).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    distill_core::ops::softmax_last(x)
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    inter: Dense,
    out: Dense,
    out_norm: LayerNorm,
}

/// What one forward pass produces.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// The embedding layer's output, then every layer's: `num_layers + 1` tensors `[B, T, H]`.
    pub hidden: Vec<Tensor>,
    /// Every layer's attention probabilities `[B, heads, T, T]`.
    pub attentions: Vec<Tensor>,
    /// `[B, T]` f32: 1 for a real token, 0 for padding.
    pub mask: Tensor,
}

/// The encoder: embeddings and transformer layers (no pooler: pooling is the task head's business).
pub struct Bert {
    cfg: BertConfig,
    freeze_embeddings: bool,
    freeze_layers: usize,
    emb: Embeddings,
    layers: Vec<Layer>,
}

impl Bert {
    /// Builds the encoder from `vb` (parameters named as in Hugging Face's `BertModel`).
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let ev = vb.pp("embeddings");
        let emb = Embeddings {
            word: ev.get_with_hints((cfg.vocab_size, h), "word_embeddings.weight", normal)?,
            position: ev.get_with_hints(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
                normal,
            )?,
            token_type: ev.get_with_hints(
                (cfg.type_vocab_size, h),
                "token_type_embeddings.weight",
                normal,
            )?,
            norm: LayerNorm::new(h, cfg.layer_norm_eps, ev.pp("LayerNorm"))?,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lv = vb.pp(format!("encoder.layer.{i}"));
            let a = lv.pp("attention");
            layers.push(Layer {
                query: Dense::new(h, h, a.pp("self.query"))?,
                key: Dense::new(h, h, a.pp("self.key"))?,
                value: Dense::new(h, h, a.pp("self.value"))?,
                attn_out: Dense::new(h, h, a.pp("output.dense"))?,
                attn_norm: LayerNorm::new(h, cfg.layer_norm_eps, a.pp("output.LayerNorm"))?,
                inter: Dense::new(h, cfg.intermediate_size, lv.pp("intermediate.dense"))?,
                out: Dense::new(cfg.intermediate_size, h, lv.pp("output.dense"))?,
                out_norm: LayerNorm::new(h, cfg.layer_norm_eps, lv.pp("output.LayerNorm"))?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            freeze_embeddings: false,
            freeze_layers: 0,
            emb,
            layers,
        })
    }

    /// Keeps the word, position and token-type tables fixed (no gradient flows into them, so the optimiser
    /// leaves them alone); the embedding LayerNorm still trains.
    pub fn freeze_embeddings(mut self, yes: bool) -> Self {
        self.freeze_embeddings = yes;
        self
    }

    /// Keeps the embeddings and the first `n` layers fixed: no gradient flows below layer `n`, which also
    /// spares their backward pass.
    pub fn freeze_layers(mut self, n: usize) -> Self {
        self.freeze_layers = n;
        self
    }

    /// The encoder's shape.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Runs the encoder over `ids` `[B, T]`; `salt` distinguishes this network's dropout masks.
    pub fn forward(&self, ids: &Tensor, mode: Mode, salt: &str) -> Result<EncoderOutput> {
        let ids = ids.to_dtype(DType::U32)?;
        let (b, t) = ids.dims2().map_err(|_| {
            Error::Shape(format!(
                "a text encoder takes [batch, tokens] ids, got {:?}",
                ids.dims()
            ))
        })?;
        if t > self.cfg.max_position_embeddings {
            return Err(Error::Shape(format!(
                "{t} tokens is longer than the encoder's {} positions (set data.options.max_len)",
                self.cfg.max_position_embeddings
            )));
        }
        let ids_v: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        if let Some(bad) = ids_v.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::Shape(format!(
                "token id {bad} is outside the vocabulary of {} (wrong tokenizer for this model?)",
                self.cfg.vocab_size
            )));
        }
        let mask_v: Vec<f32> = ids_v.iter().map(|&i| (i != PAD_ID) as u8 as f32).collect();
        let mask = Tensor::from_vec(mask_v, (b, t), ids.device())?;
        let h = self.cfg.hidden_size;
        let p_hidden = self.cfg.hidden_dropout_prob;
        let p_attn = self.cfg.attention_probs_dropout_prob;

        let table = |x: &Tensor| {
            if self.freeze_embeddings {
                x.detach()
            } else {
                x.clone()
            }
        };
        let words = table(&self.emb.word)
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = table(&self.emb.position).narrow(0, 0, t)?.unsqueeze(0)?;
        let typ = table(&self.emb.token_type).narrow(0, 0, 1)?.unsqueeze(0)?;
        let x = words.broadcast_add(&pos)?.broadcast_add(&typ)?;
        let x = self.emb.norm.forward(&x)?;
        let mut x = dropout(&x, p_hidden, mode, &format!("{salt}.emb"))?;
        if self.freeze_layers > 0 {
            x = x.detach();
        }

        // Additive attention bias: 0 for real keys, -10000 for padding (BERT's own constant).
        let bias = ((mask.clone() - 1.0)? * 10000.0)?.reshape((b, 1, 1, t))?;
        let heads = self.cfg.num_attention_heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut hidden = vec![x.clone()];
        let mut attentions = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let split = |y: Tensor| -> Result<Tensor> {
                Ok(y.reshape((b, t, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = softmax_last(&scores)?;
            attentions.push(probs.clone());
            let probs = dropout(&probs, p_attn, mode, &format!("{salt}.{i}.attn"))?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, h))?;
            let a = dropout(
                &l.attn_out.forward(&ctx)?,
                p_hidden,
                mode,
                &format!("{salt}.{i}.ao"),
            )?;
            let a = l.attn_norm.forward(&(a + &x)?)?;
            let f = l.inter.forward(&a)?.gelu_erf()?;
            let f = dropout(
                &l.out.forward(&f)?,
                p_hidden,
                mode,
                &format!("{salt}.{i}.ff"),
            )?;
            x = l.out_norm.forward(&(f + &a)?)?;
            if i < self.freeze_layers {
                x = x.detach();
            }
            hidden.push(x.clone());
        }
        Ok(EncoderOutput {
            hidden,
            attentions,
            mask,
        })
    }
}

/// Mean of the token states over real tokens (sentence-transformers' mean pooling): `[B, T, H]` → `[B, H]`.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}

/// Reads the tensors of a Hugging Face BERT `model.safetensors`, dropping a `bert.` prefix if there is one.
pub fn read_pretrained(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let raw = distill_core::checkpoint::read_safetensors(path, &Device::Cpu)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("bert.").unwrap_or(&k).to_string(), v))
        .collect())
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
            if rest != "position_ids" {
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
