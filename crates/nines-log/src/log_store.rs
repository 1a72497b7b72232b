//! `RaftLogStorage` over the WAL. Blocking file IO runs on tokio's blocking
//! pool; the WAL sits behind a std mutex that is never held across `.await`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use nines_types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};

use crate::error::LogError;
use crate::wal::{LogOptions, Wal};

#[derive(Clone)]
pub struct LogStore {
    pub(crate) wal: Arc<Mutex<Wal>>,
}

pub(crate) fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: &LogError,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

impl LogStore {
    pub fn open(dir: &Path, opts: LogOptions) -> Result<LogStore, LogError> {
        Ok(LogStore {
            wal: Arc::new(Mutex::new(Wal::open(dir, opts)?)),
        })
    }

    /// Runs `f` on the WAL in the blocking pool.
    pub(crate) async fn with_wal<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Wal) -> Result<T, LogError> + Send + 'static,
    {
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || {
            let mut wal = wal.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut wal)
        })
        .await
        .map_err(|e| LogError::Io {
            path: Default::default(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .segment_count()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        Ok(LogState {
            last_purged_log_id: wal.purged(),
            last_log_id: wal.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.with_wal(move |wal| wal.save_vote(&vote))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal.lock().unwrap_or_else(|e| e.into_inner()).vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.with_wal(move |wal| wal.save_committed(committed))
            .await
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .committed())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The callback fires only after fdatasync returned: that is the
        // promise openraft relies on to acknowledge writes.
        match self.with_wal(move |wal| wal.append(entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.with_wal(move |wal| wal.truncate(log_id.index))
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.with_wal(move |wal| wal.purge(log_id))
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}
