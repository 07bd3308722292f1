//! The three things every run trains.

use serde::{Deserialize, Serialize};

/// A training phase of a run: each has its own directory (`seed-N/<phase>/`), seed streams and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The teacher (trained on the task, cached or pretrained).
    Teacher,
    /// The student trained alone, the baseline.
    Scratch,
    /// The student trained with the distillation losses.
    Distilled,
}

impl Phase {
    /// Every phase, in the order a run trains them.
    pub const ALL: [Phase; 3] = [Phase::Teacher, Phase::Scratch, Phase::Distilled];

    /// Its name: `teacher`, `scratch` or `distilled` (directory names, report keys, seed-stream labels).
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Teacher => "teacher",
            Phase::Scratch => "scratch",
            Phase::Distilled => "distilled",
        }
    }

    /// The phase named `name`, if any.
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialize_as_names() {
        for p in Phase::ALL {
            assert_eq!(Phase::from_name(p.name()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!(Phase::from_name("student"), None);
    }
}
