//! The files of a phase directory: the training state, checkpoints with their embedded state and checksum
//! (the newest two kept), the resume point that falls back past a checkpoint that fails verification, and the
//! final weights restored from a checkpoint when `model.safetensors` is damaged.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::spec::PhaseSpec;
use crate::{
    checkpoint::{
        read_json, read_safetensors, read_safetensors_with_metadata, verify_safetensors,
        write_json_atomic, write_safetensors_with_metadata,
    },
    network::{load_into_varmap, varmap_tensors},
    report::{EpochRecord, PhaseResult},
    Error, Network, Result,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PhaseState {
    pub(super) epochs_done: usize,
    pub(super) history: Vec<EpochRecord>,
    pub(super) best_epoch: Option<usize>,
    pub(super) best_val: Option<f64>,
    pub(super) bad_epochs: usize,
    pub(super) elapsed_s: f64,
    pub(super) stopped_early: bool,
    /// Learning-rate factor after divergence back-offs (1 without).
    #[serde(default = "one")]
    pub(super) lr_scale: f64,
    /// One line per divergence back-off.
    #[serde(default)]
    pub(super) backoffs: Vec<String>,
    /// The checkpoint file this state belongs to (absent in older state files: `checkpoint.safetensors`).
    #[serde(default)]
    pub(super) checkpoint: Option<String>,
    /// The checkpoint before it, kept as the fallback until a newer one has been written and verified.
    #[serde(default)]
    pub(super) previous: Option<String>,
    /// Hash of the effective recipe the phase was trained with.
    #[serde(default)]
    pub(super) recipe_hash: Option<String>,
}

/// Metadata key under which a checkpoint carries the [`PhaseState`] it was written with, so any kept
/// checkpoint can be resumed from on its own.
const STATE_KEY: &str = "distill.state";

impl PhaseState {
    /// The state of a phase that has not trained yet.
    pub(super) fn fresh(spec: &PhaseSpec) -> Self {
        Self {
            epochs_done: 0,
            history: Vec::new(),
            best_epoch: None,
            best_val: None,
            bad_epochs: 0,
            elapsed_s: 0.0,
            stopped_early: false,
            lr_scale: 1.0,
            backoffs: Vec::new(),
            checkpoint: None,
            previous: None,
            recipe_hash: Some(spec.recipe_hash.clone()).filter(|h| !h.is_empty()),
        }
    }
}

/// The checkpoint file written after `epochs_done` epochs. Each epoch writes a new file (with its state and a
/// checksum in the header), reads it back to verify it, then writes state.json naming it and the previous one
/// (the commit point), then removes older ones: a kill anywhere leaves state.json and the checkpoints it names
/// consistent, and a checkpoint that fails verification on resume falls back to the one before it.
pub fn checkpoint_name(epochs_done: usize) -> String {
    format!("checkpoint-e{epochs_done}.safetensors")
}

fn one() -> f64 {
    1.0
}

/// File names inside a phase directory.
pub mod files {
    /// Rolling checkpoint (weights, adapters, optimiser state) of checkpoints written before state.json named
    /// its checkpoint; today's are `checkpoint-eN.safetensors` (see [`checkpoint_name`](super::checkpoint_name)).
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Rolling training state (epoch, history, early-stopping state).
    pub const STATE: &str = "state.json";
    /// Best-validation weights (with early stopping).
    pub const BEST: &str = "best.safetensors";
    /// Final weights of a finished phase.
    pub const FINAL: &str = "model.safetensors";
    /// Result of a finished phase.
    pub const RESULT: &str = "result.json";
    /// Per-epoch metrics, one JSON object a line.
    pub const METRICS: &str = "metrics.jsonl";
    /// The kept weights' per-example test scores ([`crate::stats::ExampleScores`]), for the paired
    /// bootstrap of the KD gain; absent when the task's metric has none.
    pub const EXAMPLES: &str = crate::stats::EXAMPLES_FILE;
    /// The phases of a run, each a directory of a seed's directory (`seed-N/teacher/`, ...).
    pub const PHASES: [&str; 3] = [
        crate::Phase::Teacher.name(),
        crate::Phase::Scratch.name(),
        crate::Phase::Distilled.name(),
    ];
}

/// Everything a checkpoint holds, under `model.`, `loss{i}.` and `optim.` prefixes.
pub(super) fn checkpoint_tensors(
    net: &dyn Network,
    adapters: &[(usize, &candle_nn::VarMap)],
    optim: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut all = BTreeMap::new();
    for (k, v) in varmap_tensors(net.varmap())? {
        all.insert(format!("model.{k}"), v);
    }
    for (i, vm) in adapters {
        for (k, v) in varmap_tensors(vm)? {
            all.insert(format!("loss{i}.{k}"), v);
        }
    }
    for (k, v) in optim {
        all.insert(format!("optim.{k}"), v.clone());
    }
    Ok(all)
}

/// Loads what [`checkpoint_tensors`] made back into the network, its loss adapters and the optimiser.
pub(super) fn restore(
    all: &BTreeMap<String, Tensor>,
    source: &Path,
    net: &dyn Network,
    adapters: &[(usize, &candle_nn::VarMap)],
    optim: &mut dyn distill_nn::optim::Optimizer,
) -> Result<()> {
    load_into_varmap(net.varmap(), &split_prefix(all, "model."), source)?;
    for (i, vm) in adapters {
        load_into_varmap(vm, &split_prefix(all, &format!("loss{i}.")), source)?;
    }
    optim.load_state(&split_prefix(all, "optim."))
}

pub(super) fn save_checkpoint(
    dir: &Path,
    net: &dyn Network,
    adapters: &[(usize, &candle_nn::VarMap)],
    optim: &BTreeMap<String, Tensor>,
    state: &mut PhaseState,
) -> Result<()> {
    let all = checkpoint_tensors(net, adapters, optim)?;
    let name = checkpoint_name(state.epochs_done);
    let path = dir.join(&name);
    state.previous = state.checkpoint.take().filter(|p| *p != name);
    state.checkpoint = Some(name.clone());
    let mut meta = BTreeMap::new();
    meta.insert(
        STATE_KEY.to_string(),
        serde_json::to_string(state).map_err(|e| Error::msg(e.to_string()))?,
    );
    // the new checkpoint must read back with its checksum before the older ones may go (one rewrite on failure)
    write_safetensors_with_metadata(&all, &meta, &path)?;
    if let Err(first) = verify_safetensors(&path) {
        write_safetensors_with_metadata(&all, &meta, &path)?;
        verify_safetensors(&path).map_err(|e| {
            Error::msg(format!(
                "{e} (written twice; the first attempt failed too: {first}); the earlier checkpoints are kept"
            ))
        })?;
    }
    write_json_atomic(state, &dir.join(files::STATE))?;
    remove_other_checkpoints(dir, &[Some(name.as_str()), state.previous.as_deref()]);
    Ok(())
}

/// Removes every checkpoint file in `dir` except those in `keep` (older epochs, or one written after the last
/// state.json by a run that was then killed).
pub(super) fn remove_other_checkpoints(dir: &Path, keep: &[Option<&str>]) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_checkpoint_file(&name) && !keep.contains(&Some(name.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn is_checkpoint_file(name: &str) -> bool {
    name == files::CHECKPOINT
        || (name.starts_with("checkpoint-e") && name.ends_with(".safetensors"))
}

/// The epoch number of a `checkpoint-eN.safetensors` name.
fn checkpoint_epoch(name: &str) -> Option<usize> {
    name.strip_prefix("checkpoint-e")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// A warning on stderr (kept even in quiet mode: it reports a repaired fault).
fn warn(label: &str, msg: &str) {
    eprintln!("warning: [{label}] {msg}");
}

/// Moves a file that failed verification aside as `NAME.corrupt` (kept for inspection, never read again).
fn set_aside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".corrupt");
    let to = path.with_file_name(name);
    match std::fs::rename(path, &to) {
        Ok(()) => to,
        Err(_) => path.to_path_buf(),
    }
}

/// The checkpoint to resume from: the newest that verifies, with the state it was written with. Candidates are
/// the two that state.json names (newest first) or, when state.json cannot be read, every checkpoint in the
/// directory by epoch. A candidate that fails verification is set aside with a warning naming it and the
/// checkpoint used instead; when none verifies the error lists each file and why.
pub(super) fn load_resume_point(
    dir: &Path,
    device: &candle_core::Device,
    label: &str,
) -> Result<(PhaseState, BTreeMap<String, Tensor>, PathBuf)> {
    let recorded: Option<PhaseState> = match read_json(&dir.join(files::STATE)) {
        Ok(s) => Some(s),
        Err(e) => {
            warn(
                label,
                &format!("{e}; looking for the newest checkpoint that verifies"),
            );
            None
        }
    };
    let mut candidates: Vec<String> = match &recorded {
        Some(st) => [
            Some(
                st.checkpoint
                    .clone()
                    .unwrap_or_else(|| files::CHECKPOINT.into()),
            ),
            st.previous.clone(),
        ]
        .into_iter()
        .flatten()
        .collect(),
        None => {
            let mut found: Vec<(usize, String)> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    checkpoint_epoch(&n).map(|k| (k, n))
                })
                .collect();
            found.sort();
            found.into_iter().rev().map(|(_, n)| n).collect()
        }
    };
    candidates.dedup();
    let mut failures: Vec<(PathBuf, String)> = Vec::new();
    for (i, name) in candidates.iter().enumerate() {
        let path = dir.join(name);
        match read_safetensors_with_metadata(&path, device) {
            Ok((tensors, meta)) => {
                let state = match meta.get(STATE_KEY) {
                    Some(js) => {
                        serde_json::from_str::<PhaseState>(js).map_err(|e| Error::Checkpoint {
                            path: path.clone(),
                            msg: format!("its recorded training state is unreadable: {e}"),
                        })?
                    }
                    // a checkpoint from before states were embedded: only the one state.json names
                    None if i == 0 && recorded.is_some() => recorded.clone().expect("checked"),
                    None => {
                        failures.push((path, "it carries no training state".into()));
                        continue;
                    }
                };
                for (bad, why) in &failures {
                    let aside = set_aside(bad);
                    warn(
                        label,
                        &format!(
                            "{} failed verification ({why}); moved aside as {}; resuming from {} (after epoch {})",
                            bad.display(),
                            aside.display(),
                            path.display(),
                            state.epochs_done
                        ),
                    );
                }
                return Ok((state, tensors, path));
            }
            Err(Error::Checkpoint { msg, .. }) => failures.push((path, msg)),
            Err(e) => failures.push((path, e.to_string())),
        }
    }
    let tried: Vec<String> = failures
        .iter()
        .map(|(p, why)| format!("{}: {why}", p.display()))
        .collect();
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        msg: format!(
            "no checkpoint verifies ({}); remove the directory to train this phase again",
            if tried.is_empty() {
                "none found".to_string()
            } else {
                tried.join("; ")
            }
        ),
    })
}

