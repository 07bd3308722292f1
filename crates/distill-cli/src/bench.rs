//! `distill bench`: runs the benchmark recipes of every selected plugin (or a suite file's runs), one output
//! dir per run, resumable, and writes one report (report.json, report.md, plots) over all of them.
//!
//! A suite file lists runs:
//!
//! ```toml
//! seeds = [0, 1, 2]          # default for every run (else the recipe's own)
//! quick = false              # default for every run: apply the recipes' [quick] overrides
//!
//! [[run]]
//! recipe = "../plugins/vision/recipes/hinton-mnist.toml"   # relative to the suite file
//! seeds = [0]                # optional
//! quick = true               # optional
//! [run.overrides]            # optional, merged over the recipe like [quick] (after it)
//! name = "hinton-mnist-t4"
//! distill.losses = [{ name = "kd", temperature = 4.0 }]
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use distill_core::{
    checkpoint::read_json,
    pipeline::write_report,
    recipe::{line_col, toml_error, Recipe},
    report::{BenchInfo, Report, RunReport},
    Plugin, RunContext,
};
use distill_registry::Registry;
use serde::Deserialize;

use crate::{find_plugin, BUILTINS};

/// What `--suite` names.
#[derive(Debug, Clone, PartialEq)]
pub enum SuiteKind {
    /// Every selected plugin's manifest recipes with their `[quick]` overrides.
    Quick,
    /// The same recipes as they are.
    Full,
    /// A suite file.
    File(PathBuf),
}

impl SuiteKind {
    /// `quick`, `full`, or a path.
    pub fn parse(s: &str) -> Self {
        match s {
            "quick" => SuiteKind::Quick,
            "full" => SuiteKind::Full,
            p => SuiteKind::File(PathBuf::from(p)),
        }
    }

