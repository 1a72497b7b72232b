//! The crate's error type and its mapping onto openraft's `StorageError`.

use std::path::PathBuf;

use nines_types::{InputError, StorageError};
use openraft::{AnyError, StorageIOError};

#[derive(thiserror::Error, Debug)]
pub enum StateError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),

    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("codec: {0}")]
    Codec(String),

    #[error("corrupt snapshot {path}: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },

    /// The state tree holds something this version cannot interpret.
    #[error("corrupt state: {0}")]
    CorruptState(String),

    #[error("invalid input: {0}")]
    InvalidInput(#[from] InputError),

    #[error("background task failed: {0}")]
    Task(String),

    /// The state machine is behind the start of the local log and no local
    /// snapshot covers the gap: only another member can supply it.
    #[error(
        "the state machine (applied index {applied:?}) cannot be rebuilt locally: the \
         Raft log is purged up to {purged:?} and no local snapshot covers it; remove this \
         member from the cluster, wipe its data dir and add it again"
    )]
    CannotRebuild {
        applied: Option<u64>,
        purged: Option<u64>,
    },

    /// A read asked for a revision the store has not reached.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision { requested: i64, current: i64 },

    /// A read asked for a revision a compaction dropped (etcd's message,
    /// with the revisions so a client knows where history starts).
    #[error(
        "mvcc: required revision has been compacted (requested {requested}, compacted at {compacted})"
    )]
    Compacted { requested: i64, compacted: i64 },

    /// The index names a revision record the engine does not have: damage,
    /// or a snapshot install replaced the store during the read.
    #[error("revision record {main}.{sub} is missing")]
    MissingRecord { main: i64, sub: u32 },

    /// A backup cannot be restored where it was asked to be.
    #[error("restore: {0}")]
    Restore(String),

    /// A txn with a put or delete asked of the read-only path.
    #[error("a txn that writes cannot be served as a read")]
    NotReadOnly,

    /// A read-only txn's ranges returned more than a response may hold.
    #[error("the txn's ranges return more than {max} bytes; read less per request")]
    ResultTooLarge { max: usize },

    /// The Raft log whose durable index gates apply was closed.
    #[error("the Raft log was closed while an apply waited for it")]
    LogClosed,
}

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StateError::CorruptSnapshot {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn read_sm(self) -> StorageError {
        StorageIOError::read_state_machine(AnyError::new(&self)).into()
    }

    pub(crate) fn write_sm(self) -> StorageError {
        StorageIOError::write_state_machine(AnyError::new(&self)).into()
    }

    pub(crate) fn read_snapshot(self) -> StorageError {
        StorageIOError::read_snapshot(None, AnyError::new(&self)).into()
    }

    pub(crate) fn write_snapshot(self) -> StorageError {
        StorageIOError::write_snapshot(None, AnyError::new(&self)).into()
    }
}

impl From<tokio::task::JoinError> for StateError {
    fn from(e: tokio::task::JoinError) -> Self {
        StateError::Task(e.to_string())
    }
}
