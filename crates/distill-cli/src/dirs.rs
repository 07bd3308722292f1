//! The directories and device every command that trains or evaluates takes: `--data-dir`, `--models-dir`,
//! `--device`, each with its environment variable and default.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;

/// `--data-dir`, `--models-dir` and `--device`.
#[derive(Args, Clone)]
pub struct Dirs {
    /// Data dir (default: $DISTILL_DATA, else data/).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Fetch a recipe's data set from its public source first when it is not in the data dir
    /// (`distill data fetch NAME`).
    #[arg(long, global = true)]
    pub fetch: bool,
    /// Pretrained-models dir (default: $DISTILL_MODELS, else models/).
    #[arg(long, global = true)]
    pub models_dir: Option<PathBuf>,
    /// Compute device: cpu or cuda:N.
    #[arg(long, default_value = "cpu", global = true)]
    pub device: String,
}

/// The device `--device` names: `cpu` or `cuda:N`.
pub fn device(s: &str) -> Result<candle_core::Device> {
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

/// The directory from `flag`, else `$env`, else `default`.
pub fn dir_from(flag: &Option<PathBuf>, env: &str, default: &str) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The data dir: `flag`, else `$DISTILL_DATA`, else `data/`.
pub fn data_dir(flag: &Option<PathBuf>) -> PathBuf {
    dir_from(flag, "DISTILL_DATA", "data")
}

/// Checks that the data dir exists; the error says how to set or fill it.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "data dir {} does not exist (set --data-dir or DISTILL_DATA, or fetch the data set into it)",
            dir.display()
        );
    }
    Ok(())
}
