//! Text networks: a BERT encoder with a pooling step and, for classification, a linear head.
//!
//! A recipe's `model` table:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `arch` | `"bert"` | required |
//! | `base` | pretrained model folder under the models dir: its `config.json` gives the shape, its `model.safetensors` (or `pytorch_model.bin`) the weights, of a Hugging Face `BertModel` or `BertForSequenceClassification` (`bert.` prefix or not) | `"all-MiniLM-L6-v2"` |
//! | `init` | `"pretrained"` (weights from `base`) or `"random"` (BERT's N(0, 0.02)) | `"pretrained"` |
//! | `layers`, `hidden`, `heads`, `intermediate` | override `base`'s shape (a pretrained init needs `base`'s number of heads; a smaller `intermediate` or `hidden` keeps the largest-norm units, magnitude width pruning: see [`bert::preload`]) | `base`'s |
//! | `init_layers` | which of `base`'s layers a pretrained student takes, e.g. `[0, 2, 4]` | evenly spaced: `⌊i·L/l⌋` |
//! | `pooling` | `"mean"` (over real tokens), `"cls"`, or `"pooler"` (Hugging Face's `BertForSequenceClassification` head: the `[CLS]` state through `pooler.dense` and tanh, then dropout and `classifier`) | `"mean"` |
//! | `dropout` | hidden and attention dropout | `base`'s (0.1) |
//! | `freeze_layers` | also keep the embeddings and the first N pretrained layers fixed (no backward below them) | `0` |
//! | `freeze_embeddings` | keep the pretrained word/position/type tables fixed (they are half of MiniLM's parameters) | `false` |
//!
//! With `init = "pretrained"` the network also takes `base`'s `pooler.dense` (with `pooling = "pooler"`) and
//! `classifier` (for a classification task) when the checkpoint has them in the shapes it needs: a fine-tuned
//! Hugging Face classifier then gives its own logits. A checkpoint loaded through `teacher.pretrained` /
//! `student.pretrained` may hold a pooler or a classifier that the network leaves out by configuration
//! (mean or CLS pooling, an embedding task): those are ignored, not unexpected ([`Network::import_rules`]).
//!
//! Outputs: `logits` (`[B, classes]`, or `[B, 2·H]` pair embeddings for a similarity task), and the features
//! `embeddings`, `hidden.1` … `hidden.L` (`[B, T, H]` sequences), `attn.1` … `attn.L` (`[B, heads, T, T]`),
//! `cls.0` … `cls.L` (each layer's `[CLS]` state, `[B, H]`), `pooled` (`[B, H]`) and `token_mask` (`[B, T]`,
//! 1 for real tokens).

pub mod bert;
mod onnx;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_core::{Error, FeatureKind, Mode, Network, Outputs, Result};
use distill_nn::init::seeded_var_builder;
use serde::Deserialize;

use bert::{
    dense, mean_pool, preload, preload_head, read_pretrained, shape_error, Bert, BertConfig,
};
use distill_nn::layers::Linear as Dense;
use distill_nn::state_dict::weights_file;

/// Architectures this plugin builds.
pub const ARCHS: &[&str] = &["bert"];

/// The `pooling` choices.
pub const POOLINGS: &[&str] = &["mean", "cls", "pooler"];

/// A recipe's `model` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `"bert"`.
    pub arch: String,
    /// Pretrained model folder (relative to the models dir, or absolute).
    #[serde(default = "default_base")]
    pub base: PathBuf,
    /// `"pretrained"` or `"random"`.
    #[serde(default = "default_init")]
    pub init: String,
    /// Number of layers.
    pub layers: Option<usize>,
    /// Hidden width.
    pub hidden: Option<usize>,
    /// Attention heads.
    pub heads: Option<usize>,
    /// Feed-forward width.
    pub intermediate: Option<usize>,
    /// Teacher layers a pretrained student starts from.
    pub init_layers: Option<Vec<usize>>,
    /// `"mean"`, `"cls"` or `"pooler"`.
    #[serde(default = "default_pooling")]
    pub pooling: String,
    /// Dropout probability (hidden and attention).
    pub dropout: Option<f64>,
    /// Keep the (pretrained) embedding tables fixed.
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// Keep the embeddings and the first N (pretrained) layers fixed.
    #[serde(default)]
    pub freeze_layers: usize,
}

