//! `distill bench`: runs the benchmark recipes of every selected plugin (or a suite file's runs), one output
//! dir per run, resumable, and writes one report (report.json, report.md, plots) over all of them. What runs
//! (the suite, the suite file's format) is planned in [`crate::suite`].

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use distill_core::{
    checkpoint::read_json,
    recipe::Recipe,
    report::{BenchInfo, Report, RunReport},
    Plugin, RunContext,
};
use distill_registry::Registry;

use crate::cards::write_cards;
use crate::dirs::{check_data_dir, data_dir, device, dir_from, Dirs};
use crate::plugins::find_plugin;
use crate::report_cmd::{fmt_secs, summary_table, write_bench_report};
use crate::speed::{SpeedOptions, WORKLOADS};
use crate::suite::{default_out, plan, BenchOptions, PlannedRun, SuiteKind};
use crate::sweep::unsuccessful_task_logs;

/// `distill bench` on the command line.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// `quick` (every selected plugin's recipes with their [quick] overrides), `full` (the same recipes as
    /// they are) or a suite file (TOML with [[run]] entries).
    #[arg(long, default_value = "quick")]
    pub suite: String,
    /// Only these plugins (comma-separated registry names).
    #[arg(long, value_delimiter = ',')]
    plugins: Option<Vec<String>>,
    /// Run every recipe with seeds 0..N instead of its own.
    #[arg(long)]
    seeds: Option<usize>,
    /// Output dir (default: runs/bench-SUITE); each run goes to OUT/<recipe name>/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Trained-teacher cache (default: $DISTILL_CACHE, else .distill-cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the teacher cache.
    #[arg(long)]
    no_cache: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Measure training throughput against PyTorch instead (see docs/performance.md): ours and
    /// bench/pytorch/speed.py alternated on the same workloads; prints samples/s, peak memory and ratios.
    #[arg(long)]
    pub speed: bool,
    /// Measure the builtin students' inference latency against ONNX Runtime instead (docs/performance.md):
    /// each exported to ONNX, timed in distill and in bench/pytorch/ort_latency.py on the same inputs, batch 1
    /// and 256, one thread and all cores; prints medians and ratios.
    #[arg(long, conflicts_with = "speed")]
    pub onnxruntime: bool,
    /// `--onnxruntime`: batch sizes (comma-separated; default 1,256, the reports' two).
    #[arg(long, value_delimiter = ',', requires = "onnxruntime")]
    pub batch: Option<Vec<usize>>,
    /// `--speed`: the workloads (comma-separated; default all: mlp_ce, mlp_kd, cnn_step, gcn, dscnn_step, bert_step, bert_kd).
    /// `--onnxruntime`: mlp_infer, dscnn_infer, bert_infer (default all).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// `--speed`, `--onnxruntime`: alternating rounds per workload (the table shows medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// `--speed`: steps per measurement instead of each workload's own (an epoch, 50 CNN steps, 200 GCN epochs).
    #[arg(long)]
    pub speed_steps: Option<usize>,
    /// `--speed`: the Python with torch (skipped when it cannot import torch); `--onnxruntime`: the Python with
    /// onnxruntime, safetensors and numpy (required).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// `--speed`: do not run PyTorch's side.
    #[arg(long)]
    pub no_torch: bool,
    /// Where the runs execute: `local` (this process) or `slurm` (an sbatch job array, one task per recipe ×
    /// seed, and a merge job that writes the report once the array has ended; see docs/cluster.md).
    #[arg(long, default_value = "local")]
    pub executor: String,
    /// `--executor slurm`: sbatch options for every job, e.g. "--partition=gpu --gres=gpu:1 --time=2:00:00".
    #[arg(long, allow_hyphen_values = true)]
    pub slurm_args: Option<String>,
    /// `--executor slurm`: write and print the scripts, submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the report from the runs already finished in OUT, training nothing; unfinished runs are listed
    /// (with their Slurm logs after a sweep) and the command exits 2 (a sweep's merge job runs this).
    #[arg(long)]
    pub collect: bool,
    /// Check every planned run instead, training nothing and reading no data: each recipe as the suite
    /// runs it (overrides applied) is built on zeros, its model specs, losses and feature shapes checked,
    /// so a multi-hour suite does not fail on its twentieth run.
    #[arg(long, conflicts_with_all = ["speed", "onnxruntime", "collect"])]
    pub check: bool,
    /// Show a sweep's progress from its out dir alone: each task done, running, failed or pending.
    #[arg(long, value_name = "OUT")]
    pub status: Option<PathBuf>,
    /// Internal: run one speed workload in this process and print its JSON measurement.
    #[arg(long, hide = true)]
    pub speed_worker: Option<String>,
    #[command(flatten)]
    dirs: Dirs,
}

