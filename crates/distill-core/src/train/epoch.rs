//! The epochs of one phase: batches, the objective, the backward pass and the optimiser step, the
//! divergence guard, then evaluation, best-epoch tracking, early stopping and the epoch's checkpoint.

use std::{collections::BTreeMap, io::Write, time::Instant};

use candle_core::{Tensor, Var};
use distill_nn::optim::{clip_grad_norm, Optimizer};
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    phase_files::{checkpoint_tensors, files, restore, save_checkpoint, PhaseState},
    spec::{PhaseSpec, Term},
};
use crate::{
    checkpoint::write_safetensors_atomic,
    network::varmap_tensors,
    report::EpochRecord,
    task::{Split, Task},
    Batch, Error, Mode, Network, Outputs, Result, Rng, Teacher,
};

/// The `round(fraction · n)` (at least 1) training samples a phase with `train_fraction` keeps: drawn once
/// from the run seed alone, so every phase of the seed with the same fraction trains on the same samples.
fn train_subset(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    let k = ((n as f64 * fraction).round() as usize).clamp(1, n);
    let mut keep = Rng::derive(seed, &[&"train-subset"]).permutation(n);
    keep.truncate(k);
    keep.sort_unstable();
    keep
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

/// A deep copy of the trainable state at an epoch's start, for a divergence back-off.
type Snapshot = BTreeMap<String, Tensor>;

/// What one training epoch summed.
struct EpochSums {
    loss: f64,
    terms: BTreeMap<String, f64>,
    lr: f64,
    started: Instant,
}

/// One phase's epochs over a task.
pub(super) struct Epochs<'a> {
    task: &'a dyn Task,
    net: &'a dyn Network,
    teacher: Option<&'a Teacher>,
    terms: &'a [(f64, Term)],
    spec: &'a PhaseSpec,
    vars: &'a [(String, Var)],
    adapters: &'a [(usize, &'a candle_nn::VarMap)],
    cache: Option<LogitCache>,
    needs_teacher: bool,
    /// Samples trained per epoch: the split's, or its subset's with `train_fraction`.
    n: usize,
    /// The training samples a `train_fraction` keeps (sorted split indices).
    subset: Option<Vec<usize>>,
    batch: usize,
    steps: usize,
    started: Instant,
}

