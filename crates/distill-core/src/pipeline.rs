//! The generic pipeline behind `distill run`: for each seed, the teacher (trained, cached or pretrained),
//! the student from scratch and the distilled student, then one [`RunReport`].

use std::path::Path;

use crate::{
    bail,
    checkpoint::write_json_atomic,
    losses::{build_core_loss, CORE_LOSSES},
    network::{import_network, load_network, save_network},
    plugin::{BuildContext, Domain, RunContext},
    recipe::{PhaseConfig, Recipe},
    report::{PhaseResult, PhaseSummary, RunReport},
    task::{Split, Task},
    teacher_cache::{
        data_fingerprint, scratch_cache_key, teacher_cache_key, EntryInfo, Lookup, TeacherCache,
    },
    train::{files, finish_phase, train_phase, Objective, PhaseSpec, Term},
    Error, Mode, Network, Phase, Result, Rng, Teacher,
};

/// The seed each role's weights are initialised from: scratch and distilled students share theirs.
pub fn init_seed(seed: u64, role: &str) -> u64 {
    Rng::derive(seed, &[&"init", &role]).next_u64()
}

/// Checks a recipe against a plugin without reading data or training: model specs build, augmentation and
/// loss names are known, and feature-loss taps exist with compatible kinds and shapes (a dry run on zeros).
/// The `teacher.pretrained` / `student.pretrained` files that exist are loaded (one not there yet is noted).
pub fn check_recipe<P: Domain + ?Sized>(
    plugin: &P,
    recipe: &Recipe,
    ctx: &RunContext,
) -> Result<CheckSummary> {
    let info = plugin.task_info(recipe)?;
    for (k, a) in [
        ("teacher.augment", &recipe.teacher.augment),
        ("student.augment", &recipe.student.augment),
        ("distill.augment", &recipe.distill.augment),
    ] {
        if let Some(a) = a.as_deref().filter(|a| *a != "none") {
            plugin
                .check_augment(a)
                .map_err(|e| Error::msg(format!("`{k}`: {e}")))?;
        }
    }
    let device = candle_core::Device::Cpu;
    // timing needs the real task where the networks' cost depends on the data (a GNN's graph)
    let placeholder = if ctx.measure_latency {
        Some(plugin.load_task(recipe, ctx)?)
    } else {
        plugin.placeholder_task(recipe)?
    };
    let bctx = BuildContext {
        device: &device,
        ..BuildContext::new(&info, 0, ctx, placeholder.as_deref())
    };
    let teacher = plugin
        .build_network(
            &recipe.teacher.model,
            &bctx.for_model(recipe, "teacher.model"),
        )
        .map_err(|e| located(e, "teacher.model"))?;
    let student = plugin
        .build_network(
            &recipe.student.model,
            &bctx.for_model(recipe, "student.model"),
        )
        .map_err(|e| located(e, "student.model"))?;
    load_pretrained(teacher.as_ref(), &recipe.teacher, "teacher", ctx, true)?;
    load_pretrained(student.as_ref(), &recipe.student, "student", ctx, true)?;
    let losses = build_losses(plugin, recipe, teacher.as_ref(), student.as_ref(), &bctx)?;
    let latency = if let Some(task) = placeholder.as_deref().filter(|_| ctx.measure_latency) {
        let t = crate::train::measure_latency(teacher.as_ref(), task, &device)?;
        let s = crate::train::measure_latency(student.as_ref(), task, &device)?;
        Some((t, s))
    } else {
        None
    };
    Ok(CheckSummary {
        teacher: teacher.describe(),
        student: student.describe(),
        teacher_params: crate::network::num_params(teacher.as_ref()),
        student_params: crate::network::num_params(student.as_ref()),
        teacher_flops: teacher.flops(),
        student_flops: student.flops(),
        latency,
        losses: losses
            .iter()
            .map(|(w, t)| format!("{} × {w}", term_name(t)))
            .collect(),
    })
}