fn default_base() -> PathBuf {
    PathBuf::from("all-MiniLM-L6-v2")
}
fn default_init() -> String {
    "pretrained".into()
}
fn default_pooling() -> String {
    "mean".into()
}

/// What the network's output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A linear classifier over the pooled state.
    Classify(usize),
    /// The pooled embedding itself (pairs come as `[B, 2, T]` and leave as `[B, 2·H]`).
    Embed,
}

impl ModelSpec {
    /// Parses a `model` table.
    pub fn parse(model: &toml::Table) -> Result<Self> {
        let s: Self = model
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| Error::config("model", e.message().trim().to_string()))?;
        s.check()
    }

    /// Checks the values serde cannot (architecture, init, combinations).
    pub fn check(self) -> Result<Self> {
        let s = self;
        if !ARCHS.contains(&s.arch.as_str()) {
            return Err(Error::Unknown {
                what: "text architecture",
                name: s.arch,
                known: ARCHS.join(", "),
            });
        }
        if !["pretrained", "random"].contains(&s.init.as_str()) {
            return Err(Error::config(
                "model.init",
                format!("`{}` is not one of: pretrained, random", s.init),
            ));
        }
        if s.freeze_embeddings && s.init != "pretrained" {
            return Err(Error::config(
                "model.freeze_embeddings",
                "only makes sense with init = \"pretrained\" (random tables would stay random)",
            ));
        }
        if s.freeze_layers > 0 && s.init != "pretrained" {
            return Err(Error::config(
                "model.freeze_layers",
                "only makes sense with init = \"pretrained\"",
            ));
        }
        if !POOLINGS.contains(&s.pooling.as_str()) {
            return Err(Error::config(
                "model.pooling",
                format!("`{}` is not one of: {}", s.pooling, POOLINGS.join(", ")),
            ));
        }
        Ok(s)
    }

    /// The encoder's shape: `base`'s config with this spec's overrides.
    pub fn config(&self, models_dir: &Path) -> Result<(BertConfig, PathBuf)> {
        let base = models_dir.join(&self.base); // an absolute path stays as it is
        let mut cfg = BertConfig::from_file(&base.join("config.json"))?;
        let pretrained_widths = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.intermediate_size,
        );
        if let Some(l) = self.layers {
            cfg.num_hidden_layers = l;
        }
        if let Some(h) = self.hidden {
            cfg.hidden_size = h;
        }
        if let Some(h) = self.heads {
            cfg.num_attention_heads = h;
        }
        if let Some(i) = self.intermediate {
            cfg.intermediate_size = i;
        }
        if let Some(p) = self.dropout {
            cfg.hidden_dropout_prob = p;
            cfg.attention_probs_dropout_prob = p;
        }
        cfg.validate("model")?;
        if self.init == "pretrained"
            && (cfg.num_attention_heads != pretrained_widths.1
                || cfg.hidden_size > pretrained_widths.0
                || cfg.intermediate_size > pretrained_widths.2)
        {
            return Err(Error::config(
                "model",
                format!(
                    "init = \"pretrained\" needs {}'s number of heads ({}) and at most its hidden size ({}) and \
                     intermediate size ({}); a smaller width keeps its largest-norm units. Use init = \"random\" \
                     for another shape",
                    self.base.display(),
                    pretrained_widths.1,
                    pretrained_widths.0,
                    pretrained_widths.2
                ),
            ));
        }
        Ok((cfg, base))
    }
}

