//! `distill run`, `distill check` and `distill eval`: one recipe, one saved model (`distill export` is in
//! export.rs).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use distill_core::{checkpoint::read_json, recipe::Recipe, report::Report, RunContext};
use distill_registry::Registry;

use crate::cards::{write_cards, Card};
use crate::dirs::{check_data_dir, data_dir, device, dir_from, Dirs};
use crate::plugins::find_plugin;
use crate::run_markdown::write_report;

/// The git revision of the working directory, recorded in reports (`None` outside a repository).
pub fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `distill check --losses`: the core losses with the options each takes, then every plugin's domain losses
/// (options in their `params`, see the plugin's docs).
pub fn cmd_list_losses(reg: &Registry) -> Result<()> {
    println!("core losses (any plugin; docs/losses.md):");
    for name in distill_core::losses::CORE_LOSSES {
        let options = distill_core::losses::core_loss_options(name);
        let options = if options.is_empty() {
            "no options".to_string()
        } else {
            options.join(", ")
        };
        println!("  {name:8} {options}");
    }
    println!("  task     the plugin's own task loss");
    for entry in reg.entries() {
        let plugin = find_plugin(reg, &entry.name)?;
        let losses = plugin.manifest().losses;
        if !losses.is_empty() {
            println!("{} (plugin losses): {}", entry.name, losses.join(", "));
        }
    }
    Ok(())
}

/// `distill run RECIPE`.
#[allow(clippy::too_many_arguments)]
pub fn cmd_run(
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
    let data_dir = data_dir(&dirs.data_dir);
    crate::data::ensure_dataset(&data_dir, &recipe.dataset, dirs.fetch)?;
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
        measure_latency: false,
    };
    // held until the report is written: a second run or resume of these seeds exits 2 naming this process
    let _locks = distill_core::run_record::lock_seeds(&out_dir, &recipe.seeds)?;
    let run = plugin.run(&recipe, &ctx)?;
    write_cards(&run, &recipe, &out_dir)?;
    let report = Report::new(vec![run], ctx.git_revision.clone());
    write_report(&report, &out_dir)?;
    println!("{}", crate::run_markdown::run_markdown(&report));
    println!("wrote {}", out_dir.join("report.json").display());
    Ok(())
}

/// `distill check RECIPE [--quick]`: builds the recipe's networks and losses on zeros, no data.
pub fn cmd_check(reg: &Registry, recipe: &Path, quick: bool, latency: bool) -> Result<()> {
    let r = Recipe::load(recipe, quick)?;
    let plugin =
        find_plugin(reg, &r.plugin).with_context(|| format!("{}: `plugin`", recipe.display()))?;
    // no data is read; the models dir serves networks built on pretrained configs
    let mut ctx = RunContext::new(data_dir(&None), ".");
    ctx.models_dir = dir_from(&None, "DISTILL_MODELS", "models");
    ctx.measure_latency = latency;
    // an error located in the recipe file already names it
    let file = recipe.display().to_string();
    let named = |e: distill_core::Error, label: String| {
        let msg = e.to_string();
        if msg.starts_with(&file) {
            anyhow::Error::from(e)
        } else {
            anyhow::Error::from(e).context(label)
        }
    };
    let s = plugin.check(&r, &ctx).map_err(|e| named(e, file.clone()))?;
    if !quick && r.quick.is_some() {
        // the [quick] overrides build too (model specs, losses, feature shapes)
        let ctx = RunContext {
            measure_latency: false,
            ..ctx.clone()
        };
        plugin
            .check(&Recipe::load(recipe, true)?, &ctx)
            .map_err(|e| named(e, format!("{file} [quick]")))?;
    }
    println!("{}: ok", recipe.display());
    println!("  teacher  {} ({} params)", s.teacher, s.teacher_params);
    println!("  student  {} ({} params)", s.student, s.student_params);
    println!("  losses   {}", s.losses.join(" + "));
    if let Some((t, st)) = &s.latency {
        println!("{}", latency_lines(&s, t, st));
    }
    Ok(())
}

/// `distill check --latency`'s lines: both networks' latency (all-core medians, then every setting's median
/// and p90), the speed-ups and the FLOPs target (a student should be faster than its teacher by at least half
/// the FLOPs ratio, at most 4×), and the protocol.
fn latency_lines(
    s: &distill_core::pipeline::CheckSummary,
    t: &distill_core::report::Latency,
    st: &distill_core::report::Latency,
) -> String {
    use crate::latency_text::{batch_cell, ms};
    let ratio = s.teacher_flops as f64 / s.student_flops.max(1) as f64;
    let target = (0.5 * ratio).min(4.0);
    let (b1, b256) = (t.batch1 / st.batch1, t.batch256 / st.batch256);
    let verdict = |x: f64| if x >= target { "meets" } else { "below" };
    let mut out = format!(
        "  flops    teacher {} · student {} per sample · ratio {ratio:.2} · target speed-up ≥ {target:.2}×\n  \
         latency  teacher {:.3} / {:.2} ms · student {:.3} / {:.2} ms (batch 1 / 256, median on all cores)\n  \
         speed-up {b1:.2}× at batch 1 ({}), {b256:.2}× at batch 256 ({}) on all cores",
        s.teacher_flops,
        s.student_flops,
        t.batch1,
        t.batch256,
        st.batch1,
        st.batch256,
        verdict(b1),
        verdict(b256),
    );
    let one = |l: &distill_core::report::Latency, b| l.batch(b, Some(1)).map(|x| x.median_ms);
    if let (Some(t1), Some(s1), Some(t256), Some(s256)) =
        (one(t, 1), one(st, 1), one(t, 256), one(st, 256))
    {
        out.push_str(&format!(
            "; {:.2}× and {:.2}× (batch 1 / 256) on 1 thread",
            t1 / s1,
            t256 / s256
        ));
    }
    for (name, l) in [("teacher", t), ("student", st)] {
        if l.timings.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n  {name:<8} b1 {} · b256 {}",
            batch_cell(l, 1),
            batch_cell(l, 256)
        ));
        for w in l.whole_inputs() {
            out.push_str(&format!(
                " · {} ({} items, {} thread{}) {} / {}",
                w.input.as_deref().unwrap_or_default(),
                w.batch,
                w.threads,
                if w.threads == 1 { "" } else { "s" },
                ms(w.median_ms),
                ms(w.p90_ms)
            ));
        }
        let busy: Vec<String> = l
            .timings
            .iter()
            .filter(|x| x.input.is_none())
            .filter_map(|x| x.cores_busy.map(|c| format!("{c:.2}")))
            .collect();
        if !busy.is_empty() {
            out.push_str(&format!(" · cores busy {}", busy.join(" ")));
        }
    }
    if !t.timings.is_empty() {
        out.push_str(&format!(
            "\n  (ms, median / p90: 1 thread · {} threads; a batch item is a {}; cores busy = CPU time / wall \
             time per setting, b1 and b256 at 1 thread and all cores; load average {})\n  protocol {}",
            t.all_cores(),
            t.unit.as_deref().unwrap_or("sample"),
            t.load_avg.map_or("n/a".into(), |l| format!("{l:.2}")),
            distill_core::train::LATENCY_PROTOCOL
        ));
    }
    out
}

/// `distill eval CHECKPOINT`.
pub fn cmd_eval(reg: &Registry, checkpoint: &Path, dirs: &Dirs) -> Result<()> {
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
    let data_dir = data_dir(&dirs.data_dir);
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