/// `e` prefixed with `key`, unless it already names its place in the recipe file.
fn located(e: Error, key: &str) -> Error {
    match e {
        Error::Config { .. } => e,
        e => Error::msg(format!("`{key}`: {e}")),
    }
}

fn term_name(t: &Term) -> String {
    match t {
        Term::Task => "task".into(),
        Term::Loss(l) => l.name().into(),
    }
}

/// What `distill check` found.
#[derive(Debug, Clone)]
pub struct CheckSummary {
    /// Teacher architecture.
    pub teacher: String,
    /// Student architecture.
    pub student: String,
    /// Teacher parameters.
    pub teacher_params: usize,
    /// Student parameters.
    pub student_params: usize,
    /// Teacher FLOPs per sample (0: the plugin does not count them).
    pub teacher_flops: u64,
    /// Student FLOPs per sample.
    pub student_flops: u64,
    /// Teacher and student latency, with [`RunContext::measure_latency`].
    pub latency: Option<(crate::report::Latency, crate::report::Latency)>,
    /// Loss terms with weights.
    pub losses: Vec<String>,
}

fn build_losses<P: Domain + ?Sized>(
    plugin: &P,
    recipe: &Recipe,
    teacher: &dyn Network,
    student: &dyn Network,
    ctx: &BuildContext,
) -> Result<Vec<(f64, Term)>> {
    let (seed, device) = (ctx.seed, ctx.device);
    let mut shape = vec![2];
    shape.extend_from_slice(&ctx.info.input_shape);
    let x = candle_core::Tensor::zeros(shape, candle_core::DType::F32, device)?;
    let t_out = teacher.forward(&x, Mode::Eval)?.detach();
    let s_out = student.forward(&x, Mode::Eval)?;
    let mut terms = Vec::new();
    for (i, spec) in recipe.distill.losses.iter().enumerate() {
        let where_ = format!("`distill.losses[{i}]` ({})", spec.name);
        if spec.name == "task" {
            terms.push((spec.weight, Term::Task));
            continue;
        }
        let loss_seed = Rng::derive(seed, &[&"loss", &i]).next_u64();
        let train_len = ctx.task.map(|t| t.len(crate::Split::Train));
        let loss = match build_core_loss(spec, &s_out, &t_out, loss_seed, train_len)
            .map_err(|e| Error::msg(format!("{where_}: {e}")))?
        {
            Some(l) => l,
            None => match plugin
                .build_loss(
                    spec,
                    &s_out,
                    &t_out,
                    &BuildContext {
                        seed: loss_seed,
                        ..*ctx
                    },
                )
                .map_err(|e| Error::msg(format!("{where_}: {e}")))?
            {
                Some(l) => l,
                None => {
                    let mut known: Vec<String> =
                        CORE_LOSSES.iter().map(|s| s.to_string()).collect();
                    known.push("task".into());
                    known.extend(plugin.manifest().losses);
                    return Err(Error::msg(format!(
                        "{where_}: unknown loss `{}` (known: {})",
                        spec.name,
                        known.join(", ")
                    )));
                }
            },
        };
        terms.push((spec.weight, Term::Loss(loss)));
    }
    Ok(terms)
}

/// `phase.pretrained` resolved: relative to the models dir unless absolute (`Path::join` keeps an absolute
/// path as it is).
fn pretrained_path(ctx: &RunContext, phase: &PhaseConfig) -> Option<std::path::PathBuf> {
    phase.pretrained.as_ref().map(|p| ctx.models_dir.join(p))
}

/// Loads `phase.pretrained` into `net` (strict unless `strict = false`), errors naming `key.pretrained`.
/// `checking` (`check_recipe`): a file not there yet is a note, a non-strict load's leftovers a warning.
fn load_pretrained(
    net: &dyn Network,
    phase: &PhaseConfig,
    key: &str,
    ctx: &RunContext,
    checking: bool,
) -> Result<()> {
    let Some(path) = pretrained_path(ctx, phase) else {
        return Ok(());
    };
    if checking && !path.exists() {
        eprintln!(
            "note: `{key}.pretrained` {} is not there yet",
            path.display()
        );
        return Ok(());
    }
    let report = import_network(net, &path, phase.strict != Some(false))
        .map_err(|e| Error::msg(format!("`{key}.pretrained`: {e}")))?;
    if let Some(w) = report.warning().filter(|_| checking) {
        eprintln!("warning: `{key}.pretrained` (strict = false) {w}");
    }
    Ok(())
}