/// Whether a finished phase is to be trained further: the recipe now asks for more epochs than it ran (an
/// extension allowed with `--allow-changed`) and it did not stop early. Asking for fewer epochs is an error, and
/// so is extending a phase that keeps no checkpoint (a teacher reused from the cache).
pub(super) fn extends_finished_phase(
    dir: &Path,
    spec: &PhaseSpec,
    result: &PhaseResult,
) -> Result<bool> {
    let wanted = spec.config.epochs;
    if result.epochs == wanted {
        return Ok(false);
    }
    let state: Option<PhaseState> = read_json(&dir.join(files::STATE)).ok();
    if state.as_ref().is_some_and(|s| s.stopped_early) {
        return Ok(false);
    }
    if result.epochs > wanted {
        return Err(Error::msg(format!(
            "[{}] {} finished after {} epochs; the recipe now asks for {}: a finished phase cannot be \
             shortened (choose another --out)",
            spec.label,
            dir.display(),
            result.epochs,
            wanted
        )));
    }
    if state.is_none() {
        return Err(Error::msg(format!(
            "[{}] {} finished after {} epochs but keeps no checkpoint to continue from (a teacher reused \
             from the cache); remove it to train the phase again with {wanted} epochs",
            spec.label,
            dir.display(),
            result.epochs
        )));
    }
    Ok(true)
}

