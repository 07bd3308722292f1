//! The one training loop: teacher, student from scratch and distilled student all go through [`train_phase`]
//! with the same data order, seeds and budget, so the comparison is fair.
//!
//! Each epoch ends with an atomic checkpoint (weights, optimiser state, history) in the phase's directory;
//! a killed run restarted with `resume` replays the interrupted epoch from its start. Every random draw
//! (shuffling, augmentation, dropout) is derived from the seed, the phase, the epoch and the step, so the
//! replay is identical to an uninterrupted run.

use candle_core::Var;

use crate::{
    checkpoint::{read_json, read_safetensors, write_json_atomic},
    network::load_into_varmap,
    report::{EpochRecord, PhaseResult},
    task::{Split, Task},
    Error, Network, Result,
};
use distill_nn::optim::build_optimizer;

mod epoch;
mod measure;
mod phase_files;
mod spec;

use epoch::Epochs;
pub use measure::{
    measure_latency, measure_latency_together, measure_latency_with, median_p90, peak_rss_mb,
    release_free_memory, reset_peak_rss, rss_mb, time_inputs, LatencyProtocol, PhaseMemory,
    BATCHES, LATENCY_PROTOCOL, MEMORY_METHOD, REPS, TOGETHER_ROUNDS, WARMUP,
};
pub use phase_files::{checkpoint_name, files};
use phase_files::{
    extends_finished_phase, load_final_weights, load_resume_point, remove_other_checkpoints,
    restore, PhaseState,
};
pub use spec::{Objective, PhaseSpec, Term};