fn phase_spec(
    recipe: &Recipe,
    ctx: &RunContext,
    seed: u64,
    phase: Phase,
    dir: &Path,
    recipe_hash: &str,
) -> PhaseSpec {
    let config = match phase {
        Phase::Teacher => recipe.teacher.clone(),
        Phase::Scratch => recipe.student.clone(),
        Phase::Distilled => recipe.distilled_phase(),
    };
    let mut config = config;
    if config.augment.as_deref() == Some("none") {
        config.augment = None;
    }
    PhaseSpec {
        phase,
        config,
        seed,
        batch_size: recipe.data.batch_size,
        eval_batch_size: recipe.data.eval_batch_size,
        dir: dir.join(phase.name()),
        resume: ctx.resume,
        quiet: ctx.quiet,
        label: format!("{phase} s{seed}"),
        recipe_hash: recipe_hash.to_string(),
        no_training: ctx.no_training,
    }
}

fn teacher_phase<P: Domain + ?Sized>(
    plugin: &P,
    task: &dyn Task,
    recipe: &Recipe,
    ctx: &RunContext,
    seed: u64,
    recipe_hash: &str,
    cache: Option<&(TeacherCache, String)>,
) -> Result<(Box<dyn Network>, PhaseResult)> {
    let seed_dir = &ctx.out_dir.join(format!("seed-{seed}"));
    let info = task.info();
    let net = plugin.build_network(
        &recipe.teacher.model,
        &BuildContext::new(info, init_seed(seed, "teacher"), ctx, Some(task))
            .for_model(recipe, "teacher.model"),
    )?;
    let spec = phase_spec(recipe, ctx, seed, Phase::Teacher, seed_dir, recipe_hash);
    if recipe.teacher.pretrained.is_some() {
        load_pretrained(net.as_ref(), &recipe.teacher, "teacher", ctx, false)?;
        // used as it is, or fine-tuned from it (not cached: the cache key does not cover the file)
        let r = match recipe.teacher.epochs {
            0 => {
                // the phase is the evaluation and timing of the loaded teacher: its memory is its own
                crate::train::PhaseMemory::start();
                finish_phase(task, net.as_ref(), &spec, Vec::new(), None, 0.0, true)?
            }
            _ => train_phase(task, net.as_ref(), Objective::Task, &spec)?,
        };
        return Ok((net, r));
    }
    let Some((cache, fingerprint)) = cache else {
        let r = train_phase(task, net.as_ref(), Objective::Task, &spec)?;
        return Ok((net, r));
    };
    let key = teacher_cache_key(recipe, seed, &ctx.plugin_identity, fingerprint);
    let r = cached_phase(
        cache,
        &key,
        "teacher",
        fingerprint,
        recipe,
        seed,
        ctx,
        net.as_ref(),
        || train_phase(task, net.as_ref(), Objective::Task, &spec),
        &spec,
    )?;
    Ok((net, r))
}

