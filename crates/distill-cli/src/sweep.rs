//! `distill bench --executor slurm`: a benchmark sweep as a Slurm job array.
//!
//! The bench plans its runs as a local bench does, writes each run's recipe as it will run (suite overrides and
//! `[quick]` applied) to `OUT/.sweep/recipes/NAME.toml`, and submits two scripts: `OUT/.sweep/array.sbatch`, a
//! job array with one task per recipe × seed that is not finished yet (each task is one `distill run --seed S
//! --out OUT/NAME --resume`, which locks only its seed's directory), and `OUT/.sweep/merge.sbatch`, which
//! depends on the array (`afterany`) and runs `distill bench --collect` with the same plan: the report, plots and
//! failures exactly as a local bench writes them. `OUT/.sweep/tasks.json` records the tasks, their job ids and log
//! paths; `distill bench --status OUT` reads it and the run dirs to say which task is done, running, failed or
//! pending. Resubmitting the same command submits only the unfinished tasks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use distill_core::checkpoint::{read_json, write_atomic, write_json_atomic};
use serde::{Deserialize, Serialize};

use crate::suite::{default_out, plan, seed_finished, BenchOptions, PlannedRun};

/// One array task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The array index.
    pub index: usize,
    /// The run's name (its dir is `OUT/NAME`).
    pub run: String,
    /// The seed this task trains.
    pub seed: u64,
    /// The task's Slurm log (known once the array is submitted).
    pub log: Option<String>,
}

/// `OUT/.sweep/tasks.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    /// The array's job id (none when every task had finished before, or with `--dry-run`).
    pub array_job: Option<String>,
    /// The merge job's id.
    pub merge_job: Option<String>,
    /// When it was submitted (seconds since the Unix epoch).
    pub submitted_unix: u64,
    /// The tasks of this submission.
    pub tasks: Vec<Task>,
    /// Every run of the plan with its seeds, for `--status`.
    pub runs: Vec<(String, Vec<u64>)>,
}

fn sweep_dir(out: &Path) -> PathBuf {
    out.join(".sweep")
}

/// The Slurm logs of a run's tasks of the last submission that did not exit 0 (for the merge job's error).
pub fn unsuccessful_task_logs(out: &Path, run: &str) -> Vec<String> {
    let Ok(sweep) = read_json::<Sweep>(&sweep_dir(out).join("tasks.json")) else {
        return Vec::new();
    };
    sweep
        .tasks
        .iter()
        .filter(|t| t.run == run && exit_code(out, run, t.seed).as_deref() != Some("0"))
        .filter_map(|t| t.log.clone())
        .collect()
}