/// The teacher layers a pretrained `l`-layer student takes from an `big`-layer model by default.
pub fn default_init_layers(l: usize, big: usize) -> Vec<usize> {
    (0..l).map(|i| i * big / l.max(1)).collect()
}

/// How token states become one vector per sentence.
enum Pooling {
    /// The mean over real tokens.
    Mean,
    /// The `[CLS]` state.
    Cls,
    /// The `[CLS]` state through `pooler.dense` and tanh (Hugging Face's `BertPooler`).
    Pooler(Dense),
}

/// A BERT encoder, pooling and head.
pub struct TextNet {
    bert: Bert,
    head: Option<Dense>,
    kind: Head,
    pooling: Pooling,
    varmap: VarMap,
    desc: String,
}

/// Builds a text network from `spec` for `head`, parameters initialised from `seed` (and `base`'s weights
/// for a pretrained init).
pub fn build_model(
    spec: &ModelSpec,
    head: Head,
    models_dir: &Path,
    seed: u64,
    device: &Device,
) -> Result<TextNet> {
    let (cfg, base) = spec.config(models_dir)?;
    let varmap = VarMap::new();
    let mut weights = base.join("model.safetensors");
    let mut head_from = Vec::new();
    if spec.init == "pretrained" {
        weights = weights_file(&base).map_err(|_| {
            Error::data(
                &weights,
                "not found, nor pytorch_model.bin beside it (model.init = \"pretrained\" reads the weights of \
                 model.base from the models dir: --models-dir or $DISTILL_MODELS)",
            )
        })?;
        let tensors = read_pretrained(&weights)?;
        let base_layers = tensors
            .keys()
            .filter_map(|k| {
                k.strip_prefix("encoder.layer.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        let layers = spec
            .init_layers
            .clone()
            .unwrap_or_else(|| default_init_layers(cfg.num_hidden_layers, base_layers));
        preload(&varmap, &tensors, &cfg, &layers, &weights, device)?;
        let classes = match head {
            Head::Classify(c) => Some(c),
            Head::Embed => None,
        };
        head_from = preload_head(
            &varmap,
            &tensors,
            cfg.hidden_size,
            spec.pooling == "pooler",
            classes,
            device,
        )?;
    } else if spec.init_layers.is_some() {
        return Err(Error::config(
            "model.init_layers",
            "only applies to init = \"pretrained\"",
        ));
    }
    let vb = seeded_var_builder(&varmap, seed, device);
    let bert = Bert::new(&cfg, vb.clone())
        .map_err(|e| {
            if spec.init == "pretrained" {
                shape_error(&weights, e)
            } else {
                e
            }
        })?
        .freeze_embeddings(spec.freeze_embeddings)
        .freeze_layers(spec.freeze_layers);
    if spec.freeze_layers >= cfg.num_hidden_layers {
        return Err(Error::config(
            "model.freeze_layers",
            format!(
                "freezes {} of {} layers: nothing would train but the head",
                spec.freeze_layers, cfg.num_hidden_layers
            ),
        ));
    }
    let head_layer = match head {
        Head::Classify(c) => Some(dense(cfg.hidden_size, c, vb.pp("classifier"))?),
        Head::Embed => None,
    };
    let pooling = match spec.pooling.as_str() {
        "cls" => Pooling::Cls,
        "pooler" => Pooling::Pooler(dense(
            cfg.hidden_size,
            cfg.hidden_size,
            vb.pp("pooler.dense"),
        )?),
        _ => Pooling::Mean,
    };
    let enc_params = cfg.embedding_params() + cfg.layer_params();
    let desc = format!(
        "bert {}L-{}H-{}A-{}I{} ({:.1}M encoder params, {:.1}M in layers), {} pooling, {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        if spec.init == "pretrained" {
            let head = if head_from.is_empty() {
                String::new()
            } else {
                format!(" with its {}", head_from.join(" and "))
            };
            format!(" from {}{head}", spec.base.display())
        } else {
            String::new()
        },
        enc_params as f64 / 1e6,
        cfg.layer_params() as f64 / 1e6,
        spec.pooling,
        match head {
            Head::Classify(c) => format!("{c}-way classifier"),
            Head::Embed => "sentence embedding".into(),
        }
    );
    Ok(TextNet {
        bert,
        head: head_layer,
        kind: head,
        pooling,
        varmap,
        desc,
    })
}

impl TextNet {
    /// The encoder.
    pub fn encoder(&self) -> &Bert {
        &self.bert
    }
}

impl Network for TextNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<Outputs> {
        // Pairs [B, 2, T] run as 2B sentences and leave as [B, 2·H].
        let (ids, pairs) = match (input.rank(), self.kind) {
            (2, _) => (input.clone(), None),
            (3, Head::Embed) => {
                let (b, two, t) = input.dims3()?;
                if two != 2 {
                    return Err(Error::Shape(format!(
                        "sentence pairs must be [batch, 2, tokens], got {:?}",
                        input.dims()
                    )));
                }
                (input.reshape((b * 2, t))?, Some(b))
            }
            _ => {
                return Err(Error::Shape(format!(
                    "a text classifier takes [batch, tokens] ids, got {:?}",
                    input.dims()
                )))
            }
        };
        let enc = self.bert.forward(&ids, mode, "bert")?;
        let last = enc.hidden.last().expect("at least the embeddings");
        let pooled = match &self.pooling {
            Pooling::Mean => mean_pool(last, &enc.mask)?,
            Pooling::Cls => last.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Pooler(d) => d.forward(&last.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?,
        };
        let logits = match (&self.head, pairs) {
            (Some(h), _) => {
                let p = distill_nn::layers::dropout(
                    &pooled,
                    self.bert.config().hidden_dropout_prob,
                    mode,
                    "head",
                )?;
                h.forward(&p)?
            }
            (None, Some(b)) => pooled.reshape((b, 2 * self.bert.config().hidden_size))?,
            (None, None) => pooled.clone(),
        };
        let mut out = Outputs::logits(logits)
            .with_feature("pooled", FeatureKind::Vector, pooled)?
            .with_feature("token_mask", FeatureKind::Vector, enc.mask.clone())?
            .with_feature("embeddings", FeatureKind::Sequence, enc.hidden[0].clone())?;
        for (i, h) in enc.hidden.iter().enumerate() {
            if i > 0 {
                out = out.with_feature(&format!("hidden.{i}"), FeatureKind::Sequence, h.clone())?;
            }
            out = out.with_feature(
                &format!("cls.{i}"),
                FeatureKind::Vector,
                h.narrow(1, 0, 1)?.squeeze(1)?,
            )?;
        }
        for (i, a) in enc.attentions.into_iter().enumerate() {
            out = out.with_feature(&format!("attn.{}", i + 1), FeatureKind::Attention, a)?;
        }
        Ok(out)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn flops(&self) -> u64 {
        // Per sentence of 32 tokens (SST-2 sentences average about 25).
        self.bert.config().flops_per_token(32) * 32
    }

    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> Result<()> {
        self.emit_onnx(g)
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }

    /// A Hugging Face checkpoint's pooler and classifier are ignored when this network has none (mean or
    /// CLS pooling; a sentence-embedding head), and so are BERT's pre-training heads (`cls.predictions`,
    /// `cls.seq_relationship`, in `bert-base-uncased`'s own checkpoint).
    fn import_rules(&self) -> distill_core::network::ImportRules {
        let mut unused = vec!["cls.".to_string()];
        if !matches!(self.pooling, Pooling::Pooler(_)) {
            unused.push("pooler.".to_string());
        }
        if self.head.is_none() {
            unused.push("classifier.".to_string());
        }
        distill_core::network::ImportRules {
            unused_prefixes: unused,
            ..Default::default()
        }
    }
}
