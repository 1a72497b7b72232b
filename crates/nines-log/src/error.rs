//! The crate's error type and its mapping onto openraft's `StorageError`.

use std::path::PathBuf;

use nines_types::StorageError;
use openraft::{AnyError, StorageIOError};

#[derive(thiserror::Error, Debug)]
pub enum LogError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Damage that a crash mid-write cannot explain: refusing to start is the
    /// only safe answer (wipe the node and re-add it to the cluster).
    #[error("corrupt log file {path} at byte offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("log directory is locked by another process (lock file {path})")]
    Locked { path: PathBuf },

    #[error("encode: {0}")]
    Encode(String),

    /// An append that would leave a hole in the log (a caller bug).
    #[error("non-contiguous append: expected index {expected}, got {got}")]
    NonContiguous { expected: u64, got: u64 },

    /// An earlier operation panicked while holding the log's lock.
    /// A restored member's log must start empty.
    #[error("the log in {0} is not empty: a restore needs a new data dir")]
    NotEmpty(PathBuf),

    #[error("log state poisoned by an earlier panic")]
    Poisoned,

    #[error("background task failed: {0}")]
    Task(String),
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        LogError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn read_logs(self) -> StorageError {
        StorageIOError::read_logs(AnyError::new(&self)).into()
    }

    pub(crate) fn write_logs(self) -> StorageError {
        StorageIOError::write_logs(AnyError::new(&self)).into()
    }

    pub(crate) fn read_vote(self) -> StorageError {
        StorageIOError::read_vote(AnyError::new(&self)).into()
    }

    pub(crate) fn write_vote(self) -> StorageError {
        StorageIOError::write_vote(AnyError::new(&self)).into()
    }
}

impl From<tokio::task::JoinError> for LogError {
    fn from(e: tokio::task::JoinError) -> Self {
        LogError::Task(e.to_string())
    }
}
