//! `distill`: knowledge distillation from the command line.
//!
//! Every error a user can cause prints one line (`error: ...`) naming the file and the problem, and exits 2.

mod bench;
mod data;
mod plots;
mod report_cmd;
mod speed;
mod sweep;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use distill_core::{
    checkpoint::read_json, pipeline::write_report, recipe::Recipe, report::Report, Plugin,
    RunContext,
};
use distill_registry::{Builtin, Registry};

/// The plugins compiled into this binary, by crate. They are offered to the registry, which lists the ones
/// plugins.toml names; a plugin is usable because the registry lists it, not because it is linked.
const BUILTINS: &[Builtin] = &[
    Builtin {
        crate_name: "distill-vision",
        make: || Box::new(distill_vision::VisionPlugin),
    },
    Builtin {
        crate_name: "distill-graph",
        make: || Box::new(distill_graph::GraphPlugin::default()),
    },
    Builtin {
        crate_name: "distill-audio",
        make: || Box::new(distill_audio::AudioPlugin),
    },
    Builtin {
        crate_name: "distill-text",
        make: || Box::new(distill_text::TextPlugin::default()),
    },
    Builtin {
        crate_name: "distill-detection",
        make: || Box::new(distill_detection::DetectionPlugin),
    },
];

/// The project's plugins.toml, compiled in: used when the working directory has no plugins.toml of its own.
const PROJECT_REGISTRY: &str = include_str!("../../../plugins.toml");