/// The exit code a sweep task recorded for `run`'s `seed`.
fn exit_code(out: &Path, run: &str, seed: u64) -> Option<String> {
    std::fs::read_to_string(sweep_dir(out).join(format!("exit/{run}.seed-{seed}")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether a run's seed is done: every phase's result is there, or (for a plugin that lays its run dir out
/// otherwise, like leave-one-speaker-out folds) its sweep task exited 0.
fn seed_done(out: &Path, run: &str, seed: u64) -> bool {
    seed_finished(&out.join(run), seed) || exit_code(out, run, seed).as_deref() == Some("0")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| p.display().to_string())
}

/// Single-quotes a string for bash.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Arguments single-quoted for bash, joined by spaces.
fn sh_join(args: &[String]) -> String {
    args.iter().map(|a| sh(a)).collect::<Vec<_>>().join(" ")
}

fn sbatch_lines(slurm_args: Option<&str>) -> String {
    slurm_args
        .unwrap_or_default()
        .split_whitespace()
        .map(|a| format!("#SBATCH {a}\n"))
        .collect()
}

/// The arguments that make a `distill bench` plan the same runs with the same directories.
fn plan_args(opts: &BenchOptions, suite: &str, out: &Path) -> Result<Vec<String>> {
    let mut a = vec!["--suite".to_string(), suite.to_string()];
    if let Some(p) = &opts.plugins {
        a.extend(["--plugins".into(), p.join(",")]);
    }
    if let Some(n) = opts.seeds {
        a.extend(["--seeds".into(), n.to_string()]);
    }
    a.extend(["--out".into(), out.display().to_string()]);
    a.extend(dir_args(opts)?);
    Ok(a)
}

/// `--data-dir`, `--models-dir`, the cache and the device, as absolute paths.
fn dir_args(opts: &BenchOptions) -> Result<Vec<String>> {
    let mut a = vec![
        "--data-dir".to_string(),
        absolute(&opts.data_dir)?.display().to_string(),
        "--models-dir".into(),
        absolute(&opts.models_dir)?.display().to_string(),
        "--device".into(),
        opts.device_name.clone(),
    ];
    match &opts.cache_dir {
        Some(c) => a.extend(["--cache-dir".into(), absolute(c)?.display().to_string()]),
        None => a.push("--no-cache".into()),
    }
    Ok(a)
}

fn submit(script: &Path, dependency: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if let Some(d) = dependency {
        cmd.arg(format!("--dependency=afterany:{d}"));
    }
    let out = cmd
        .arg(script)
        .output()
        .context("running sbatch (is Slurm installed and on PATH?)")?;
    if !out.status.success() {
        bail!(
            "sbatch {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`
    Ok(text
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `distill bench --executor slurm`: writes the sweep's scripts and submits them (or prints them with
/// `dry_run`).
pub fn cmd_sweep(
    reg: &distill_registry::Registry,
    opts: &BenchOptions,
    suite: &str,
    slurm_args: Option<&str>,
    dry_run: bool,
) -> Result<()> {
    let runs: Vec<PlannedRun> = plan(reg, &opts.suite, opts.plugins.as_deref(), opts.seeds)?;
    let out = absolute(&default_out(opts))?;
    let dir = sweep_dir(&out);
    for sub in ["recipes", "logs", "exit"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| dir.join(sub).display().to_string())?;
    }
    let exe = std::env::current_exe().context("the distill binary's path")?;
    let cwd = std::env::current_dir()?;
    for p in [&out, &cwd] {
        if p.display().to_string().contains(char::is_whitespace) {
            bail!(
                "{}: sbatch directives cannot hold a path with spaces; choose another --out or working directory",
                p.display()
            );
        }
    }

    let mut tasks = Vec::new();
    let mut previous_failures = Vec::new();
    for r in &runs {
        let name = &r.recipe.name;
        let mut shown = r.recipe.clone();
        shown.quick = None;
        let text = toml::to_string(&shown)?;
        write_atomic(&dir.join(format!("recipes/{name}.toml")), text.as_bytes())?;
        for &seed in &r.recipe.seeds {
            if seed_done(&out, name, seed) {
                continue;
            }
            if let Some(code) = exit_code(&out, name, seed) {
                previous_failures.push(format!("{name} seed {seed} (exit {code})"));
            }
            tasks.push(Task {
                index: tasks.len(),
                run: name.clone(),
                seed,
                log: None,
            });
        }
    }
    if !previous_failures.is_empty() {
        eprintln!(
            "resubmitting {} task(s) that failed before: {}",
            previous_failures.len(),
            previous_failures.join("; ")
        );
    }
    let quick_of = |run: &str| runs.iter().any(|r| r.recipe.name == run && r.quick);
    let extra = sbatch_lines(slurm_args);
    let mut lines = String::new();
    for t in &tasks {
        lines.push_str(&format!(
            "  {}\n",
            sh(&format!("{}|{}|{}", t.run, t.seed, quick_of(&t.run)))
        ));
    }
    let run_args = sh_join(&dir_args(opts)?);
    let array = format!(
        r#"#!/bin/bash
# distill sweep: one task per recipe x seed (written by `distill bench --executor slurm`)
#SBATCH --job-name=distill-sweep
#SBATCH --array=0-{last}
#SBATCH --output={logs_raw}/%A_%a.log
#SBATCH --chdir={cwd_raw}
{extra}set -uo pipefail
TASKS=(
{lines})
IFS='|' read -r NAME SEED QUICK <<< "${{TASKS[$SLURM_ARRAY_TASK_ID]}}"
QUICK_FLAG=()
if [ "$QUICK" = true ]; then QUICK_FLAG=(--quick); fi
{exe} run {recipes}/"$NAME".toml --seed "$SEED" --out {out}/"$NAME" --resume --quiet "${{QUICK_FLAG[@]}}" {run_args}
code=$?
echo "$code" > {exits}/"$NAME".seed-"$SEED"
exit "$code"
"#,
        last = tasks.len().saturating_sub(1),
        logs_raw = dir.join("logs").display(),
        cwd_raw = cwd.display(),
        exe = sh(&exe.display().to_string()),
        recipes = sh(&dir.join("recipes").display().to_string()),
        out = sh(&out.display().to_string()),
        exits = sh(&dir.join("exit").display().to_string()),
    );
    let merge_args = sh_join(&plan_args(opts, suite, &out)?);
    let merge = format!(
        r#"#!/bin/bash
# distill sweep: the report, once the array has ended (written by `distill bench --executor slurm`)
#SBATCH --job-name=distill-merge
#SBATCH --output={logs_raw}/merge_%j.log
#SBATCH --chdir={cwd_raw}
{extra}exec {exe} bench --collect --quiet {merge_args}
"#,
        logs_raw = dir.join("logs").display(),
        cwd_raw = cwd.display(),
        exe = sh(&exe.display().to_string()),
    );
    let array_path = dir.join("array.sbatch");
    let merge_path = dir.join("merge.sbatch");
    write_atomic(&array_path, array.as_bytes())?;
    write_atomic(&merge_path, merge.as_bytes())?;
    let mut sweep = Sweep {
        array_job: None,
        merge_job: None,
        submitted_unix: distill_core::report::unix_now(),
        tasks,
        runs: runs
            .iter()
            .map(|r| (r.recipe.name.clone(), r.recipe.seeds.clone()))
            .collect(),
    };
    if dry_run {
        if !sweep.tasks.is_empty() {
            println!("# {}\n{array}", array_path.display());
        }
        println!("# {}\n{merge}", merge_path.display());
        println!(
            "dry run: {} task(s) to submit, nothing submitted",
            sweep.tasks.len()
        );
        return Ok(());
    }
    if !sweep.tasks.is_empty() {
        let id = submit(&array_path, None)?;
        for t in &mut sweep.tasks {
            t.log = Some(
                dir.join(format!("logs/{id}_{}.log", t.index))
                    .display()
                    .to_string(),
            );
        }
        sweep.array_job = Some(id);
    }
    sweep.merge_job = Some(submit(&merge_path, sweep.array_job.as_deref())?);
    write_json_atomic(&sweep, &dir.join("tasks.json"))?;
    println!(
        "submitted {} task(s) as array job {} and the merge job {} (report: {}); progress: distill bench --status {}",
        sweep.tasks.len(),
        sweep.array_job.as_deref().unwrap_or("-"),
        sweep.merge_job.as_deref().unwrap_or("-"),
        out.join("report.json").display(),
        out.display()
    );
    Ok(())
}

/// `distill bench --status OUT`: every run × seed of the last sweep, done / running / failed / pending.
pub fn cmd_status(out: &Path) -> Result<()> {
    let path = sweep_dir(out).join("tasks.json");
    let sweep: Sweep = read_json(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e} (is {} the out dir of `distill bench --executor slurm`?)",
            out.display()
        )
    })?;
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (run, seeds) in &sweep.runs {
        for &seed in seeds {
            let done = seed_done(out, run, seed);
            let task = sweep.tasks.iter().find(|t| t.run == *run && t.seed == seed);
            let exit = exit_code(out, run, seed);
            let seed_dir = out.join(run).join(format!("seed-{seed}"));
            let running = seed_dir.is_dir()
                && matches!(
                    distill_core::run_record::RunLock::acquire(&seed_dir),
                    Err(distill_core::Error::Busy { .. })
                );
            let (state, detail) = if done {
                ("done", String::new())
            } else if running {
                ("running", String::new())
            } else if let Some(code) = exit.filter(|c| c != "0") {
                (
                    "failed",
                    format!(
                        " (exit {code}; log {})",
                        task.and_then(|t| t.log.clone())
                            .unwrap_or_else(|| "?".into())
                    ),
                )
            } else {
                ("pending", String::new())
            };
            *counts.entry(state).or_default() += 1;
            println!("{run:<24} seed {seed:<3} {state}{detail}");
        }
    }
    let report = out.join("report.json");
    println!(
        "{} done, {} running, {} failed, {} pending; array job {}, merge job {}; report {}",
        counts.get("done").unwrap_or(&0),
        counts.get("running").unwrap_or(&0),
        counts.get("failed").unwrap_or(&0),
        counts.get("pending").unwrap_or(&0),
        sweep.array_job.as_deref().unwrap_or("-"),
        sweep.merge_job.as_deref().unwrap_or("-"),
        if report.is_file() {
            report.display().to_string()
        } else {
            "not written yet".into()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(
            sbatch_lines(Some("--partition=gpu  --gres=gpu:1")),
            "#SBATCH --partition=gpu\n#SBATCH --gres=gpu:1\n"
        );
    }
}
