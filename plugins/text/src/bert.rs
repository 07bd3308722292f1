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
        if self.hidden_size % self.num_attention_heads != 0 {
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
/// `layers[i]` (DistilBERT's "every other layer" is `[0, 2, 4]` of a 6-layer teacher); shapes must match
/// `cfg`. Returns how many tensors were taken.
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
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (k, _) in tensors.iter().filter(|(k, _)| k.starts_with("embeddings.")) {
        if k != "embeddings.position_ids" {
            wanted.push((k.clone(), k.clone()));
        }
    }
    for (i, &src) in layers.iter().enumerate() {
        let from = format!("encoder.layer.{src}.");
        let n0 = wanted.len();
        for k in tensors.keys().filter(|k| k.starts_with(&from)) {
            wanted.push((k.clone(), format!("encoder.layer.{i}.{}", &k[from.len()..])));
        }
        if wanted.len() == n0 {
            return Err(Error::data(
                source,
                format!("has no layer {src} (asked for by model.init_layers)"),
            ));
        }
    }
    // A narrower feed-forward than the source's keeps, per layer, the neurons with the largest
    // ‖w_in‖·‖w_out‖ (magnitude width pruning, in their original order).
    let mut kept: BTreeMap<usize, Tensor> = BTreeMap::new();
    for &src in layers {
        let w_in = format!("encoder.layer.{src}.intermediate.dense.weight");
        let w_out = format!("encoder.layer.{src}.output.dense.weight");
        let (Some(a), Some(b)) = (tensors.get(&w_in), tensors.get(&w_out)) else {
            continue;
        };
        let width = a.dim(0)?;
        if cfg.intermediate_size < width {
            kept.insert(src, ffn_keep(a, b, cfg.intermediate_size)?);
        }
    }
    let mut data = varmap.data().lock().expect("varmap lock");
    for (src, dst) in &wanted {
        let mut t = tensors[src].to_dtype(DType::F32)?;
        let layer = src
            .strip_prefix("encoder.layer.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(idx) = layer.and_then(|l| kept.get(&l)) {
            let rest = src.splitn(4, '.').nth(3).unwrap_or("");
            t = match rest {
                "intermediate.dense.weight" | "intermediate.dense.bias" => {
                    t.index_select(idx, 0)?
                }
                "output.dense.weight" => t.index_select(idx, 1)?,
                _ => t,
            };
        }
        data.insert(dst.clone(), Var::from_tensor(&t.to_device(device)?)?);
    }
    Ok(wanted.len())
}

/// The `k` feed-forward neurons of a layer with the largest `‖w_in[j, :]‖ · ‖w_out[:, j]‖` (`w_in`
/// `[I, H]`, `w_out` `[H, I]`), as ascending indices (`[k]`, u32).
pub fn ffn_keep(w_in: &Tensor, w_out: &Tensor, k: usize) -> Result<Tensor> {
    let a = w_in.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?;
    let b = w_out.to_dtype(DType::F32)?.sqr()?.sum(0)?.sqrt()?;
    let score: Vec<f32> = (a * b)?.to_vec1()?;
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&i, &j| score[j].total_cmp(&score[i]).then(i.cmp(&j)));
    let mut keep: Vec<u32> = order.into_iter().take(k).map(|i| i as u32).collect();
    keep.sort_unstable();
    Ok(Tensor::new(keep, &Device::Cpu)?)
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