    fn label(&self) -> String {
        match self {
            SuiteKind::Quick => "quick".into(),
            SuiteKind::Full => "full".into(),
            SuiteKind::File(p) => p.display().to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    seeds: Option<Vec<u64>>,
    #[serde(default)]
    quick: bool,
    #[serde(default)]
    run: Vec<toml::Spanned<RunEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunEntry {
    recipe: String,
    seeds: Option<Vec<u64>>,
    quick: Option<bool>,
    #[serde(default)]
    overrides: toml::Table,
}

/// One run of the plan: a recipe (overrides applied) and where it came from.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The recipe file.
    pub recipe_path: PathBuf,
    /// The recipe as it will run (quick and suite overrides, seeds applied).
    pub recipe: Recipe,
    /// Whether `[quick]` overrides were applied.
    pub quick: bool,
    /// Where this run was asked for (`suite.toml:4:1`, or `plugin `x``), for error messages.
    pub origin: String,
}

/// The runs a suite asks for, in order. `plugins` restricts them to those plugins (each must be in the
/// registry); `seeds` (`--seeds N`) replaces every run's seeds with `0..N`.
pub fn plan(
    reg: &Registry,
    suite: &SuiteKind,
    plugins: Option<&[String]>,
    seeds: Option<usize>,
) -> Result<Vec<PlannedRun>> {
    if let Some(names) = plugins {
        for n in names {
            reg.get(n).map_err(|e| anyhow!("--plugins: {e}"))?;
        }
    }
    if seeds == Some(0) {
        bail!("--seeds 0: at least one seed is needed");
    }
    let wanted = |name: &str| plugins.is_none_or(|p| p.iter().any(|n| n == name));
    let mut runs = match suite {
        SuiteKind::Quick | SuiteKind::Full => {
            let quick = *suite == SuiteKind::Quick;
            let mut runs = Vec::new();
            for e in reg.entries() {
                if !e.enabled || !wanted(&e.name) {
                    continue;
                }
                let plugin = distill_registry::load_entry(e, BUILTINS)?;
                for rel in plugin.manifest().recipes {
                    let path = PathBuf::from(&rel);
                    if !path.is_file() {
                        bail!(
                            "plugin `{}` lists the recipe {rel} (relative to the project root), but {} has no such \
                             file: run `distill bench` from the project root",
                            e.name,
                            std::env::current_dir()
                                .map(|d| d.display().to_string())
                                .unwrap_or_else(|_| ".".into())
                        );
                    }
                    let recipe = Recipe::load(&path, quick)?;
                    if recipe.plugin != e.name {
                        bail!(
                            "{rel}: `plugin = \"{}\"`, but plugin `{}` lists it as one of its recipes",
                            recipe.plugin,
                            e.name
                        );
                    }
                    runs.push(PlannedRun {
                        recipe_path: path,
                        recipe,
                        quick,
                        origin: format!("plugin `{}`", e.name),
                    });
                }
            }
            runs
        }
        SuiteKind::File(path) => {
            let runs = read_suite(path)?;
            for r in &runs {
                reg.get(&r.recipe.plugin).map_err(|e| {
                    anyhow!("{} ({}): `plugin`: {e}", r.origin, r.recipe_path.display())
                })?;
            }
            runs.into_iter()
                .filter(|r| wanted(&r.recipe.plugin))
                .collect()
        }
    };
    if runs.is_empty() {
        bail!(
            "suite {} selects no runs{}",
            suite.label(),
            if plugins.is_some() {
                " (check --plugins)"
            } else {
                ""
            }
        );
    }
    if let Some(n) = seeds {
        for r in &mut runs {
            r.recipe.seeds = (0..n as u64).collect();
        }
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for r in &runs {
        if let Some(first) = seen.insert(r.recipe.name.clone(), r.origin.clone()) {
            bail!(
                "{}: a second run named `{}` (the first is at {first}); runs write to OUT/<recipe name>/, so give \
                 one of them `overrides.name = \"...\"`",
                r.origin,
                r.recipe.name
            );
        }
    }
    Ok(runs)
}

/// Reads a suite file; errors name the file, line and column.
pub fn read_suite(path: &Path) -> Result<Vec<PlannedRun>> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{label}: {e}"))?;
    let file: SuiteFile = toml::from_str(&text).map_err(|e| toml_error(&text, &label, &e))?;
    if file.run.is_empty() {
        bail!("{label}: the suite lists no runs (add [[run]] entries with `recipe = \"...\"`)");
    }
    if file.seeds.as_ref().is_some_and(|s| s.is_empty()) {
        bail!("{label}: `seeds` must list at least one seed");
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let mut runs = Vec::new();
    for spanned in file.run {
        let (line, col) = line_col(&text, spanned.span().start);
        let origin = format!("{label}:{line}:{col}");
        let entry = spanned.into_inner();
        let recipe_path = base.join(&entry.recipe);
        if !recipe_path.is_file() {
            bail!(
                "{origin}: recipe {} not found (at {}; recipe paths are relative to the suite file)",
                entry.recipe,
                recipe_path.display()
            );
        }
        let quick = entry.quick.unwrap_or(file.quick);
        let rtext = std::fs::read_to_string(&recipe_path)
            .with_context(|| recipe_path.display().to_string())?;
        let mut recipe = Recipe::parse_with_overrides(
            &rtext,
            &recipe_path.display().to_string(),
            quick,
            &entry.overrides,
            &format!("{origin} [run.overrides]"),
        )?;
        if let Some(s) = entry.seeds.or_else(|| file.seeds.clone()) {
            if s.is_empty() {
                bail!("{origin}: `seeds` must list at least one seed");
            }
            recipe.seeds = s;
        }
        runs.push(PlannedRun {
            recipe_path,
            recipe,
            quick,
            origin,
        });
    }
    Ok(runs)
}

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
    /// `--speed`: the workloads (comma-separated; default all: mlp_ce, mlp_kd, cnn_step, gcn).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// `--speed`: alternating rounds per workload (the table shows medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// `--speed`: steps per measurement instead of each workload's own (an epoch, 50 CNN steps, 200 GCN epochs).
    #[arg(long)]
    pub speed_steps: Option<usize>,
    /// `--speed`: the Python with torch (skipped when it cannot import torch).
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
    /// Show a sweep's progress from its out dir alone: each task done, running, failed or pending.
    #[arg(long, value_name = "OUT")]
    pub status: Option<PathBuf>,
    /// Internal: run one speed workload in this process and print its JSON measurement.
    #[arg(long, hide = true)]
    pub speed_worker: Option<String>,
    #[command(flatten)]
    dirs: crate::Dirs,
}

impl BenchArgs {
    /// The options of `--speed` (and of a `--speed-worker`).
    pub fn speed_options(&self) -> Result<crate::speed::SpeedOptions> {
        let data_dir = crate::dir_from(&self.dirs.data_dir, "DISTILL_DATA", "datasets");
        crate::check_data_dir(&data_dir)?;
        Ok(crate::speed::SpeedOptions {
            workloads: self.workloads.clone().unwrap_or_else(|| {
                crate::speed::WORKLOADS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            rounds: self.rounds.max(1),
            steps: self.speed_steps,
            python: (!self.no_torch).then(|| self.python.clone()),
            data_dir,
            out: self.out.clone(),
        })
    }

    /// Resolves directories and the device.
    pub fn into_options(self) -> Result<BenchOptions> {
        let data_dir = crate::dir_from(&self.dirs.data_dir, "DISTILL_DATA", "datasets");
        crate::check_data_dir(&data_dir)?;
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
                Some(crate::dir_from(
                    &self.cache_dir,
                    "DISTILL_CACHE",
                    ".distill-cache",
                ))
            },
            quiet: self.quiet,
            data_dir,
            models_dir: crate::dir_from(&self.dirs.models_dir, "DISTILL_MODELS", "models"),
            device: (self.dirs.device.clone(), crate::device(&self.dirs.device)?),
        })
    }
}

/// Options of `distill bench`.
pub struct BenchOptions {
    /// `--collect`: report the finished runs, train nothing.
    pub collect: bool,
    /// `--device` as given.
    pub device_name: String,
    /// The suite.
    pub suite: SuiteKind,
    /// `--plugins`.
    pub plugins: Option<Vec<String>>,
    /// `--seeds N`.
    pub seeds: Option<usize>,
    /// `--out`.
    pub out: Option<PathBuf>,
    /// Teacher cache.
    pub cache_dir: Option<PathBuf>,
    /// No progress output.
    pub quiet: bool,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Models dir.
    pub models_dir: PathBuf,
    /// Device name and device.
    pub device: (String, candle_core::Device),
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

/// Whether every phase of `seed` of the run in `dir` has finished (its result.json written).
pub fn seed_finished(dir: &Path, seed: u64) -> bool {
    distill_core::train::files::PHASES.iter().all(|p| {
        dir.join(format!("seed-{seed}"))
            .join(p)
            .join(distill_core::train::files::RESULT)
            .is_file()
    })
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

/// `1h02m`, `3m05s`, `12.3s`.
pub fn fmt_secs(s: f64) -> String {
    let whole = s.round() as u64;
    if whole >= 3600 {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    } else if whole >= 60 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{s:.1}s")
    }
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

/// The bench's out dir: `--out`, else `runs/bench-SUITE`.
pub fn default_out(opts: &BenchOptions) -> PathBuf {
    opts.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(match &opts.suite {
            SuiteKind::File(p) => format!(
                "bench-{}",
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "suite".into())
            ),
            k => format!("bench-{}", k.label()),
        })
    })
}