impl BenchArgs {
    /// The options of `--speed` (and of a `--speed-worker`).
    pub fn speed_options(&self) -> Result<SpeedOptions> {
        let data_dir = data_dir(&self.dirs.data_dir);
        check_data_dir(&data_dir)?;
        Ok(SpeedOptions {
            workloads: self
                .workloads
                .clone()
                .unwrap_or_else(|| WORKLOADS.iter().map(|s| s.to_string()).collect()),
            rounds: self.rounds.max(1),
            steps: self.speed_steps,
            python: (!self.no_torch).then(|| self.python.clone()),
            data_dir,
            out: self.out.clone(),
        })
    }

    /// The options of `--onnxruntime`.
    pub fn ort_options(&self) -> Result<crate::ort::OrtOptions> {
        let data_dir = data_dir(&self.dirs.data_dir);
        Ok(crate::ort::OrtOptions {
            workloads: self.workloads.clone().unwrap_or_else(|| {
                crate::ort::ORT_WORKLOADS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            rounds: self.rounds.max(1),
            python: self.python.clone(),
            data_dir,
            out: self.out.clone(),
            protocol: distill_core::train::LatencyProtocol::FULL,
            batches: self
                .batch
                .clone()
                .unwrap_or_else(|| distill_core::train::BATCHES.to_vec()),
        })
    }

    /// Resolves directories and the device.
    pub fn into_options(self) -> Result<BenchOptions> {
        let data_dir = data_dir(&self.dirs.data_dir);
        check_data_dir(&data_dir)?;
        if !["local", "slurm"].contains(&self.executor.as_str()) {
            bail!("--executor {}: expected local or slurm", self.executor);
        }
        if self.executor != "slurm" && (self.slurm_args.is_some() || self.dry_run) {
            bail!("--slurm-args and --dry-run apply to --executor slurm");
        }
        Ok(BenchOptions {
            collect: self.collect,
            device_name: self.dirs.device.clone(),
            suite: SuiteKind::parse(&self.suite),
            plugins: self.plugins,
            seeds: self.seeds,
            out: self.out,
            cache_dir: if self.no_cache {
                None
            } else {
                Some(dir_from(&self.cache_dir, "DISTILL_CACHE", ".distill-cache"))
            },
            quiet: self.quiet,
            fetch: self.dirs.fetch,
            data_dir,
            models_dir: dir_from(&self.dirs.models_dir, "DISTILL_MODELS", "models"),
            device: (self.dirs.device.clone(), device(&self.dirs.device)?),
        })
    }
}

/// `distill bench --check`: every planned run's recipe checked by its plugin (a dry run on zeros); the first
/// failure is the error, naming the run and where the suite asked for it.
pub fn cmd_check_suite(reg: &Registry, args: &BenchArgs) -> Result<()> {
    let runs = plan(
        reg,
        &SuiteKind::parse(&args.suite),
        args.plugins.as_deref(),
        args.seeds,
    )?;
    let mut ctx = RunContext::new(data_dir(&None), ".");
    ctx.models_dir = dir_from(&args.dirs.models_dir, "DISTILL_MODELS", "models");
    let mut plugins: BTreeMap<String, Box<dyn Plugin>> = BTreeMap::new();
    for planned in &runs {
        let name = &planned.recipe.plugin;
        if !plugins.contains_key(name) {
            plugins.insert(name.clone(), find_plugin(reg, name)?);
        }
        let s = plugins[name]
            .check(&planned.recipe, &ctx)
            .with_context(|| format!("{} ({})", planned.recipe.name, planned.origin))?;
        println!(
            "{}: ok ({} -> {}; {} seeds)",
            planned.recipe.name,
            s.teacher,
            s.student,
            planned.recipe.seeds.len()
        );
    }
    println!("{} runs checked", runs.len());
    Ok(())
}

/// What a stored run report is to a planned run.
#[derive(Debug, PartialEq)]
enum Stored {
    /// The finished run of the same recipe (after overrides) and seeds.
    Finished,
    /// A run of the same recipe over some of its seeds (a sweep task's own report): not finished yet.
    Partial,
    /// Another recipe.
    Different,
}

fn stored_run(report: &Report, planned: &PlannedRun) -> Stored {
    let [run] = report.runs.as_slice() else {
        return Stored::Different;
    };
    let mut want = planned.recipe.clone();
    want.quick = None;
    match Recipe::parse(&run.recipe_toml, "report.json", false) {
        Ok(mut got) => {
            got.quick = None;
            let seeds = std::mem::take(&mut got.seeds);
            let want_seeds = std::mem::take(&mut want.seeds);
            if got != want || run.quick != planned.quick {
                Stored::Different
            } else if seeds == want_seeds {
                Stored::Finished
            } else if seeds.iter().all(|s| want_seeds.contains(s)) {
                Stored::Partial
            } else {
                Stored::Different
            }
        }
        Err(_) => Stored::Different,
    }
}

fn status_line(run: &RunReport, secs: Option<f64>) -> String {
    let f = |s: &distill_core::report::Stat| format!("{:.4}", s.mean);
    format!(
        "{}: teacher {} · scratch {} · distilled {} ({}){}",
        run.metric.name,
        f(&run.teacher.metric),
        f(&run.scratch.metric),
        f(&run.distilled.metric),
        if run.derived.kd_gain >= 0.0 {
            format!("KD gain +{:.4}", run.derived.kd_gain)
        } else {
            format!("KD gain {:.4}", run.derived.kd_gain)
        },
        secs.map(|s| format!(" in {}", fmt_secs(s)))
            .unwrap_or_default()
    )
}

/// Fills what a plugin's own report may lack: the domain (from its manifest) and the headline's name.
fn complete(run: &mut RunReport, manifest_domain: &str) {
    if run.domain.is_none() {
        run.domain = Some(manifest_domain.to_string());
    }
    if let Ok(r) = Recipe::parse(&run.recipe_toml, "report.json", false) {
        let name = |p: &distill_core::recipe::PhaseConfig| {
            if p.pretrained.is_some() {
                "pretrained"
            } else if p.early_stopping.is_some() {
                "best_val_epoch"
            } else {
                "last_epoch"
            }
            .to_string()
        };
        let d = r.distilled_phase();
        run.teacher.headline.get_or_insert_with(|| name(&r.teacher));
        run.scratch.headline.get_or_insert_with(|| name(&r.student));
        run.distilled.headline.get_or_insert_with(|| name(&d));
    }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Runs a bench: every planned run in `OUT/<recipe name>/` (a finished one is read back, an unfinished one
/// resumed), then `OUT/report.json`, `OUT/report.md` and `OUT/plots/`.
pub fn cmd_bench(reg: &Registry, opts: BenchOptions, git_revision: Option<String>) -> Result<()> {
    let started = Instant::now();
    let runs = plan(reg, &opts.suite, opts.plugins.as_deref(), opts.seeds)?;
    let datasets: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r.recipe.dataset.as_str()).collect();
    for ds in datasets {
        crate::data::ensure_dataset(&opts.data_dir, ds, opts.fetch)?;
    }
    let out = default_out(&opts);
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;

    let pb = if opts.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(runs.len() as u64)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "bench [{bar:24}] {pos}/{len} runs · {elapsed_precise} · {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(500));
    let say = |line: String| {
        if opts.quiet {
        } else if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
    };

    let mut plugins: BTreeMap<String, Box<dyn Plugin>> = BTreeMap::new();
    let mut done: Vec<RunReport> = Vec::new();
    let mut status: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, planned) in runs.iter().enumerate() {
        let name = planned.recipe.name.clone();
        let dir = out.join(&name);
        let finished = dir.join("report.json");
        let tag = format!("[{}/{}] {name}", i + 1, runs.len());
        let stored = match finished.is_file() {
            true => {
                let r: Report = read_json(&finished)?;
                let kind = stored_run(&r, planned);
                Some((r, kind))
            }
            false => None,
        };
        if let Some((r, kind)) = stored.filter(|(_, k)| *k != Stored::Partial) {
            if kind == Stored::Different {
                bail!(
                    "{} holds a finished run of a different recipe or seeds than {} asks for now; remove {} or \
                     choose another --out",
                    finished.display(),
                    planned.origin,
                    dir.display()
                );
            }
            let (made_at, made_unix) = (r.git_revision.clone(), r.created_unix);
            let mut run = r.runs.into_iter().next().expect("one run");
            // a run dir's report.json from before runs carried these: its own header was written by the
            // invocation that finished the run, so its revision and time are the run's (not this invocation's)
            if run.git_revision.is_none() {
                run.git_revision = made_at;
            }
            run.finished_unix.get_or_insert(made_unix);
            // a run written in another directory (another suite's, another machine's) was copied in
            let here = std::fs::canonicalize(&dir)
                .ok()
                .map(|p| p.display().to_string());
            if let (Some(was), Some(here)) = (run.run_dir.clone(), here) {
                if was != here && run.copied_from.is_none() {
                    run.copied_from = Some(was);
                }
            }
            let domain = run.domain.clone().unwrap_or_else(|| run.plugin.clone());
            complete(&mut run, &domain);
            say(format!(
                "{tag}: finished earlier, skipped ({}){}",
                status_line(&run, None),
                run.copied_from
                    .as_deref()
                    .map(|c| format!("; copied from {c}"))
                    .unwrap_or_default()
            ));
            status.insert(name, "skipped".into());
            done.push(run);
            pb.inc(1);
            continue;
        }
        pb.set_message(format!("{name} ({}) running", planned.recipe.plugin));
        if !plugins.contains_key(&planned.recipe.plugin) {
            let p = find_plugin(reg, &planned.recipe.plugin)
                .with_context(|| format!("{}: `plugin`", planned.recipe_path.display()))?;
            plugins.insert(planned.recipe.plugin.clone(), p);
        }
        let plugin = &plugins[&planned.recipe.plugin];
        let ctx = RunContext {
            data_dir: opts.data_dir.clone(),
            models_dir: opts.models_dir.clone(),
            out_dir: dir.clone(),
            cache_dir: opts.cache_dir.clone(),
            device: opts.device.1.clone(),
            quick: planned.quick,
            resume: true,
            quiet: true,
            recipe_path: Some(planned.recipe_path.clone()),
            git_revision: git_revision.clone(),
            allow_changed: Vec::new(),
            plugin_identity: distill_registry::identity(
                reg.get(&planned.recipe.plugin)?,
                plugin.as_ref(),
            )?,
            no_training: opts.collect,
            measure_latency: false,
        };
        let resumed = dir.exists();
        let t0 = Instant::now();
        // the seeds' locks are held until the run's cards and report are written
        let ran = (|| -> Result<RunReport> {
            let _locks = distill_core::run_record::lock_seeds(&dir, &planned.recipe.seeds)?;
            let mut run = plugin.run(&planned.recipe, &ctx)?;
            complete(&mut run, &plugin.manifest().domain);
            write_cards(&run, &planned.recipe, &dir)?;
            crate::run_markdown::write_report(
                &Report::new(vec![run.clone()], git_revision.clone()),
                &dir,
            )?;
            Ok(run)
        })();
        match ran {
            Ok(run) => {
                say(format!(
                    "{tag}: {}{}",
                    if resumed { "resumed, " } else { "" },
                    status_line(&run, Some(t0.elapsed().as_secs_f64()))
                ));
                status.insert(name, "ran".into());
                done.push(run);
            }
            Err(e) => {
                let mut msg = format!("{e}").replace('\n', " ");
                if opts.collect {
                    let logs = unsuccessful_task_logs(&out, &name);
                    if !logs.is_empty() {
                        msg.push_str(&format!(" (sweep task logs: {})", logs.join(", ")));
                    }
                }
                say(format!("{tag}: FAILED: {msg}"));
                status.insert(name.clone(), format!("failed: {msg}"));
                failures.push(format!("{name}: {msg}"));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    let mut report = Report::new(done, git_revision);
    report.bench = Some(BenchInfo {
        suite: opts.suite.label(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu: cpu_model(),
        device: opts.device.0.clone(),
        wall_s: started.elapsed().as_secs_f64(),
        status,
    });
    let plot_note = write_bench_report(&report, &out, true)?;
    if let Some(note) = plot_note {
        say(format!("warning: {note}"));
    }
    if !opts.quiet {
        println!("{}", summary_table(&report));
    }
    println!("wrote {}", out.join("report.json").display());
    if !failures.is_empty() {
        bail!(
            "{} of {} runs failed (the others are in the report; rerun the same command to retry): {}",
            failures.len(),
            runs.len(),
            failures.join("; ")
        );
    }
    Ok(())
}
