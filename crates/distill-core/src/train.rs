//! The one training loop: teacher, student from scratch and distilled student all go through [`train_phase`]
//! with the same data order, seeds and budget, so the comparison is fair.
//!
//! Each epoch ends with an atomic checkpoint (weights, optimiser state, history) in the phase's directory;
//! a killed run restarted with `resume` replays the interrupted epoch from its start. Every random draw
//! (shuffling, augmentation, dropout) is derived from the seed, the phase, the epoch and the step, so the
//! replay is identical to an uninterrupted run.

use std::{collections::BTreeMap, io::Write, path::PathBuf, time::Instant};

use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    checkpoint::{read_json, read_safetensors, write_json_atomic, write_safetensors_atomic},
    losses::DistillLoss,
    network::{load_into_varmap, varmap_tensors},
    recipe::PhaseConfig,
    report::{EpochRecord, Latency, PhaseResult},
    task::{Split, Task},
    Batch, Error, Mode, Network, Outputs, Phase, Result, Rng, Teacher,
};
use distill_nn::optim::{build_optimizer, clip_grad_norm};

/// One weighted term of a training objective.
pub enum Term {
    /// The task's own loss (hard labels).
    Task,
    /// A distillation loss.
    Loss(Box<dyn DistillLoss>),
}

impl Term {
    fn name(&self) -> String {
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

mod phase_files;

pub use phase_files::{checkpoint_name, files};
use phase_files::{
    checkpoint_tensors, extends_finished_phase, load_final_weights, load_resume_point,
    remove_other_checkpoints, restore, save_checkpoint, PhaseState,
};

/// The optimiser's view of a varmap (buffers dropped, sorted) with `prefix` on every name.
fn prefixed_vars(prefix: &str, varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    distill_nn::optim::trainable_vars(varmap)
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// Peak resident set size of this process in MiB (VmHWM), if the OS reports it.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Resets the peak-RSS counter (Linux), so the next [`peak_rss_mb`] covers only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Median inference latency (ms) at batch 1 and batch 256 on zero inputs of `input_shape`.
pub fn measure_latency(
    net: &dyn Network,
    input_shape: &[usize],
    device: &candle_core::Device,
) -> Result<Latency> {
    // At most `reps` timed passes after one or two warm-ups, stopping early once 2 s have been spent (a
    // large network at batch 256 then costs two or three passes, not seven).
    let time = |b: usize, reps: usize| -> Result<f64> {
        let mut shape = vec![b];
        shape.extend_from_slice(input_shape);
        let x = Tensor::zeros(shape, candle_core::DType::F32, device)?;
        let t0 = Instant::now();
        net.forward(&x, Mode::Eval)?;
        if t0.elapsed().as_secs_f64() < 0.5 {
            net.forward(&x, Mode::Eval)?;
        }
        let budget = Instant::now();
        let mut ts = Vec::with_capacity(reps);
        for _ in 0..reps {
            if !ts.is_empty() && budget.elapsed().as_secs_f64() > 2.0 {
                break;
            }
            let t = Instant::now();
            let out = net.forward(&x, Mode::Eval)?;
            device.synchronize()?;
            drop(out);
            ts.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ts.sort_by(|a, b| a.total_cmp(b));
        Ok(ts[ts.len() / 2])
    };
    Ok(Latency {
        batch1: time(1, 30)?,
        batch256: time(256, 5)?,
    })
}

fn progress(spec: &PhaseSpec, len: usize) -> ProgressBar {
    if spec.quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} {msg} [{bar:25}] {pos}/{len} {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(spec.label.clone());
    pb
}

/// Teacher logits for every training sample, computed once (valid when the inputs are not augmented and
/// no loss reads features).
struct LogitCache {
    logits: Tensor,
}

impl LogitCache {
    fn build(task: &dyn Task, teacher: &Teacher, eval_batch: usize) -> Result<Self> {
        let n = task.len(Split::Train);
        let idx: Vec<usize> = (0..n).collect();
        let mut parts = Vec::new();
        let mut rng = Rng::new(0);
        for chunk in idx.chunks(eval_batch.max(1)) {
            let b = task.batch(Split::Train, chunk, None, &mut rng)?;
            parts.push(teacher.forward(&b.inputs)?.logits);
        }
        Ok(Self {
            logits: Tensor::cat(&parts, 0)?,
        })
    }

    fn outputs(&self, batch: &Batch) -> Result<Outputs> {
        let idx: Vec<u32> = batch.indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, batch.indices.len(), self.logits.device())?;
        Ok(Outputs::logits(self.logits.index_select(&idx, 0)?))
    }
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
    if spec.resume {
        crate::checkpoint::remove_stale_temps(dir);
    }
    if spec.resume && dir.join(files::RESULT).exists() {
        let result: PhaseResult = read_json(&dir.join(files::RESULT))?;
        if !extends_finished_phase(dir, spec, &result)? {
            load_final_weights(dir, net, spec, &device)?;
            if !spec.quiet {
                eprintln!("[{}] finished earlier: {:.4}", spec.label, result.metric);
            }
            return Ok(result);
        }
        if !spec.quiet {
            eprintln!(
                "[{}] finished after {} epochs; continuing to {} (epochs changed with --allow-changed)",
                spec.label, result.epochs, spec.config.epochs
            );
        }
    }
    if spec.no_training {
        return Err(Error::msg(format!(
            "[{}] {} has not finished (collecting results trains nothing)",
            spec.label,
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    reset_peak_rss();
    let cfg = &spec.config;
    let (teacher, terms) = match objective {
        Objective::Task => (None, vec![(1.0, Term::Task)]),
        Objective::Distill { teacher, terms } => (Some(teacher), terms),
    };
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
    let mut optim = build_optimizer(&cfg.optimizer, vars.clone())?;
    let mut state = PhaseState {
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
    };
    if spec.resume && dir.join(files::STATE).exists() {
        let (loaded, all, ckpt_path) = load_resume_point(dir, &device, &spec.label)?;
        state = loaded;
        if state.epochs_done > cfg.epochs {
            return Err(Error::msg(format!(
                "[{}] {} holds {} trained epochs; the recipe now asks for {}: a phase cannot be shortened \
                 (choose another --out)",
                spec.label,
                dir.display(),
                state.epochs_done,
                cfg.epochs
            )));
        }
        restore(&all, &ckpt_path, net, &adapters, optim.as_mut())?;
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
    } else if dir.join(files::STATE).exists() {
        return Err(Error::msg(format!(
            "{} holds an unfinished run; pass --resume to continue it or choose another --out",
            dir.display()
        )));
    }

    let uses_features = terms
        .iter()
        .any(|(_, t)| matches!(t, Term::Loss(l) if l.uses_features()));
    let needs_teacher = terms
        .iter()
        .any(|(_, t)| matches!(t, Term::Loss(l) if l.uses_teacher()));
    let cache = match teacher {
        Some(t) if needs_teacher && cfg.augment.is_none() && !uses_features => {
            Some(LogitCache::build(task, t, spec.eval_batch_size)?)
        }
        _ => None,
    };
    let n = task.len(Split::Train);
    if n == 0 {
        return Err(Error::msg(format!(
            "[{}] the training split is empty",
            spec.label
        )));
    }
    let bs = spec.batch_size.min(n);
    let steps = n.div_ceil(bs);
    let has_val = task.len(Split::Val) > 0;
    let base_lr = cfg.optimizer.lr;
    let started = Instant::now() - std::time::Duration::from_secs_f64(state.elapsed_s);

    let guard = cfg.divergence.clone();
    let retries = guard.as_ref().map(|g| g.retries).unwrap_or(0);
    let mut epoch = state.epochs_done;
    'epochs: while epoch < cfg.epochs && !state.stopped_early {
        let t0 = Instant::now();
        // the epoch's starting point, for a divergence back-off (deep copies: the optimiser updates in place)
        let snapshot = if state.backoffs.len() < retries {
            let all = checkpoint_tensors(net, &adapters, &optim.state()?)?;
            Some(
                all.into_iter()
                    .map(|(k, v)| Ok((k, v.copy()?)))
                    .collect::<Result<BTreeMap<_, _>>>()?,
            )
        } else {
            None
        };
        let perm = Rng::derive(spec.seed, &[&"shuffle", &spec.phase, &epoch]).permutation(n);
        let perm = task.batch_order(
            perm,
            bs,
            &mut Rng::derive(spec.seed, &[&"batch-order", &spec.phase, &epoch]),
        );
        if perm.len() != n {
            return Err(Error::msg(format!(
                "the task's batch_order returned {} samples for {n}",
                perm.len()
            )));
        }
        let pb = progress(spec, steps);
        pb.set_message(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let mut loss_sum = 0.0;
        let mut term_sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut lr = base_lr;
        for (step, idx) in perm.chunks(bs).enumerate() {
            lr = cfg.schedule.lr_at(
                base_lr * state.lr_scale,
                epoch as f64 + (step + 1) as f64 / steps as f64,
                cfg.epochs,
            );
            optim.set_learning_rate(lr);
            let mut rng = Rng::derive(spec.seed, &[&"augment", &spec.phase, &epoch, &step]);
            let batch = task.batch(Split::Train, idx, cfg.augment.as_deref(), &mut rng)?;
            let step_seed =
                Rng::derive(spec.seed, &[&"step", &spec.phase, &epoch, &step]).next_u64();
            let out = net.forward(&batch.inputs, Mode::Train { seed: step_seed })?;
            let t_out = match (teacher, &cache) {
                (_, Some(c)) => Some(c.outputs(&batch)?),
                (Some(t), None) if needs_teacher => Some(t.forward(&batch.inputs)?),
                _ => None,
            };
            let mut total: Option<Tensor> = None;
            for (w, term) in &terms {
                let v = match term {
                    Term::Task => task.task_loss(&out, &batch)?,
                    Term::Loss(l) => {
                        let t = match &t_out {
                            Some(t) => t,
                            None => &out,
                        };
                        l.compute(&out, t, &batch)?
                    }
                };
                if terms.len() > 1 {
                    *term_sums.entry(term.name()).or_default() += v.to_scalar::<f32>()? as f64;
                }
                let v = if *w == 1.0 { v } else { v.affine(*w, 0.0)? };
                total = Some(match total {
                    Some(t) => (t + v)?,
                    None => v,
                });
            }
            let total = total.ok_or_else(|| Error::msg("empty objective"))?;
            let lv = total.to_scalar::<f32>()? as f64;
            let mut grads = None;
            let diverged = if !lv.is_finite() {
                Some(format!("the loss is {lv}"))
            } else {
                let g = distill_nn::ops::backward(&total)?;
                let limit = guard.as_ref().and_then(|d| d.max_grad_norm);
                let norm = match limit {
                    Some(_) => distill_nn::optim::grad_norm(&g, &vars)?,
                    None => 0.0,
                };
                grads = Some(g);
                match limit {
                    Some(max) if norm.is_nan() || norm > max => Some(format!(
                        "the gradient norm is {norm:.4e}, above divergence.max_grad_norm = {max}"
                    )),
                    _ => None,
                }
            };
            if let Some(why) = diverged {
                let at = format!("epoch {} step {}", epoch + 1, step + 1);
                if let Some(snap) = &snapshot {
                    let factor = guard.as_ref().map(|g| g.backoff).unwrap_or(0.5);
                    state.lr_scale *= factor;
                    let line = format!(
                        "{why} at {at}: replayed the epoch with the learning rate x{:.4e}",
                        state.lr_scale
                    );
                    if !spec.quiet {
                        pb.finish_and_clear();
                        eprintln!("[{}] {line}", spec.label);
                    }
                    state.backoffs.push(line);
                    restore(snap, dir, net, &adapters, optim.as_mut())?;
                    continue 'epochs;
                }
                let tried = if state.backoffs.is_empty() {
                    "lower the learning rate, set clip_grad_norm, or set divergence.retries for automatic back-off"
                        .to_string()
                } else {
                    format!("after {} learning-rate back-offs", state.backoffs.len())
                };
                return Err(Error::Training(format!(
                    "[{}] {why} at {at}; the last good checkpoint (after epoch {}) is kept in {}; {tried}",
                    spec.label,
                    state.epochs_done,
                    dir.display()
                )));
            }
            loss_sum += lv;
            let mut grads = grads.expect("gradients of a finite loss");
            if let Some(max) = cfg.clip_grad_norm {
                clip_grad_norm(&mut grads, &vars, max)?;
            }
            optim.step(&grads)?;
            pb.inc(1);
            if step % 20 == 0 {
                pb.set_message(format!(
                    "epoch {}/{} loss {:.4}",
                    epoch + 1,
                    cfg.epochs,
                    loss_sum / (step + 1) as f64
                ));
            }
        }
        pb.finish_and_clear();
        let val = if has_val {
            Some(task.evaluate(net, Split::Val, spec.eval_batch_size)?.metric)
        } else {
            None
        };
        let test = task
            .evaluate(net, Split::Test, spec.eval_batch_size)?
            .metric;
        let hib = task.info().metric.higher_is_better;
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / steps as f64,
            loss_terms: term_sums
                .into_iter()
                .map(|(k, v)| (k, v / steps as f64))
                .collect(),
            lr,
            val_metric: val,
            test_metric: Some(test),
            seconds: t0.elapsed().as_secs_f64(),
        };
        if let Some(v) = val {
            let better = match state.best_val {
                None => true,
                Some(b) => {
                    let d = cfg
                        .early_stopping
                        .as_ref()
                        .map(|e| e.min_delta)
                        .unwrap_or(0.0);
                    if hib {
                        v > b + d
                    } else {
                        v < b - d
                    }
                }
            };
            if better {
                state.best_val = Some(v);
                state.best_epoch = Some(epoch + 1);
                state.bad_epochs = 0;
                if cfg.early_stopping.is_some() {
                    write_safetensors_atomic(
                        &varmap_tensors(net.varmap())?,
                        &dir.join(files::BEST),
                    )?;
                }
            } else {
                state.bad_epochs += 1;
                if let Some(es) = &cfg.early_stopping {
                    if state.bad_epochs >= es.patience {
                        state.stopped_early = true;
                    }
                }
            }
        }
        if !spec.quiet {
            eprintln!(
                "[{}] epoch {}/{} loss {:.4}{} test {:.4} lr {:.2e} ({:.1}s)",
                spec.label,
                epoch + 1,
                cfg.epochs,
                rec.train_loss,
                val.map(|v| format!(" val {v:.4}")).unwrap_or_default(),
                test,
                lr,
                rec.seconds
            );
        }
        state.history.push(rec.clone());
        epoch += 1;
        state.epochs_done = epoch;
        state.elapsed_s = started.elapsed().as_secs_f64();
        save_checkpoint(dir, net, &adapters, &optim.state()?, &mut state)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(files::METRICS))
            .map_err(|e| Error::io(dir.join(files::METRICS), e))?;
        let line = serde_json::to_string(&rec).map_err(|e| Error::msg(e.to_string()))?;
        writeln!(f, "{line}").map_err(|e| Error::io(dir.join(files::METRICS), e))?;
    }
    if cfg.early_stopping.is_some() && dir.join(files::BEST).exists() {
        let best = read_safetensors(&dir.join(files::BEST), &device)?;
        load_into_varmap(net.varmap(), &best, &dir.join(files::BEST))?;
    }
    let wall_s = started.elapsed().as_secs_f64();
    let mut result = finish_phase(
        task,
        net,
        spec,
        state.history,
        state.best_epoch,
        wall_s,
        false,
    )?;
    if !state.backoffs.is_empty() {
        result.divergence_backoffs = state.backoffs;
        write_json_atomic(&result, &dir.join(files::RESULT))?;
    }
    Ok(result)
}

/// Evaluates a trained (or loaded) network, saves its final weights and result in `spec.dir`.
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
    let eval = task.evaluate(net, Split::Test, spec.eval_batch_size)?;
    let bytes = crate::network::save_network(net, &dir.join(files::FINAL))?;
    let device = crate::network::device_of(net);
    let latency = measure_latency(net, &task.info().input_shape, &device)?;
    let best_val_epoch_metric = best_epoch
        .and_then(|e| curve.iter().find(|r| r.epoch == e))
        .and_then(|r| r.test_metric);
    let result = PhaseResult {
        metric: eval.metric,
        best_val_epoch_metric,
        best_val_epoch: best_epoch,
        extra: eval.extra,
        params: crate::network::num_params(net),
        bytes,
        flops: net.flops(),
        latency_ms: latency,
        peak_rss_mb: peak_rss_mb(),
        wall_s,
        epochs: curve.len(),
        curve,
        reused,
        divergence_backoffs: Vec::new(),
    };
    write_json_atomic(&result, &dir.join(files::RESULT))?;
    Ok(result)
}