/// Runs a bench: every planned run in `OUT/<recipe name>/` (a finished one is read back, an unfinished one
/// resumed), then `OUT/report.json`, `OUT/report.md` and `OUT/plots/`.
pub fn cmd_bench(reg: &Registry, opts: BenchOptions, git_revision: Option<String>) -> Result<()> {
    let started = Instant::now();
    let runs = plan(reg, &opts.suite, opts.plugins.as_deref(), opts.seeds)?;
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
            let mut run = r.runs.into_iter().next().expect("one run");
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
        };
        let resumed = dir.exists();
        let t0 = Instant::now();
        // the seeds' locks are held until the run's cards and report are written
        let ran = (|| -> Result<RunReport> {
            let _locks = distill_core::run_record::lock_seeds(&dir, &planned.recipe.seeds)?;
            let mut run = plugin.run(&planned.recipe, &ctx)?;
            complete(&mut run, &plugin.manifest().domain);
            crate::write_cards(&run, &planned.recipe, &dir)?;
            write_report(&Report::new(vec![run.clone()], git_revision.clone()), &dir)?;
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
                    let logs = crate::sweep::unsuccessful_task_logs(&out, &name);
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
    let plot_note = crate::report_cmd::write_bench_report(&report, &out, true)?;
    if let Some(note) = plot_note {
        say(format!("warning: {note}"));
    }
    if !opts.quiet {
        println!("{}", crate::report_cmd::summary_table(&report));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("suite.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const RECIPE: &str = r#"name = "r"
plugin = "image-classification"
dataset = "mnist"
seeds = [5]
[teacher]
model = { arch = "mlp", hidden = [8] }
epochs = 2
optimizer = { kind = "sgd", lr = 0.1 }
[student]
model = { arch = "mlp", hidden = [4] }
epochs = 2
optimizer = { kind = "sgd", lr = 0.1 }
[distill]
losses = [{ name = "kd", temperature = 4.0 }]
[quick.teacher]
epochs = 1
"#;

    fn setup() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("recipes")).unwrap();
        std::fs::write(tmp.path().join("recipes/r.toml"), RECIPE).unwrap();
        tmp
    }

    #[test]
    fn suite_applies_defaults_quick_overrides_and_seeds() {
        let tmp = setup();
        let p = suite(
            tmp.path(),
            "seeds = [1, 2]\n\n[[run]]\nrecipe = \"recipes/r.toml\"\n\n[[run]]\nrecipe = \"recipes/r.toml\"\n\
             quick = true\nseeds = [7]\n[run.overrides]\nname = \"r-quick\"\nstudent = { epochs = 9 }\n",
        );
        let runs = read_suite(&p).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (
                runs[0].recipe.seeds.clone(),
                runs[0].recipe.teacher.epochs,
                runs[0].quick
            ),
            (vec![1, 2], 2, false)
        );
        let q = &runs[1];
        assert_eq!(
            (
                q.recipe.name.as_str(),
                q.recipe.seeds.clone(),
                q.recipe.teacher.epochs,
                q.recipe.student.epochs
            ),
            ("r-quick", vec![7], 1, 9)
        );
        assert!(q.origin.ends_with("suite.toml:6:1"), "{}", q.origin);
    }

    #[test]
    fn suite_errors_name_file_line_and_column() {
        let tmp = setup();
        let err = |text: &str| {
            let p = suite(tmp.path(), text);
            let e = read_suite(&p).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let e = err("[[run]]\nrecipe = \"recipes/r.toml\"\nseed = [1]\n");
        assert!(
            e.contains("suite.toml:3:1") && e.contains("unknown field `seed`"),
            "{e}"
        );
        let e = err("[[run]]\nrecipe = 3\n");
        assert!(
            e.contains("suite.toml:2:10") && e.contains("invalid type"),
            "{e}"
        );
        let e = err("[[run]]\nrecipe = \"recipes/nope.toml\"\n");
        assert!(
            e.contains("suite.toml:1:1") && e.contains("recipes/nope.toml not found"),
            "{e}"
        );
        let e =
            err("[[run]]\nrecipe = \"recipes/r.toml\"\n[run.overrides]\nteacher = { epoks = 1 }\n");
        assert!(
            e.contains("suite.toml:1:1 [run.overrides]") && e.contains("epoks"),
            "{e}"
        );
        let e = err("description = \"empty\"\n");
        assert!(e.contains("lists no runs"), "{e}");
        let e = err("[[run]]\nrecipe = \"recipes/r.toml\"\nseeds = []\n");
        assert!(
            e.contains("suite.toml:1:1") && e.contains("at least one seed"),
            "{e}"
        );
    }
}
