//! What a network returns (logits and named intermediate features) and what it is fed (a batch).

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::{Error, Result};

/// The layout of an intermediate feature, so feature losses can check compatibility before training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// `[B, D]`: a vector per sample (penultimate layer, pooled embedding).
    Vector,
    /// `[B, C, H, W]`: a convolutional feature map.
    Map,
    /// `[B, T, D]`: a sequence of hidden states.
    Sequence,
    /// `[N, D]`: one vector per graph node.
    Nodes,
    /// `[B, H, T, T]`: attention probabilities.
    Attention,
}

impl FeatureKind {
    /// Number of dimensions a tensor of this kind has.
    pub fn rank(self) -> usize {
        match self {
            FeatureKind::Vector | FeatureKind::Nodes => 2,
            FeatureKind::Sequence => 3,
            FeatureKind::Map | FeatureKind::Attention => 4,
        }
    }
}

/// A named intermediate activation exposed for feature-based distillation.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Its layout.
    pub kind: FeatureKind,
    /// The activation.
    pub tensor: Tensor,
}

impl Feature {
    /// A feature, checking that the tensor's rank matches `kind`.
    pub fn new(kind: FeatureKind, tensor: Tensor) -> Result<Self> {
        if tensor.rank() != kind.rank() {
            return Err(Error::Shape(format!(
                "a {kind:?} feature must have rank {}, got shape {:?}",
                kind.rank(),
                tensor.dims()
            )));
        }
        Ok(Self { kind, tensor })
    }
}

/// A network's outputs: logits plus named features (the "taps" that feature losses read).
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `[B, num_classes]` for classification (the task decides the layout otherwise).
    pub logits: Tensor,
    /// Intermediate features by name, e.g. `"hidden1"`, `"layer3"`, `"penultimate"`.
    pub features: BTreeMap<String, Feature>,
}

impl Outputs {
    /// Outputs with logits only.
    pub fn logits(logits: Tensor) -> Self {
        Self {
            logits,
            features: BTreeMap::new(),
        }
    }

    /// Adds a feature (builder style).
    pub fn with_feature(mut self, name: &str, kind: FeatureKind, tensor: Tensor) -> Result<Self> {
        self.features
            .insert(name.to_string(), Feature::new(kind, tensor)?);
        Ok(self)
    }

    /// The feature called `name`, or an error listing those that exist.
    pub fn feature(&self, name: &str) -> Result<&Feature> {
        self.features.get(name).ok_or_else(|| Error::Unknown {
            what: "feature",
            name: name.to_string(),
            known: self.features.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The same outputs cut off from the autograd graph (a frozen teacher's outputs).
    pub fn detach(&self) -> Self {
        Self {
            logits: self.logits.detach(),
            features: self
                .features
                .iter()
                .map(|(k, f)| {
                    (
                        k.clone(),
                        Feature {
                            kind: f.kind,
                            tensor: f.tensor.detach(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// One mini-batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Model input, e.g. `[B, 1, 28, 28]` f32.
    pub inputs: Tensor,
    /// Targets, e.g. `[B]` u32 class indices.
    pub targets: Tensor,
    /// Index of each sample in its split (used to look up cached teacher outputs).
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}