/// A phase through the cache: a fresh phase whose entry `key` exists is read from it (weights into `net`,
/// result and per-example scores into the phase dir); otherwise `train` runs and a newly trained network is
/// stored. The entry's lock is held from the lookup to the store, so a second process needing the same
/// entry waits, then reuses it.
#[allow(clippy::too_many_arguments)]
fn cached_phase(
    cache: &TeacherCache,
    key: &str,
    phase: &str,
    fingerprint: &str,
    recipe: &Recipe,
    seed: u64,
    ctx: &RunContext,
    net: &dyn Network,
    train: impl FnOnce() -> Result<PhaseResult>,
    spec: &crate::train::PhaseSpec,
) -> Result<PhaseResult> {
    let _lock = cache.lock(key, &spec.label)?;
    let fresh = !spec.dir.join(files::STATE).exists() && !spec.dir.join(files::RESULT).exists();
    if fresh {
        match cache.load(key, net, &ctx.device, &spec.dir) {
            Lookup::Hit(r) => {
                let mut r = *r;
                r.reused = true;
                cache.log(key, "reused", &spec.label);
                if !ctx.quiet {
                    eprintln!(
                        "[{}] reusing the cached {phase} {} ({:.4})",
                        spec.label,
                        cache.entry_dir(key).display(),
                        r.metric
                    );
                }
                save_network(net, &spec.dir.join(files::FINAL))?;
                write_json_atomic(&r, &spec.dir.join(files::RESULT))?;
                return Ok(r);
            }
            // a damaged entry is never used: the network is trained again and the entry replaced
            Lookup::Damaged(why) => {
                cache.log(key, "damaged", &why);
                eprintln!(
                    "warning: [{}] the cached {phase} is not usable ({why}); training it again",
                    spec.label
                );
            }
            Lookup::Miss => {}
        }
    }
    let r = train()?;
    if !r.reused && cache.verify(key).is_err() {
        let info = EntryInfo {
            key: key.to_string(),
            plugin: recipe.plugin.clone(),
            plugin_identity: ctx.plugin_identity.clone(),
            dataset: recipe.dataset.clone(),
            recipe: recipe.name.clone(),
            phase: Some(phase.to_string()),
            seed,
            data_fingerprint: fingerprint.to_string(),
            created_unix: crate::report::unix_now(),
            metric: r.metric,
        };
        cache.store(key, net, &r, &info, &spec.dir)?;
        cache.log(key, "trained", &spec.label);
    }
    Ok(r)
}

