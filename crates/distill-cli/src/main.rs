//! `distill`: knowledge distillation from the command line.
//!
//! Every error a user can cause prints one line (`error: ...`) naming the file and the problem, and exits 2.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use distill_core::{
    checkpoint::read_json,
    pipeline::{check_recipe, write_report},
    recipe::Recipe,
    report::Report,
    Plugin, RunContext,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Knowledge distillation on candle: train a teacher, a student alone and a distilled student, and compare.
#[derive(Parser)]
#[command(name = "distill", version, about, long_about = None)]
struct Cli {
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
        /// Continue the run found in the output dir.
        #[arg(long)]
        resume: bool,
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
enum PluginsCmd {
    /// Show one plugin's manifest.
    Info {
        /// Plugin name.
        name: String,
    },
}

fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![
        Box::new(distill_vision::VisionPlugin),
        Box::new(distill_audio::AudioPlugin),
    ]
}

fn find_plugin(name: &str) -> Result<Box<dyn Plugin>> {
    let all = plugins();
    let known: Vec<String> = all.iter().map(|p| p.manifest().name).collect();
    all.into_iter()
        .find(|p| p.manifest().name == name)
        .ok_or_else(|| anyhow!("unknown plugin `{name}` (known: {})", known.join(", ")))
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
    recipe_path: &Path,
    quick: bool,
    seeds: Vec<u64>,
    out: Option<PathBuf>,
    resume: bool,
    cache_dir: Option<PathBuf>,
    no_cache: bool,
    quiet: bool,
    dirs: &Dirs,
) -> Result<()> {
    let mut recipe = Recipe::load(recipe_path, quick)?;
    if !seeds.is_empty() {
        recipe.seeds = seeds;
    }
    let plugin = find_plugin(&recipe.plugin)
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
    };
    let run = plugin.run(&recipe, &ctx)?;
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
    let report = Report::new(vec![run], ctx.git_revision.clone());
    write_report(&report, &out_dir)?;
    println!("{}", report.to_markdown());
    println!("wrote {}", out_dir.join("report.json").display());
    Ok(())
}

fn cmd_eval(checkpoint: &Path, dirs: &Dirs) -> Result<()> {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    let card_path = dir.join("card.json");
    if !checkpoint.exists() {
        bail!("{}: file not found", checkpoint.display());
    }
    let card: Card = read_json(&card_path).map_err(|e| {
        anyhow!("{e} (every saved model needs the card.json written beside it by `distill run`)")
    })?;
    let recipe = Recipe::parse(&card.recipe_toml, &card_path.display().to_string(), false)?;
    let plugin = find_plugin(&card.plugin)?;
    let data_dir = dir_from(&dirs.data_dir, "DISTILL_DATA", "datasets");
    check_data_dir(&data_dir)?;
    let ctx = RunContext {
        device: device(&dirs.device)?,
        ..RunContext::new(data_dir, dir)
    };
    let task = plugin.load_task(&recipe, &ctx)?;
    let model: toml::Table = toml::from_str(&card.model)?;
    let net = plugin.build_network(&model, task.info(), 0, &ctx.device)?;
    distill_core::network::load_network(net.as_ref(), checkpoint, &ctx.device)?;
    let e = distill_core::pipeline::evaluate_test(
        task.as_ref(),
        net.as_ref(),
        recipe.data.eval_batch_size,
    )?;
    println!(
        "{} ({}, {} test set): {} = {:.4}",
        net.describe(),
        card.plugin,
        card.dataset,
        task.info().metric.name,
        e.metric
    );
    for (k, v) in &e.extra {
        println!("  {k} = {v:.4}");
    }
    Ok(())
}

fn cmd_export(run: &Path, to: &Path, phase: &str, seed: u64) -> Result<()> {
    if !["teacher", "scratch", "distilled"].contains(&phase) {
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

fn cmd_plugins(what: Option<PluginsCmd>) -> Result<()> {
    match what {
        None => {
            println!(
                "{:<22} {:<8} {:<22} {:<8} models / losses / recipes",
                "name", "source", "domain", "version"
            );
            for p in plugins() {
                let m = p.manifest();
                println!(
                    "{:<22} {:<8} {:<22} {:<8} {} / {} / {}",
                    m.name,
                    "builtin",
                    m.domain,
                    m.version,
                    m.models.len(),
                    m.losses.len(),
                    m.recipes.len()
                );
            }
        }
        Some(PluginsCmd::Info { name }) => {
            let m = find_plugin(&name)?.manifest();
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    distill_core::runtime::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            recipe,
            quick,
            seeds,
            out,
            resume,
            cache_dir,
            no_cache,
            quiet,
            dirs,
        } => cmd_run(
            &recipe, quick, seeds, out, resume, cache_dir, no_cache, quiet, &dirs,
        ),
        Command::Check { recipe, quick } => (|| {
            let r = Recipe::load(&recipe, quick)?;
            let plugin = find_plugin(&r.plugin)
                .with_context(|| format!("{}: `plugin`", recipe.display()))?;
            let s =
                check_recipe(plugin.as_ref(), &r).with_context(|| recipe.display().to_string())?;
            println!("{}: ok", recipe.display());
            println!("  teacher  {} ({} params)", s.teacher, s.teacher_params);
            println!("  student  {} ({} params)", s.student, s.student_params);
            println!("  losses   {}", s.losses.join(" + "));
            Ok(())
        })(),
        Command::Plugins { what } => cmd_plugins(what),
        Command::Eval { checkpoint, dirs } => cmd_eval(&checkpoint, &dirs),
        Command::Export {
            run,
            to,
            phase,
            seed,
        } => cmd_export(&run, &to, &phase, seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}
