//! A BERT encoder (Devlin et al. 2019), with every intermediate state exposed (for distillation).
//!
//! Parameter names are Hugging Face's `BertModel` names (`embeddings.word_embeddings.weight`,
//! `encoder.layer.0.attention.self.query.weight`, ...), so a pretrained `model.safetensors` loads as is, and a
//! student can take a subset of a teacher's layers (DistilBERT's initialisation) by renaming them.
//!
//! The input is `[B, T]` token ids (u32, or f32 holding integers); id 0 (`[PAD]`) is padding, masked out of
//! attention and of mean pooling. Token types are all 0 (single sentences).

use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{dropout, Embedding, LayerNorm, Linear, LinearConfig, LinearInit};
use crate::{ops::softmax_last, Error, Mode, Result};

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

/// BERT's dense layer: `Linear` with weights `N(0, 0.02)` and a zero bias (unless `vb` holds them).
pub fn dense(inp: usize, out: usize, vb: VarBuilder) -> Result<Linear> {
    Linear::new(
        &LinearConfig::new(inp, out).with_init(LinearInit::Normal { std: 0.02 }),
        vb,
    )
}

pub(crate) struct Embeddings {
    pub(crate) word: Embedding,
    pub(crate) position: Embedding,
    pub(crate) token_type: Embedding,
    pub(crate) norm: LayerNorm,
}

/// One transformer encoder layer (post-LayerNorm, as BERT): self-attention, then the feed-forward block.
/// Names (under `encoder.layer.N`): `attention.self.{query,key,value}`, `attention.output.dense`,
/// `attention.output.LayerNorm`, `intermediate.dense`, `output.dense`, `output.LayerNorm`.
pub struct BertLayer {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) attn_norm: LayerNorm,
    pub(crate) inter: Linear,
    pub(crate) out: Linear,
    pub(crate) out_norm: LayerNorm,
    pub(crate) heads: usize,
    p_hidden: f64,
    p_attn: f64,
}

impl BertLayer {
    /// The layer of `cfg`'s shape under `vb` (e.g. `encoder.layer.0`).
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let a = vb.pp("attention");
        Ok(Self {
            query: dense(h, h, a.pp("self.query"))?,
            key: dense(h, h, a.pp("self.key"))?,
            value: dense(h, h, a.pp("self.value"))?,
            attn_out: dense(h, h, a.pp("output.dense"))?,
            attn_norm: LayerNorm::new(h, cfg.layer_norm_eps, a.pp("output.LayerNorm"))?,
            inter: dense(h, cfg.intermediate_size, vb.pp("intermediate.dense"))?,
            out: dense(cfg.intermediate_size, h, vb.pp("output.dense"))?,
            out_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            p_hidden: cfg.hidden_dropout_prob,
            p_attn: cfg.attention_probs_dropout_prob,
        })
    }

    /// The layer over `x` `[B, T, H]` with the additive attention `bias` `[B, 1, 1, T]`; returns the new
    /// states and the attention probabilities `[B, heads, T, T]` (before dropout). Dropout masks are drawn
    /// from `mode` and `salt`.
    pub fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        mode: Mode,
        salt: &str,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, h) = x.dims3()?;
        let heads = self.heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let probs = softmax_last(&scores)?;
        let dropped = dropout(&probs, self.p_attn, mode, &format!("{salt}.attn"))?;
        let ctx = dropped
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h))?;
        let a = dropout(
            &self.attn_out.forward(&ctx)?,
            self.p_hidden,
            mode,
            &format!("{salt}.ao"),
        )?;
        let a = self.attn_norm.forward(&(a + x)?)?;
        let f = self.inter.forward(&a)?.gelu_erf()?;
        let f = dropout(
            &self.out.forward(&f)?,
            self.p_hidden,
            mode,
            &format!("{salt}.ff"),
        )?;
        Ok((self.out_norm.forward(&(f + &a)?)?, probs))
    }
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
    pub(crate) emb: Embeddings,
    pub(crate) layers: Vec<BertLayer>,
}

impl Bert {
    /// Builds the encoder from `vb` (parameters named as in Hugging Face's `BertModel`).
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let ev = vb.pp("embeddings");
        let emb = Embeddings {
            word: Embedding::new(cfg.vocab_size, h, 0.02, ev.pp("word_embeddings"))?,
            position: Embedding::new(
                cfg.max_position_embeddings,
                h,
                0.02,
                ev.pp("position_embeddings"),
            )?,
            token_type: Embedding::new(
                cfg.type_vocab_size,
                h,
                0.02,
                ev.pp("token_type_embeddings"),
            )?,
            norm: LayerNorm::new(h, cfg.layer_norm_eps, ev.pp("LayerNorm"))?,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::new(cfg, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
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

        let table = |x: &Tensor| {
            if self.freeze_embeddings {
                x.detach()
            } else {
                x.clone()
            }
        };
        let words = table(self.emb.word.weight())
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = table(self.emb.position.weight())
            .narrow(0, 0, t)?
            .unsqueeze(0)?;
        let typ = table(self.emb.token_type.weight())
            .narrow(0, 0, 1)?
            .unsqueeze(0)?;
        let x = words.broadcast_add(&pos)?.broadcast_add(&typ)?;
        let x = self.emb.norm.forward(&x)?;
        let mut x = dropout(&x, p_hidden, mode, &format!("{salt}.emb"))?;
        if self.freeze_layers > 0 {
            x = x.detach();
        }

        // Additive attention bias: 0 for real keys, -10000 for padding (BERT's own constant).
        let bias = ((mask.clone() - 1.0)? * 10000.0)?.reshape((b, 1, 1, t))?;
        let mut hidden = vec![x.clone()];
        let mut attentions = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let (y, probs) = l.forward(&x, &bias, mode, &format!("{salt}.{i}"))?;
            attentions.push(probs);
            x = y;
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
