//! What a phase trains on: its objective and its settings.

use std::path::PathBuf;

use crate::{losses::DistillLoss, recipe::PhaseConfig, Phase, Teacher};

/// One weighted term of a training objective.
pub enum Term {
    /// The task's own loss (hard labels).
    Task,
    /// A distillation loss.
    Loss(Box<dyn DistillLoss>),
}

impl Term {
    /// Its name in the report's per-term losses (`task`, `kd`, …).
    pub fn name(&self) -> String {
        match self {
            Term::Task => "task".to_string(),
            Term::Loss(l) => l.name().to_string(),
        }
    }
}

/// What a phase minimises.
pub enum Objective<'a> {
    /// The task loss alone (teacher, scratch student).
    Task,
    /// Weighted distillation terms against a frozen teacher.
    Distill {
        /// The frozen teacher.
        teacher: &'a Teacher,
        /// `(weight, term)` pairs, summed.
        terms: Vec<(f64, Term)>,
    },
}

/// Settings of one phase run.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    /// Which phase.
    pub phase: Phase,
    /// The phase's training config.
    pub config: PhaseConfig,
    /// Run seed.
    pub seed: u64,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Directory for checkpoints, metrics.jsonl and the final weights.
    pub dir: PathBuf,
    /// Continue from a checkpoint in `dir` if there is one.
    pub resume: bool,
    /// No progress output.
    pub quiet: bool,
    /// Label for progress output, e.g. `teacher s0`.
    pub label: String,
    /// Hash of the run's effective recipe ([`crate::run_record::recipe_hash`]), recorded in the phase's state.
    pub recipe_hash: String,
    /// Only read a finished phase back; an unfinished one is an error (`distill bench --collect`).
    pub no_training: bool,
}

impl PhaseSpec {
    /// The phase whose random streams (shuffle, batch order, augmentation, dropout) this phase draws: the
    /// distilled student draws the scratch student's, so the twins (which share their initial weights too)
    /// see the same batches in the same order and differ only in their objective.
    pub fn stream(&self) -> Phase {
        stream_of(self.phase)
    }
}

fn stream_of(phase: Phase) -> Phase {
    match phase {
        Phase::Distilled => Phase::Scratch,
        p => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twins_share_their_streams_and_the_teacher_has_its_own() {
        assert_eq!(stream_of(Phase::Distilled), stream_of(Phase::Scratch));
        assert_ne!(stream_of(Phase::Teacher), stream_of(Phase::Scratch));
    }
}