impl<'a> Epochs<'a> {
    /// Sets up the epochs: the teacher's logit cache when it is valid, the batch size and step count.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        task: &'a dyn Task,
        net: &'a dyn Network,
        teacher: Option<&'a Teacher>,
        terms: &'a [(f64, Term)],
        spec: &'a PhaseSpec,
        vars: &'a [(String, Var)],
        adapters: &'a [(usize, &'a candle_nn::VarMap)],
        elapsed_s: f64,
    ) -> Result<Self> {
        let cfg = &spec.config;
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
        let all = task.len(Split::Train);
        if all == 0 {
            return Err(Error::msg(format!(
                "[{}] the training split is empty",
                spec.label
            )));
        }
        let subset = cfg.train_fraction.map(|f| train_subset(all, f, spec.seed));
        let n = subset.as_ref().map_or(all, Vec::len);
        let batch = spec.batch_size.min(n);
        Ok(Self {
            task,
            net,
            teacher,
            terms,
            spec,
            vars,
            adapters,
            cache,
            needs_teacher,
            n,
            subset,
            batch,
            steps: n.div_ceil(batch),
            started: Instant::now() - std::time::Duration::from_secs_f64(elapsed_s),
        })
    }

    /// Seconds since the phase started (across resumes).
    pub(super) fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Trains the remaining epochs of `state` (or until early stopping), checkpointing after each.
    pub(super) fn run(&self, optim: &mut dyn Optimizer, state: &mut PhaseState) -> Result<()> {
        let cfg = &self.spec.config;
        let retries = cfg.divergence.as_ref().map(|g| g.retries).unwrap_or(0);
        let mut epoch = state.epochs_done;
        while epoch < cfg.epochs && !state.stopped_early {
            // the epoch's starting point, for a divergence back-off (deep copies: the optimiser updates in place)
            let snapshot = if state.backoffs.len() < retries {
                let all = checkpoint_tensors(self.net, self.adapters, &optim.state()?)?;
                Some(
                    all.into_iter()
                        .map(|(k, v)| Ok((k, v.copy()?)))
                        .collect::<Result<Snapshot>>()?,
                )
            } else {
                None
            };
            // None: the epoch diverged and was rolled back with a lower learning rate; it runs again
            if let Some(sums) = self.train_epoch(optim, state, epoch, snapshot.as_ref())? {
                self.finish_epoch(optim, state, epoch, sums)?;
                epoch += 1;
            }
        }
        Ok(())
    }

    /// The epoch's batches, in the order derived from the seed, phase and epoch.
    fn order(&self, epoch: usize) -> Result<Vec<usize>> {
        let spec = self.spec;
        let perm =
            Rng::derive(spec.seed, &[&"shuffle", &spec.stream(), &epoch]).permutation(self.n);
        let perm = match &self.subset {
            Some(subset) => perm.into_iter().map(|i| subset[i]).collect(),
            None => perm,
        };
        let perm = self.task.batch_order(
            perm,
            self.batch,
            &mut Rng::derive(spec.seed, &[&"batch-order", &spec.stream(), &epoch]),
        );
        if perm.len() != self.n {
            return Err(Error::msg(format!(
                "the task's batch_order returned {} samples for {}",
                perm.len(),
                self.n
            )));
        }
        Ok(perm)
    }

    /// One pass over the training split; `None` when it diverged and was rolled back to `snapshot`.
    fn train_epoch(
        &self,
        optim: &mut dyn Optimizer,
        state: &mut PhaseState,
        epoch: usize,
        snapshot: Option<&Snapshot>,
    ) -> Result<Option<EpochSums>> {
        let (spec, cfg) = (self.spec, &self.spec.config);
        let started = Instant::now();
        let perm = self.order(epoch)?;
        let pb = progress(spec, self.steps);
        pb.set_message(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let base_lr = cfg.optimizer.lr;
        let mut sums = EpochSums {
            loss: 0.0,
            terms: BTreeMap::new(),
            lr: base_lr,
            started,
        };
        for (step, idx) in perm.chunks(self.batch).enumerate() {
            sums.lr = cfg.schedule.lr_at(
                base_lr * state.lr_scale,
                epoch as f64 + (step + 1) as f64 / self.steps as f64,
                cfg.epochs,
            );
            optim.set_learning_rate(sums.lr);
            let (total, terms) = self.objective(epoch, step, idx)?;
            for (k, v) in terms {
                *sums.terms.entry(k).or_default() += v;
            }
            let lv = total.to_scalar::<f32>()? as f64;
            let grads = match self.gradients(&total, lv)? {
                Ok(g) => g,
                Err(why) => {
                    let at = format!("epoch {} step {}", epoch + 1, step + 1);
                    pb.finish_and_clear();
                    self.back_off(optim, state, snapshot, &why, &at)?;
                    return Ok(None);
                }
            };
            sums.loss += lv;
            let mut grads = grads;
            if let Some(max) = cfg.clip_grad_norm {
                clip_grad_norm(&mut grads, self.vars, max)?;
            }
            optim.step(&grads)?;
            pb.inc(1);
            if step % 20 == 0 {
                pb.set_message(format!(
                    "epoch {}/{} loss {:.4}",
                    epoch + 1,
                    cfg.epochs,
                    sums.loss / (step + 1) as f64
                ));
            }
        }
        pb.finish_and_clear();
        Ok(Some(sums))
    }

    /// The weighted objective on the batch `idx` of step `step`, and each term's value (when there are
    /// several) for the report.
    fn objective(
        &self,
        epoch: usize,
        step: usize,
        idx: &[usize],
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let spec = self.spec;
        let mut rng = Rng::derive(spec.seed, &[&"augment", &spec.stream(), &epoch, &step]);
        let batch = self
            .task
            .batch(Split::Train, idx, spec.config.augment.as_deref(), &mut rng)?;
        let step_seed =
            Rng::derive(spec.seed, &[&"step", &spec.stream(), &epoch, &step]).next_u64();
        let out = self
            .net
            .forward(&batch.inputs, Mode::Train { seed: step_seed })?;
        let t_out = match (self.teacher, &self.cache) {
            (_, Some(c)) => Some(c.outputs(&batch)?),
            (Some(t), None) if self.needs_teacher => Some(t.forward(&batch.inputs)?),
            _ => None,
        };
        let mut total: Option<Tensor> = None;
        let mut values = Vec::new();
        for (w, term) in self.terms {
            let v = match term {
                Term::Task => self.task.task_loss(&out, &batch)?,
                Term::Loss(l) => l.compute(&out, t_out.as_ref().unwrap_or(&out), &batch)?,
            };
            if self.terms.len() > 1 {
                values.push((term.name(), v.to_scalar::<f32>()? as f64));
            }
            let v = if *w == 1.0 { v } else { v.affine(*w, 0.0)? };
            total = Some(match total {
                Some(t) => (t + v)?,
                None => v,
            });
        }
        let total = total.ok_or_else(|| Error::msg("empty objective"))?;
        Ok((total, values))
    }

    /// The gradients of the loss `total` (value `lv`), or why the step diverged: a non-finite loss, or a
    /// gradient norm above the divergence guard's limit.
    fn gradients(
        &self,
        total: &Tensor,
        lv: f64,
    ) -> Result<std::result::Result<candle_core::backprop::GradStore, String>> {
        if !lv.is_finite() {
            return Ok(Err(format!("the loss is {lv}")));
        }
        let g = distill_nn::ops::backward(total)?;
        let limit = self
            .spec
            .config
            .divergence
            .as_ref()
            .and_then(|d| d.max_grad_norm);
        if let Some(max) = limit {
            let norm = distill_nn::optim::grad_norm(&g, self.vars)?;
            if norm.is_nan() || norm > max {
                return Ok(Err(format!(
                    "the gradient norm is {norm:.4e}, above divergence.max_grad_norm = {max}"
                )));
            }
        }
        Ok(Ok(g))
    }

    /// A diverged step: roll the epoch back to `snapshot` with a lower learning rate, or fail naming the last
    /// good checkpoint when no back-off is left.
    fn back_off(
        &self,
        optim: &mut dyn Optimizer,
        state: &mut PhaseState,
        snapshot: Option<&Snapshot>,
        why: &str,
        at: &str,
    ) -> Result<()> {
        let spec = self.spec;
        if let Some(snap) = snapshot {
            let factor = spec
                .config
                .divergence
                .as_ref()
                .map(|g| g.backoff)
                .unwrap_or(0.5);
            state.lr_scale *= factor;
            let line = format!(
                "{why} at {at}: replayed the epoch with the learning rate x{:.4e}",
                state.lr_scale
            );
            if !spec.quiet {
                eprintln!("[{}] {line}", spec.label);
            }
            state.backoffs.push(line);
            return restore(snap, &spec.dir, self.net, self.adapters, optim);
        }
        let tried = if state.backoffs.is_empty() {
            "lower the learning rate, set clip_grad_norm, or set divergence.retries for automatic back-off"
                .to_string()
        } else {
            format!("after {} learning-rate back-offs", state.backoffs.len())
        };
        Err(Error::Training(format!(
            "[{}] {why} at {at}; the last good checkpoint (after epoch {}) is kept in {}; {tried}",
            spec.label,
            state.epochs_done,
            spec.dir.display()
        )))
    }

    /// After an epoch: evaluation on the validation split, the best epoch and early stopping, the log
    /// line, the checkpoint and the metrics line. The test split is not read here: it is evaluated once,
    /// after training ([`super::finish_phase`]), so nothing chosen during training can depend on it.
    fn finish_epoch(
        &self,
        optim: &mut dyn Optimizer,
        state: &mut PhaseState,
        epoch: usize,
        sums: EpochSums,
    ) -> Result<()> {
        let (spec, cfg, task, net) = (self.spec, &self.spec.config, self.task, self.net);
        let dir = &spec.dir;
        let val = if task.len(Split::Val) > 0 {
            Some(task.evaluate(net, Split::Val, spec.eval_batch_size)?.metric)
        } else {
            None
        };
        let steps = self.steps as f64;
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: sums.loss / steps,
            loss_terms: sums
                .terms
                .into_iter()
                .map(|(k, v)| (k, v / steps))
                .collect(),
            lr: sums.lr,
            val_metric: val,
            test_metric: None,
            seconds: sums.started.elapsed().as_secs_f64(),
        };
        if let Some(v) = val {
            self.track_best(state, epoch, v)?;
        }
        if !spec.quiet {
            eprintln!(
                "[{}] epoch {}/{} loss {:.4}{} lr {:.2e} ({:.1}s)",
                spec.label,
                epoch + 1,
                cfg.epochs,
                rec.train_loss,
                val.map(|v| format!(" val {v:.4}")).unwrap_or_default(),
                rec.lr,
                rec.seconds
            );
        }
        state.history.push(rec.clone());
        state.epochs_done = epoch + 1;
        state.elapsed_s = self.elapsed_s();
        save_checkpoint(dir, net, self.adapters, &optim.state()?, state)?;
        let path = dir.join(files::METRICS);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let line = serde_json::to_string(&rec).map_err(|e| Error::msg(e.to_string()))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
    }

    /// Best-epoch selection on the validation metric `v` (saving the best weights, which the phase's final
    /// evaluation reads) and the early-stopping patience count.
    fn track_best(&self, state: &mut PhaseState, epoch: usize, v: f64) -> Result<()> {
        let cfg = &self.spec.config;
        let hib = self.task.info().metric.higher_is_better;
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
            write_safetensors_atomic(
                &varmap_tensors(self.net.varmap())?,
                &self.spec.dir.join(files::BEST),
            )?;
        } else {
            state.bad_epochs += 1;
            if let Some(es) = &cfg.early_stopping {
                if state.bad_epochs >= es.patience {
                    state.stopped_early = true;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::train_subset;

    #[test]
    fn a_train_fraction_keeps_the_same_distinct_samples_per_seed() {
        let a = train_subset(1000, 0.1, 3);
        assert_eq!(a.len(), 100);
        assert!(
            a.windows(2).all(|w| w[0] < w[1]) && a[99] < 1000,
            "sorted, distinct, in range"
        );
        assert_eq!(
            a,
            train_subset(1000, 0.1, 3),
            "the same for every phase of seed 3"
        );
        assert_ne!(
            a,
            train_subset(1000, 0.1, 4),
            "another seed draws another subset"
        );
        // the first 100 of the split would be a biased subset (files are often sorted by class)
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        assert_eq!(train_subset(10, 0.01, 0).len(), 1, "at least one sample");
        assert_eq!(train_subset(10, 1.0, 0), (0..10).collect::<Vec<_>>());
    }
}
