//! `distill`: knowledge distillation from the command line.
//!
//! This file parses the command line and dispatches; each command lives in its own module.
//!
//! Every error a user can cause prints one line (`error: ...`) naming the file and the problem, and exits 2.

mod bench;
mod cache_cmd;
mod cards;
mod data;
mod dirs;
mod export;
mod latency_text;
mod methods_table;
mod ort;
mod plots;
mod plugins;
mod predict;
mod report_cmd;
mod run_cmd;
mod run_markdown;
mod speed;
mod stats;
mod suite;
mod sweep;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use distill_registry::Registry;

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
        dirs: dirs::Dirs,
    },
    /// Validate a recipe without data or training (keys, names, model specs, feature shapes).
    Check {
        /// The recipe (TOML).
        #[arg(required_unless_present = "losses")]
        recipe: Option<PathBuf>,
        /// List every loss a recipe can name instead: the core losses with their options, then each
        /// plugin's domain losses.
        #[arg(long, conflicts_with_all = ["quick", "latency"])]
        losses: bool,
        /// Check the recipe with its [quick] overrides applied.
        #[arg(long)]
        quick: bool,
        /// Also time the (untrained) teacher and student at batch 1 and 256 and compare the speed-up with
        /// their FLOPs ratio.
        #[arg(long)]
        latency: bool,
    },
    /// List the plugins, or show one.
    Plugins {
        #[command(subcommand)]
        what: Option<plugins::PluginsCmd>,
    },
    /// Evaluate a saved model (a model.safetensors written by `distill run` or `distill export`) on its test set.
    Eval {
        /// The checkpoint; its card.json must be beside it.
        checkpoint: PathBuf,
        #[command(flatten)]
        dirs: dirs::Dirs,
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
        what: cache_cmd::CacheCmd,
        /// The cache (default: $DISTILL_CACHE, else .distill-cache).
        #[arg(long, global = true)]
        cache_dir: Option<PathBuf>,
    },
    /// Export a trained network from a run dir with its card: distill's safetensors, ONNX, or Hugging Face's
    /// layout (text students); written atomically (nothing is left at DIR on an error).
    Export {
        /// The run's output dir.
        run: PathBuf,
        /// The export dir (must not exist unless --force).
        #[arg(long)]
        to: PathBuf,
        /// safetensors (distill's weights), onnx (model.onnx) or hf (config.json, model.safetensors and
        /// tokenizer files for transformers; text students only).
        #[arg(long, default_value = "safetensors")]
        format: String,
        /// Which model: distilled, scratch or teacher.
        #[arg(long, default_value = "distilled")]
        phase: String,
        /// Which seed's model.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Replace an existing export at --to.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        dirs: dirs::Dirs,
    },
    /// Run an exported network on image files, WAV files or text lines: the top-k classes with their
    /// probabilities, or a detector's boxes.
    Predict {
        /// The export dir (written by `distill export`).
        model: PathBuf,
        /// Input files, or text lines for a text model; `-` reads lines from stdin.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Classes shown per input.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        /// Which model of the export runs: auto (the export's format), safetensors or onnx.
        #[arg(long, default_value = "auto")]
        format: String,
        #[command(flatten)]
        dirs: dirs::Dirs,
    },
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`distill check R | head -1`) would panic; a CLI
    // should end quietly, as with the default action
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default before any other thread exists
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    distill_core::runtime::init();
    let cli = Cli::parse();
    let result =
        plugins::registry(cli.registry.as_deref()).and_then(|reg| dispatch(&reg, cli.command));
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
        } => run_cmd::cmd_run(
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
        Command::Check {
            recipe,
            losses,
            quick,
            latency,
        } => match recipe {
            Some(recipe) if !losses => run_cmd::cmd_check(reg, &recipe, quick, latency),
            _ => run_cmd::cmd_list_losses(reg),
        },
        Command::Plugins { what } => plugins::cmd_plugins(reg, what),
        Command::Cache { what, cache_dir } => cache_cmd::cmd_cache(what, &cache_dir),
        Command::Eval { checkpoint, dirs } => run_cmd::cmd_eval(reg, &checkpoint, &dirs),
        Command::Export {
            run,
            to,
            format,
            phase,
            seed,
            force,
            dirs,
        } => export::cmd_export(
            reg,
            &export::ExportArgs {
                run,
                to,
                format,
                phase,
                seed,
                force,
            },
            &dirs,
        ),
        Command::Predict {
            model,
            inputs,
            top_k,
            json,
            format,
            dirs,
        } => predict::cmd_predict(
            reg,
            &predict::PredictArgs {
                model,
                inputs,
                top_k,
                json,
                format,
            },
            &dirs,
        ),
        Command::Bench(args) if args.speed_worker.is_some() => {
            let opts = args.speed_options()?;
            let name = args.speed_worker.as_deref().unwrap_or_default();
            let m = speed::run_worker(reg, name, &opts.data_dir, opts.steps)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        Command::Bench(args) if args.speed => speed::cmd_speed(&args.speed_options()?),
        Command::Bench(args) if args.onnxruntime => {
            ort::cmd_ort(reg, &args.ort_options()?).map(|_| ())
        }
        Command::Bench(args) if args.check => bench::cmd_check_suite(reg, &args),
        Command::Bench(args) if args.status.is_some() => {
            sweep::cmd_status(args.status.as_deref().unwrap_or(Path::new(".")))
        }
        Command::Bench(args) if args.executor == "slurm" => {
            let (suite, slurm_args, dry_run) =
                (args.suite.clone(), args.slurm_args.clone(), args.dry_run);
            let opts = args.into_options()?;
            sweep::cmd_sweep(reg, &opts, &suite, slurm_args.as_deref(), dry_run)
        }
        Command::Bench(args) => {
            bench::cmd_bench(reg, args.into_options()?, run_cmd::git_revision())
        }
        Command::Report { what } => report_cmd::cmd_report(what),
        Command::Data { what } => data::cmd_data(what),
    }
}
