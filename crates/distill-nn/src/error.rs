//! The error type of distill-core and of every plugin built on it.

use std::path::PathBuf;

/// Errors that distill-core (and plugins through it) report.
///
/// Every variant a user can cause names *what* went wrong and *where* (a file, a recipe key, a tensor name).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error on a named file. The OS error is part of the message and deliberately not the error's
    /// `source()`, so a chain printer (`{:#}`) says it once.
    #[error("{path}: {err}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        err: std::io::Error,
    },
    /// A recipe, registry or other config file is invalid.
    #[error("{path}: {msg}")]
    Config {
        /// The file (with `:line:column` where known).
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A data file is missing, truncated or malformed.
    #[error("{path}: {msg}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A name (loss, model, plugin, data set) that nothing registered.
    #[error("unknown {what} `{name}` (known: {known})")]
    Unknown {
        /// What kind of name (e.g. "loss").
        what: &'static str,
        /// The name given.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
    /// Shapes or feature kinds that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Training diverged (NaN/Inf loss) or was stopped.
    #[error("training failed: {0}")]
    Training(String),
    /// A checkpoint is missing, corrupt or does not match the model.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A run directory whose lock another live process holds.
    #[error(
        "{path} is in use by another distill process ({holder}); wait for it to finish or choose another --out"
    )]
    Busy {
        /// The run directory.
        path: PathBuf,
        /// Who holds it: pid, host, start time and command, as its lock file says.
        holder: String,
    },
    /// Any other error with a message.
    #[error("{0}")]
    Msg(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// A config error in `path`.
    pub fn config(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// A free-form error.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// Shorthand for `Err(Error::Msg(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::Msg(format!($($arg)*))) };
}