/// Refuses an accepted recipe change that would alter a phase that has already finished: only its own epochs
/// may grow (the phase then trains on from its last checkpoint).
fn check_finished_phases(
    recipe: &Recipe,
    ctx: &RunContext,
    changes: &[crate::run_record::RecipeChange],
) -> Result<()> {
    for seed in &recipe.seeds {
        for c in changes {
            for phase in crate::run_record::phases_fed_by(&c.key) {
                let own_epochs = match *phase {
                    Phase::Teacher => c.key == "teacher.epochs",
                    Phase::Scratch => c.key == "student.epochs",
                    Phase::Distilled => {
                        c.key == "distill.epochs"
                            || (c.key == "student.epochs" && recipe.distill.epochs.is_none())
                    }
                };
                let dir = ctx.out_dir.join(format!("seed-{seed}")).join(phase.name());
                if !own_epochs && dir.join(files::RESULT).exists() {
                    return Err(Error::msg(format!(
                        "--allow-changed {}: {} has finished with the old value, and {c} changes what it \
                         trained on; remove that directory to train it again, or choose another --out",
                        c.key,
                        dir.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Runs a recipe end to end with `plugin` and writes each phase's files under `ctx.out_dir/seed-N/`.
///
/// The recipe is checked against the one `ctx.out_dir` records (see [`crate::run_record`]): a fresh run in a
/// used directory, or a `--resume` with a changed recipe, is refused unless `ctx.allow_changed` covers every
/// difference. Callers hold the seed directories' locks ([`crate::run_record::lock_seeds`]) for the whole run
/// (the CLI does).
pub fn run_recipe<P: Domain + ?Sized>(
    plugin: &P,
    recipe: &Recipe,
    ctx: &RunContext,
) -> Result<RunReport> {
    for (key, phase) in [("teacher", &recipe.teacher), ("student", &recipe.student)] {
        if let Some(p) = pretrained_path(ctx, phase).filter(|p| !p.exists()) {
            bail!("`{key}.pretrained`: {}: file not found", p.display());
        }
    }
    check_recipe(plugin, recipe, ctx)?;
    crate::checkpoint::remove_stale_temps(&ctx.out_dir);
    if !ctx.resume {
        for seed in &recipe.seeds {
            let d = ctx.out_dir.join(format!("seed-{seed}"));
            let used = std::fs::read_dir(&d).is_ok_and(|mut r| {
                r.any(|e| e.is_ok_and(|e| e.file_name() != crate::run_record::LOCK_FILE))
            });
            if used {
                return Err(Error::msg(format!(
                    "{} already holds a run; pass --resume to continue it or choose another --out",
                    d.display()
                )));
            }
        }
    }
    std::fs::create_dir_all(&ctx.out_dir).map_err(|e| Error::io(&ctx.out_dir, e))?;
    let (record, changes) =
        crate::run_record::check_and_record(&ctx.out_dir, recipe, &ctx.allow_changed)?;
    check_finished_phases(recipe, ctx, &changes)?;
    let hash = record.recipe_hash.as_str();
    // the data files' fingerprint is the same for every seed's teacher: taken once
    let cache = ctx.cache_dir.as_ref().map(|d| {
        (
            TeacherCache::new(d),
            data_fingerprint(&ctx.data_dir, recipe),
        )
    });
    let task = plugin.load_task(recipe, ctx)?;
    let info = task.info().clone();
    let (mut tr, mut sr, mut dr) = (Vec::new(), Vec::new(), Vec::new());
    for &seed in &recipe.seeds {
        let seed_dir = ctx.out_dir.join(format!("seed-{seed}"));
        let (t_net, t_res) = teacher_phase(
            plugin,
            task.as_ref(),
            recipe,
            ctx,
            seed,
            hash,
            cache.as_ref(),
        )?;
        let teacher = Teacher::new(t_net);

        let student_seed = init_seed(seed, "student");
        let student_ctx = BuildContext::new(&info, student_seed, ctx, Some(task.as_ref()))
            .for_model(recipe, "student.model");
        let scratch = plugin.build_network(&recipe.student.model, &student_ctx)?;
        load_pretrained(scratch.as_ref(), &recipe.student, "student", ctx, false)?;
        let s_spec = phase_spec(recipe, ctx, seed, Phase::Scratch, &seed_dir, hash);
        let train_scratch =
            || train_phase(task.as_ref(), scratch.as_ref(), Objective::Task, &s_spec);
        // a student loaded from a file is not cached (the key does not cover the file)
        let s_res = match cache
            .as_ref()
            .filter(|_| recipe.student.pretrained.is_none())
        {
            Some((c, fingerprint)) => {
                let key =
                    scratch_cache_key(recipe, seed, ctx.quick, &ctx.plugin_identity, fingerprint);
                cached_phase(
                    c,
                    &key,
                    "scratch student",
                    fingerprint,
                    recipe,
                    seed,
                    ctx,
                    scratch.as_ref(),
                    train_scratch,
                    &s_spec,
                )?
            }
            None => train_scratch()?,
        };

        let student = plugin.build_network(&recipe.student.model, &student_ctx)?;
        load_pretrained(student.as_ref(), &recipe.student, "student", ctx, false)?;
        let terms = build_losses(
            plugin,
            recipe,
            teacher.network(),
            student.as_ref(),
            &BuildContext::new(&info, seed, ctx, Some(task.as_ref())),
        )?;
        let d_res = train_phase(
            task.as_ref(),
            student.as_ref(),
            Objective::Distill {
                teacher: &teacher,
                terms,
            },
            &phase_spec(recipe, ctx, seed, Phase::Distilled, &seed_dir, hash),
        )?;
        // the three phases timed again, together, in alternating rounds: the twins' latencies come from the
        // same minutes of the machine, not each from the end of its own training
        let (mut t_res, mut s_res, mut d_res) = (t_res, s_res, d_res);
        let protocol = if ctx.quick {
            crate::train::LatencyProtocol::QUICK
        } else {
            crate::train::LatencyProtocol::FULL
        };
        let nets = [teacher.network(), scratch.as_ref(), student.as_ref()];
        let timed =
            crate::train::measure_latency_together(&nets, task.as_ref(), &ctx.device, protocol)?;
        for ((r, phase), latency) in [
            (&mut t_res, Phase::Teacher),
            (&mut s_res, Phase::Scratch),
            (&mut d_res, Phase::Distilled),
        ]
        .into_iter()
        .zip(timed)
        {
            r.latency_ms = latency;
            write_json_atomic(&*r, &seed_dir.join(phase.name()).join(files::RESULT))?;
        }
        drop(scratch);
        if !ctx.quiet {
            eprintln!(
                "[seed {seed}] {}: teacher {:.4} · scratch {:.4} · distilled {:.4}",
                info.metric.name, t_res.metric, s_res.metric, d_res.metric
            );
        }
        tr.push(t_res);
        sr.push(s_res);
        dr.push(d_res);
    }
    let headline = |p: &PhaseConfig| {
        Some(
            if p.pretrained.is_some() && p.epochs == 0 {
                "pretrained"
            } else if p.early_stopping.is_some() {
                "best_val_epoch"
            } else {
                "last_epoch"
            }
            .to_string(),
        )
    };
    let (mut t, mut s, mut d) = (
        PhaseSummary::of(&tr),
        PhaseSummary::of(&sr),
        PhaseSummary::of(&dr),
    );
    t.headline = headline(&recipe.teacher);
    s.headline = headline(&recipe.student);
    d.headline = headline(&recipe.distilled_phase());
    let derived = RunReport::derive(&info.metric, &t, &s, &d);
    let mut notes = task.notes();
    if !record.changes.is_empty() {
        notes.insert(
            "recipe_changes".into(),
            serde_json::json!(record
                .changes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()),
        );
    }
    Ok(RunReport {
        plugin: recipe.plugin.clone(),
        recipe: recipe.name.clone(),
        dataset: recipe.dataset.clone(),
        quick: ctx.quick,
        seeds: recipe.seeds.clone(),
        metric: info.metric.clone(),
        teacher: t,
        scratch: s,
        distilled: d,
        derived,
        recipe_toml: recipe.report_toml().unwrap_or_default(),
        notes,
        domain: Some(plugin.manifest().domain),
        test_samples: Some(task.len(Split::Test)),
        git_revision: ctx.git_revision.clone(),
        command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
        finished_unix: Some(crate::report::unix_now()),
        run_dir: std::fs::canonicalize(&ctx.out_dir)
            .or_else(|_| std::path::absolute(&ctx.out_dir))
            .ok()
            .map(|p| p.display().to_string()),
        copied_from: None,
        kd_gain_interval: crate::stats::gain_interval(
            std::slice::from_ref(&ctx.out_dir),
            &recipe.seeds,
            info.metric.higher_is_better,
        )?,
    })
}

/// Loads the task, builds the network `model`, loads its `weights` and evaluates it on the test split: the
/// default [`crate::Plugin::evaluate`], behind `distill eval`. Returns the network's description and the evaluation.
pub fn evaluate_saved<P: Domain + ?Sized>(
    plugin: &P,
    recipe: &Recipe,
    model: &toml::Table,
    weights: &Path,
    ctx: &RunContext,
) -> Result<(String, crate::task::Evaluation)> {
    let task = plugin.load_task(recipe, ctx)?;
    let net = plugin.build_network(
        model,
        &BuildContext::new(task.info(), 0, ctx, Some(task.as_ref())),
    )?;
    load_network(net.as_ref(), weights, &ctx.device)?;
    let e = evaluate_test(task.as_ref(), net.as_ref(), recipe.data.eval_batch_size)?;
    Ok((net.describe(), e))
}

/// Evaluates a network on a task's test split (used by `distill eval`).
pub fn evaluate_test(
    task: &dyn Task,
    net: &dyn Network,
    batch: usize,
) -> Result<crate::task::Evaluation> {
    task.evaluate(net, Split::Test, batch)
}
