//! Domain losses of the audio plugin: none. The core ones (kd, ce, dkd, hint, at, sp, rkd) serve: logit KD
//! on the keyword logits, and a FitNets hint through a 1x1 adapter on a time-frequency feature map (see
//! `models` for the feature names).

/// The losses this plugin adds to the core's (none: the core ones serve).
pub const LOSSES: &[&str] = &[];