/// Loads a finished phase's final weights. When `model.safetensors` fails verification they are restored
/// from the best-validation weights (with early stopping) or from the last checkpoint, which hold the same
/// tensors, and the file is written again; a warning names both files.
pub(super) fn load_final_weights(
    dir: &Path,
    net: &dyn Network,
    spec: &PhaseSpec,
    device: &candle_core::Device,
) -> Result<()> {
    let final_path = dir.join(files::FINAL);
    let err = match read_safetensors(&final_path, device) {
        Ok(w) => return load_into_varmap(net.varmap(), &w, &final_path),
        Err(e) => e,
    };
    let (source, weights) = if spec.config.early_stopping.is_some() {
        let p = dir.join(files::BEST);
        let w = read_safetensors(&p, device)
            .map_err(|e2| Error::msg(format!("{err}; the fallback failed too: {e2}")))?;
        (p, w)
    } else {
        let (_, all, p) = load_resume_point(dir, device, &spec.label)
            .map_err(|e2| Error::msg(format!("{err}; the fallback failed too: {e2}")))?;
        (p, split_prefix(&all, "model."))
    };
    load_into_varmap(net.varmap(), &weights, &source)?;
    let aside = set_aside(&final_path);
    warn(
        &spec.label,
        &format!(
            "{err}; moved aside as {}; restored the final weights from {} and wrote {} again",
            aside.display(),
            source.display(),
            final_path.display()
        ),
    );
    crate::network::save_network(net, &final_path)?;
    Ok(())
}

pub(super) fn split_prefix(
    all: &BTreeMap<String, Tensor>,
    prefix: &str,
) -> BTreeMap<String, Tensor> {
    all.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
        .collect()
}
