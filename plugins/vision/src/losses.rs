//! Domain losses of the image-classification plugin: none. The core ones (kd, ce, dkd, hint, at, sp, rkd)
//! serve: logit KD and DKD on the logits, FitNets hints, attention transfer, similarity preservation and
//! relational KD on the models' named features (see `models`).

/// The losses this plugin adds to the core's (none: the core ones serve).
pub const LOSSES: &[&str] = &[];