/// Knowledge distillation on candle: train a teacher, a student alone and a distilled student, and compare.
#[derive(Parser)]
#[command(name = "distill", version, about, long_about = None)]
struct Cli {
    /// A user plugin registry merged over the project's plugins.toml (default: $DISTILL_REGISTRY).
    #[arg(long, global = true)]
    registry: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Dirs {
    /// Data dir (default: $DISTILL_DATA, else datasets/).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Pretrained-models dir (default: $DISTILL_MODELS, else models/).
    #[arg(long, global = true)]
    models_dir: Option<PathBuf>,
    /// Compute device: cpu or cuda:N.
    #[arg(long, default_value = "cpu", global = true)]
    device: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run a recipe: teacher, student from scratch, distilled student; writes report.json and report.md.
    Run {
        /// The recipe (TOML).
        recipe: PathBuf,
        /// Apply the recipe's [quick] overrides (a short run).
        #[arg(long)]
        quick: bool,
        /// Seed(s) to run instead of the recipe's (repeatable).
        #[arg(long = "seed")]
        seeds: Vec<u64>,
        /// Output dir (default: runs/RECIPE or runs/RECIPE-quick).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run found in the output dir (its recipe must be the one the run started with).
        #[arg(long)]
        resume: bool,
        /// Recipe keys that may differ from the run's recorded recipe, comma-separated: a key
        /// (`teacher.epochs`) or a table above keys (`teacher`). Extends epochs of a finished phase.
        #[arg(long, value_delimiter = ',', value_name = "KEYS")]
        allow_changed: Vec<String>,
        /// Trained-teacher cache (default: $DISTILL_CACHE, else .distill-cache).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Do not read or write the teacher cache.
        #[arg(long)]
        no_cache: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Validate a recipe without data or training (keys, names, model specs, feature shapes).
    Check {
        /// The recipe (TOML).
        recipe: PathBuf,
        /// Check the recipe with its [quick] overrides applied.
        #[arg(long)]
        quick: bool,
    },
    /// List the plugins, or show one.
    Plugins {
        #[command(subcommand)]
        what: Option<PluginsCmd>,
    },
    /// Evaluate a saved model (a model.safetensors written by `distill run` or `distill export`) on its test set.
    Eval {
        /// The checkpoint; its card.json must be beside it.
        checkpoint: PathBuf,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Run the benchmark recipes of every plugin (or a suite file's runs) and write one report with plots;
    /// resumable: a finished run is not redone.
    Bench(bench::BenchArgs),
    /// Compare two reports, or render one again.
    Report {
        #[command(subcommand)]
        what: report_cmd::ReportCmd,
    },
    /// Download data sets (resumable, checksummed) and check what is on disk: fetch, verify, list.
    Data {
        #[command(subcommand)]
        what: data::DataCmd,
    },
    /// The trained-teacher cache: list its entries, verify them, or clear it.
    Cache {
        #[command(subcommand)]
        what: CacheCmd,
        /// The cache (default: $DISTILL_CACHE, else .distill-cache).
        #[arg(long, global = true)]
        cache_dir: Option<PathBuf>,
    },
    /// Export a trained student (safetensors + JSON model card) from a run dir.
    Export {
        /// The run's output dir.
        run: PathBuf,
        /// Where to write model.safetensors and card.json.
        #[arg(long)]
        to: PathBuf,
        /// Which model: distilled, scratch or teacher.
        #[arg(long, default_value = "distilled")]
        phase: String,
        /// Which seed's model.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// One line per entry: key, plugin, data set, recipe, seed, teacher metric, size, date.
    List,
    /// Check every entry's weights against their checksum; exits 2 naming each damaged entry.
    Verify,
    /// Remove every entry.
    Clear,
}

#[derive(Subcommand)]
enum PluginsCmd {
    /// Show one plugin's manifest.
    Info {
        /// Plugin name.
        name: String,
        /// Print the manifest as JSON (with `source` and `origin`).
        #[arg(long)]
        json: bool,
    },
}

/// The registry. The project's is `./plugins.toml` when that file declares builtin plugins (the project root's,
/// possibly edited), else the one compiled into the binary. A `./plugins.toml` that declares no builtin (a
/// third-party plugin's own registry) is not the project's: it only adds its plugins, like the user registry
/// (`--registry`, else `$DISTILL_REGISTRY`), which is merged last.
fn registry(user: Option<&Path>) -> Result<Registry> {
    let cwd = std::env::current_dir().context("current directory")?;
    let local = Path::new("plugins.toml");
    let builtin = || Registry::parse(PROJECT_REGISTRY, "plugins.toml (built in)", &cwd);
    let user = user
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("DISTILL_REGISTRY").map(PathBuf::from));
    let same_file = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    let mut reg = if local.is_file() {
        let here = Registry::from_file(local)?;
        let declares_builtins = here
            .entries()
            .iter()
            .any(|e| e.source == distill_registry::Source::Builtin);
        if declares_builtins {
            here
        } else {
            let mut reg = builtin()?;
            if !user.as_deref().is_some_and(|u| same_file(u, local)) {
                reg.merge(here)?;
            }
            reg
        }
    } else {
        builtin()?
    };
    if let Some(u) = user {
        reg.merge(Registry::from_file(&u)?)?;
    }
    Ok(reg)
}

fn find_plugin(reg: &Registry, name: &str) -> Result<Box<dyn Plugin>> {
    Ok(reg.load(name, BUILTINS)?)
}

fn device(s: &str) -> Result<candle_core::Device> {
    if s == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    if let Some(n) = s.strip_prefix("cuda:") {
        let n: usize = n
            .parse()
            .map_err(|_| anyhow!("--device {s}: expected cuda:N with N a number"))?;
        if !candle_core::utils::cuda_is_available() {
            bail!("--device {s}: this build has no CUDA support (rebuild with `--features cuda`)");
        }
        return Ok(candle_core::Device::new_cuda(n)?);
    }
    bail!("--device {s}: expected cpu or cuda:N")
}

fn dir_from(flag: &Option<PathBuf>, env: &str, default: &str) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn check_data_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "data dir {} does not exist (set --data-dir or DISTILL_DATA, or fetch the data set into it)",
            dir.display()
        );
    }
    Ok(())
}

/// A model card written beside every saved model.
#[derive(serde::Serialize, serde::Deserialize)]
struct Card {
    plugin: String,
    recipe: String,
    dataset: String,
    phase: String,
    seed: u64,
    model: String,
    metric: serde_json::Value,
    recipe_toml: String,
}

#[allow(clippy::too_many_arguments)]
fn cmd_run(
    reg: &Registry,
    recipe_path: &Path,
    quick: bool,
    seeds: Vec<u64>,
    out: Option<PathBuf>,
    resume: bool,
    allow_changed: Vec<String>,
    cache_dir: Option<PathBuf>,
    no_cache: bool,
    quiet: bool,
    dirs: &Dirs,
) -> Result<()> {
    let mut recipe = Recipe::load(recipe_path, quick)?;
    if !seeds.is_empty() {
        recipe.seeds = seeds;
        recipe.validate("--seed")?;
    }
    if !allow_changed.is_empty() && !resume {
        bail!("--allow-changed only applies with --resume");
    }
    let plugin = find_plugin(reg, &recipe.plugin)
        .with_context(|| format!("{}: `plugin`", recipe_path.display()))?;
    let data_dir = dir_from(&dirs.data_dir, "DISTILL_DATA", "datasets");
    check_data_dir(&data_dir)?;
    let out_dir = out.unwrap_or_else(|| {
        PathBuf::from("runs").join(if quick {
            format!("{}-quick", recipe.name)
        } else {
            recipe.name.clone()
        })
    });
    let ctx = RunContext {
        data_dir,
        models_dir: dir_from(&dirs.models_dir, "DISTILL_MODELS", "models"),
        out_dir: out_dir.clone(),
        cache_dir: if no_cache {
            None
        } else {
            Some(dir_from(&cache_dir, "DISTILL_CACHE", ".distill-cache"))
        },
        device: device(&dirs.device)?,
        quick,
        resume,
        quiet,
        recipe_path: Some(recipe_path.to_path_buf()),
        git_revision: git_revision(),
        allow_changed,
        plugin_identity: distill_registry::identity(reg.get(&recipe.plugin)?, plugin.as_ref())?,
        no_training: false,
    };
    // held until the report is written: a second run or resume of these seeds exits 2 naming this process
    let _locks = distill_core::run_record::lock_seeds(&out_dir, &recipe.seeds)?;
    let run = plugin.run(&recipe, &ctx)?;
    write_cards(&run, &recipe, &out_dir)?;
    let report = Report::new(vec![run], ctx.git_revision.clone());
    write_report(&report, &out_dir)?;
    println!("{}", report.to_markdown());
    println!("wrote {}", out_dir.join("report.json").display());
    Ok(())
}

/// Writes a model card beside every saved model of a finished run in `out_dir`.
fn write_cards(
    run: &distill_core::report::RunReport,
    recipe: &Recipe,
    out_dir: &Path,
) -> Result<()> {
    for (phase, summary) in [
        ("teacher", &run.teacher),
        ("scratch", &run.scratch),
        ("distilled", &run.distilled),
    ] {
        for seed in &run.seeds {
            let dir = out_dir.join(format!("seed-{seed}")).join(phase);
            let card = Card {
                plugin: run.plugin.clone(),
                recipe: run.recipe.clone(),
                dataset: run.dataset.clone(),
                phase: phase.to_string(),
                seed: *seed,
                model: match phase {
                    "teacher" => toml::to_string(&recipe.teacher.model)?,
                    _ => toml::to_string(&recipe.student.model)?,
                },
                metric: serde_json::json!({ "name": run.metric.name, "summary": summary.metric, "params": summary.params }),
                recipe_toml: run.recipe_toml.clone(),
            };
            distill_core::checkpoint::write_json_atomic(&card, &dir.join("card.json"))?;
        }
    }
    Ok(())
}

fn cmd_eval(reg: &Registry, checkpoint: &Path, dirs: &Dirs) -> Result<()> {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    let card_path = dir.join("card.json");
    if !checkpoint.exists() {
        bail!("{}: file not found", checkpoint.display());
    }
    let card: Card = read_json(&card_path).map_err(|e| {
        anyhow!("{e} (every saved model needs the card.json written beside it by `distill run`)")
    })?;
    let recipe = Recipe::parse(&card.recipe_toml, &card_path.display().to_string(), false)?;
    let plugin = find_plugin(reg, &card.plugin)?;
    let data_dir = dir_from(&dirs.data_dir, "DISTILL_DATA", "datasets");
    check_data_dir(&data_dir)?;
    let ctx = RunContext {
        device: device(&dirs.device)?,
        ..RunContext::new(data_dir, dir)
    };
    let model: toml::Table = toml::from_str(&card.model)?;
    let (describe, e) = plugin.evaluate(&recipe, &model, checkpoint, &ctx)?;
    let metric = card
        .metric
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("metric");
    println!(
        "{describe} ({}, {} test set): {metric} = {:.4}",
        card.plugin, card.dataset, e.metric
    );
    for (k, v) in &e.extra {
        println!("  {k} = {v:.4}");
    }
    Ok(())
}

fn cmd_export(run: &Path, to: &Path, phase: &str, seed: u64) -> Result<()> {
    if !distill_core::train::files::PHASES.contains(&phase) {
        bail!("--phase {phase}: expected teacher, scratch or distilled");
    }
    let src = run.join(format!("seed-{seed}")).join(phase);
    let model = src.join("model.safetensors");
    if !model.exists() {
        bail!(
            "{}: not found (is {} the output dir of a finished `distill run`?)",
            model.display(),
            run.display()
        );
    }
    std::fs::create_dir_all(to).with_context(|| to.display().to_string())?;
    let bytes = std::fs::read(&model).with_context(|| model.display().to_string())?;
    distill_core::checkpoint::write_atomic(&to.join("model.safetensors"), &bytes)?;
    let card = std::fs::read(src.join("card.json"))
        .with_context(|| src.join("card.json").display().to_string())?;
    distill_core::checkpoint::write_atomic(&to.join("card.json"), &card)?;
    println!(
        "exported {} ({} bytes) and its card to {}",
        model.display(),
        bytes.len(),
        to.display()
    );
    Ok(())
}

fn cmd_cache(what: CacheCmd, cache_dir: &Option<PathBuf>) -> Result<()> {
    let dir = dir_from(cache_dir, "DISTILL_CACHE", ".distill-cache");
    let cache = distill_core::teacher_cache::TeacherCache::new(&dir);
    match what {
        CacheCmd::List => {
            let entries = cache.list()?;
            for (key, info, size) in &entries {
                match info {
                    Some(i) => println!(
                        "{key}  {}  {}  {}  seed {}  {:.4}  {:.1} MB  {}",
                        i.plugin,
                        i.dataset,
                        i.recipe,
                        i.seed,
                        i.metric,
                        *size as f64 / 1e6,
                        distill_core::report::utc_date(i.created_unix)
                    ),
                    None => println!("{key}  (no entry.json)  {:.1} MB", *size as f64 / 1e6),
                }
            }
            println!("{} entries in {}", entries.len(), cache.root().display());
        }
        CacheCmd::Verify => {
            let entries = cache.list()?;
            let mut bad = Vec::new();
            for (key, _, _) in &entries {
                match cache.verify(key) {
                    Ok(()) => println!("{key}  ok"),
                    Err(e) => {
                        println!("{key}  DAMAGED: {e}");
                        bad.push(key.clone());
                    }
                }
            }
            if !bad.is_empty() {
                bail!(
                    "{} of {} cache entries are damaged ({}); a run retrains them, or `distill cache clear`",
                    bad.len(),
                    entries.len(),
                    bad.join(", ")
                );
            }
            println!(
                "{} entries verified in {}",
                entries.len(),
                cache.root().display()
            );
        }
        CacheCmd::Clear => {
            let n = cache.clear()?;
            println!("removed {n} entries from {}", cache.root().display());
        }
    }
    Ok(())
}

fn cmd_plugins(reg: &Registry, what: Option<PluginsCmd>) -> Result<()> {
    match what {
        None => {
            let mut rows: Vec<[String; 7]> = vec![[
                "name", "source", "domain", "version", "models", "losses", "recipes",
            ]
            .map(String::from)];
            let mut failed = Vec::new();
            for e in reg.entries() {
                let (src, name) = (e.source.as_str().to_string(), e.name.clone());
                let blank = || String::new();
                if !e.enabled {
                    rows.push([
                        name,
                        src,
                        "(disabled)".into(),
                        blank(),
                        blank(),
                        blank(),
                        blank(),
                    ]);
                    continue;
                }
                match distill_registry::load_entry(e, BUILTINS) {
                    Ok(p) => {
                        let m = p.manifest();
                        rows.push([
                            name,
                            src,
                            m.domain,
                            m.version,
                            m.models.len().to_string(),
                            m.losses.len().to_string(),
                            m.recipes.len().to_string(),
                        ]);
                    }
                    Err(err) => {
                        rows.push([
                            name,
                            src,
                            "(failed to load)".into(),
                            blank(),
                            blank(),
                            blank(),
                            blank(),
                        ]);
                        failed.push(format!("{err}"));
                    }
                }
            }
            let mut width = [0usize; 7];
            for r in &rows {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for r in &rows {
                let line: Vec<String> = r
                    .iter()
                    .zip(width)
                    .enumerate()
                    .map(|(i, (c, w))| {
                        if i < 4 {
                            format!("{c:<w$}")
                        } else {
                            format!("{c:>w$}")
                        }
                    })
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
            println!("registry: {}", reg.files().join(" + "));
            if !failed.is_empty() {
                bail!("{}", failed.join("; "));
            }
        }
        Some(PluginsCmd::Info { name, json }) => {
            let e = reg.get(&name)?;
            let m = find_plugin(reg, &name)?.manifest();
            if json {
                let mut v = serde_json::to_value(&m)?;
                v["source"] = e.source.as_str().into();
                v["origin"] = e.origin.clone().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{} ({}, {})", m.name, e.source.as_str(), e.origin);
            if let Some(p) = &e.path {
                println!("  library      {}", p.display());
            }
            if let Some(c) = &e.crate_name {
                println!("  crate        {c}");
            }
            println!("  domain       {}", m.domain);
            println!("  version      {}", m.version);
            println!("  description  {}", m.description);
            println!("  datasets     {}", m.datasets.join(", "));
            println!("  models       {}", m.models.join(", "));
            println!("  losses       {}", m.losses.join(", "));
            println!("  recipes      {}", m.recipes.join(", "));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    distill_core::runtime::init();
    let cli = Cli::parse();
    let result = registry(cli.registry.as_deref()).and_then(|reg| dispatch(&reg, cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(reg: &Registry, command: Command) -> Result<()> {
    match command {
        Command::Run {
            recipe,
            quick,
            seeds,
            out,
            resume,
            allow_changed,
            cache_dir,
            no_cache,
            quiet,
            dirs,
        } => cmd_run(
            reg,
            &recipe,
            quick,
            seeds,
            out,
            resume,
            allow_changed,
            cache_dir,
            no_cache,
            quiet,
            &dirs,
        ),
        Command::Check { recipe, quick } => (|| {
            let r = Recipe::load(&recipe, quick)?;
            let plugin = find_plugin(reg, &r.plugin)
                .with_context(|| format!("{}: `plugin`", recipe.display()))?;
            // no data is read; the models dir serves networks built on pretrained configs
            let mut ctx = RunContext::new(dir_from(&None, "DISTILL_DATA", "datasets"), ".");
            ctx.models_dir = dir_from(&None, "DISTILL_MODELS", "models");
            let s = plugin
                .check(&r, &ctx)
                .with_context(|| recipe.display().to_string())?;
            if !quick && r.quick.is_some() {
                // the [quick] overrides build too (model specs, losses, feature shapes)
                plugin
                    .check(&Recipe::load(&recipe, true)?, &ctx)
                    .with_context(|| format!("{} [quick]", recipe.display()))?;
            }
            println!("{}: ok", recipe.display());
            println!("  teacher  {} ({} params)", s.teacher, s.teacher_params);
            println!("  student  {} ({} params)", s.student, s.student_params);
            println!("  losses   {}", s.losses.join(" + "));
            Ok(())
        })(),
        Command::Plugins { what } => cmd_plugins(reg, what),
        Command::Cache { what, cache_dir } => cmd_cache(what, &cache_dir),
        Command::Eval { checkpoint, dirs } => cmd_eval(reg, &checkpoint, &dirs),
        Command::Export {
            run,
            to,
            phase,
            seed,
        } => cmd_export(&run, &to, &phase, seed),
        Command::Bench(args) if args.speed_worker.is_some() => {
            let opts = args.speed_options()?;
            let name = args.speed_worker.as_deref().unwrap_or_default();
            let m = speed::run_worker(name, &opts.data_dir, opts.steps)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        Command::Bench(args) if args.speed => speed::cmd_speed(&args.speed_options()?),
        Command::Bench(args) if args.status.is_some() => {
            sweep::cmd_status(args.status.as_deref().unwrap_or(Path::new(".")))
        }
        Command::Bench(args) if args.executor == "slurm" => {
            let (suite, slurm_args, dry_run) =
                (args.suite.clone(), args.slurm_args.clone(), args.dry_run);
            let opts = args.into_options()?;
            sweep::cmd_sweep(reg, &opts, &suite, slurm_args.as_deref(), dry_run)
        }
        Command::Bench(args) => bench::cmd_bench(reg, args.into_options()?, git_revision()),
        Command::Report { what } => report_cmd::cmd_report(what),
        Command::Data { what } => data::cmd_data(what),
    }
}