/// The optimiser's view of a varmap (buffers dropped, sorted) with `prefix` on every name.
fn prefixed_vars(prefix: &str, varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    distill_nn::optim::trainable_vars(varmap)
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// Trains `net` for one phase and evaluates it. With `spec.resume`, continues from the checkpoint in
/// `spec.dir`, or returns the stored result if the phase already finished.
pub fn train_phase(
    task: &dyn Task,
    net: &dyn Network,
    objective: Objective,
    spec: &PhaseSpec,
) -> Result<PhaseResult> {
    let dir = &spec.dir;
    let device = crate::network::device_of(net);
    if let Some(done) = finished_earlier(net, spec, &device)? {
        return Ok(done);
    }
    if spec.no_training {
        return Err(Error::msg(format!(
            "[{}] {} has not finished (collecting results trains nothing)",
            spec.label,
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    PhaseMemory::start();
    let (teacher, terms) = match objective {
        Objective::Task => (None, vec![(1.0, Term::Task)]),
        Objective::Distill { teacher, terms } => (Some(teacher), terms),
    };
    // the parameters of losses that learn (feature adapters) train with the network
    let adapters: Vec<(usize, &candle_nn::VarMap)> = terms
        .iter()
        .enumerate()
        .filter_map(|(i, (_, t))| match t {
            Term::Loss(l) => l.varmap().map(|v| (i, v)),
            Term::Task => None,
        })
        .collect();
    let mut vars = prefixed_vars("model.", net.varmap());
    for (i, vm) in &adapters {
        vars.extend(prefixed_vars(&format!("loss{i}."), vm));
    }
    let mut optim = build_optimizer(&spec.config.optimizer, vars.clone())?;
    let mut state = PhaseState::fresh(spec);
    resume(net, spec, &adapters, optim.as_mut(), &mut state, &device)?;
    let epochs = Epochs::new(
        task,
        net,
        teacher,
        &terms,
        spec,
        &vars,
        &adapters,
        state.elapsed_s,
    )?;
    epochs.run(optim.as_mut(), &mut state)?;
    let mut result = finish_phase(
        task,
        net,
        spec,
        state.history,
        state.best_epoch,
        epochs.elapsed_s(),
        false,
    )?;
    if !state.backoffs.is_empty() {
        result.divergence_backoffs = state.backoffs;
        write_json_atomic(&result, &dir.join(files::RESULT))?;
    }
    Ok(result)
}

/// With `spec.resume`, the stored result of a phase that finished (its final weights loaded into `net`),
/// unless the recipe now asks for more epochs.
fn finished_earlier(
    net: &dyn Network,
    spec: &PhaseSpec,
    device: &candle_core::Device,
) -> Result<Option<PhaseResult>> {
    let dir = &spec.dir;
    if spec.resume {
        crate::checkpoint::remove_stale_temps(dir);
    }
    if !(spec.resume && dir.join(files::RESULT).exists()) {
        return Ok(None);
    }
    let result: PhaseResult = read_json(&dir.join(files::RESULT))?;
    if !extends_finished_phase(dir, spec, &result)? {
        load_final_weights(dir, net, spec, device)?;
        if !spec.quiet {
            eprintln!("[{}] finished earlier: {:.4}", spec.label, result.metric);
        }
        return Ok(Some(result));
    }
    if !spec.quiet {
        eprintln!(
            "[{}] finished after {} epochs; continuing to {} (epochs changed with --allow-changed)",
            spec.label, result.epochs, spec.config.epochs
        );
    }
    Ok(None)
}

/// With `spec.resume` and a checkpoint in the phase's directory, restores the network, the loss adapters,
/// the optimiser and `state` from it; without `resume`, refuses a directory holding an unfinished phase.
fn resume(
    net: &dyn Network,
    spec: &PhaseSpec,
    adapters: &[(usize, &candle_nn::VarMap)],
    optim: &mut dyn distill_nn::optim::Optimizer,
    state: &mut PhaseState,
    device: &candle_core::Device,
) -> Result<()> {
    let dir = &spec.dir;
    if !dir.join(files::STATE).exists() {
        return Ok(());
    }
    if !spec.resume {
        return Err(Error::msg(format!(
            "{} holds an unfinished run; pass --resume to continue it or choose another --out",
            dir.display()
        )));
    }
    let (loaded, all, ckpt_path) = load_resume_point(dir, device, &spec.label)?;
    *state = loaded;
    if state.epochs_done > spec.config.epochs {
        return Err(Error::msg(format!(
            "[{}] {} holds {} trained epochs; the recipe now asks for {}: a phase cannot be shortened \
             (choose another --out)",
            spec.label,
            dir.display(),
            state.epochs_done,
            spec.config.epochs
        )));
    }
    restore(&all, &ckpt_path, net, adapters, optim)?;
    if !spec.recipe_hash.is_empty() {
        state.recipe_hash = Some(spec.recipe_hash.clone());
    }
    // a checkpoint written after this state.json (the run was killed before committing it) is not ours
    remove_other_checkpoints(
        dir,
        &[state.checkpoint.as_deref(), state.previous.as_deref()],
    );
    // metrics.jsonl is appended after each checkpoint: rewrite it from the checkpointed history so a kill
    // between the two leaves no gap
    let mut lines = String::new();
    for rec in &state.history {
        lines.push_str(&serde_json::to_string(rec).map_err(|e| Error::msg(e.to_string()))?);
        lines.push('\n');
    }
    crate::checkpoint::write_atomic(&dir.join(files::METRICS), lines.as_bytes())?;
    if !spec.quiet {
        eprintln!(
            "[{}] resuming after epoch {}",
            spec.label, state.epochs_done
        );
    }
    Ok(())
}

/// Evaluates a trained (or loaded) network on the test split, saves its final weights and result in
/// `spec.dir`. This is the only place training reads the test split, and it runs after every choice is made:
/// the last epoch's weights are evaluated, then (when a validation split chose a best epoch) the best
/// epoch's weights from `best.safetensors`. Under early stopping the phase keeps the best epoch's weights,
/// otherwise the last epoch's.
pub fn finish_phase(
    task: &dyn Task,
    net: &dyn Network,
    spec: &PhaseSpec,
    curve: Vec<EpochRecord>,
    best_epoch: Option<usize>,
    wall_s: f64,
    reused: bool,
) -> Result<PhaseResult> {
    let dir = &spec.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let device = crate::network::device_of(net);
    let last = task.evaluate(net, Split::Test, spec.eval_batch_size)?;
    let best_path = dir.join(files::BEST);
    let last_epoch = curve.last().map(|r| r.epoch);
    // the best validation epoch's test figure, and its evaluation when it is not the last epoch's
    let (best_metric, best) = match best_epoch {
        Some(b) if Some(b) == last_epoch => (Some(last.metric), None),
        Some(_) if best_path.exists() => {
            // a deep copy: loading the best weights writes into the variables' storage
            let kept = crate::network::varmap_tensors(net.varmap())?
                .into_iter()
                .map(|(k, t)| Ok((k, t.copy()?)))
                .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
            load_into_varmap(
                net.varmap(),
                &read_safetensors(&best_path, &device)?,
                &best_path,
            )?;
            let eval = task.evaluate(net, Split::Test, spec.eval_batch_size)?;
            if spec.config.early_stopping.is_none() {
                load_into_varmap(net.varmap(), &kept, dir)?;
            }
            (Some(eval.metric), Some(eval))
        }
        // a best epoch whose weights were not kept (a phase resumed from a run made before 2026-12-07 without
        // early stopping): no figure rather than another epoch's
        _ => (None, None),
    };
    let last_metric = last.metric;
    // the kept weights' evaluation: the best epoch's under early stopping, else the last epoch's
    let eval = match best {
        Some(b) if spec.config.early_stopping.is_some() => b,
        _ => last,
    };
    let examples_path = dir.join(files::EXAMPLES);
    match &eval.examples {
        Some(e) => write_json_atomic(e, &examples_path)?,
        None => {
            let _ = std::fs::remove_file(&examples_path);
        }
    }
    let bytes = crate::network::save_network(net, &dir.join(files::FINAL))?;
    let result = PhaseResult {
        metric: eval.metric,
        best_val_epoch_metric: best_metric,
        last_epoch_metric: last_epoch.map(|_| last_metric),
        best_val_epoch: best_epoch,
        extra: eval.extra,
        params: crate::network::num_params(net),
        bytes,
        flops: net.flops(),
        // a run times its phases afterwards, together (pipeline::run_recipe)
        latency_ms: crate::report::Latency::default(),
        peak_rss_mb: peak_rss_mb(),
        rss_start_mb: PhaseMemory::latest().map(|m| m.start_mb),
        wall_s,
        epochs: curve.len(),
        curve,
        reused,
        divergence_backoffs: Vec::new(),
    };
    write_json_atomic(&result, &dir.join(files::RESULT))?;
    Ok(result)
}
