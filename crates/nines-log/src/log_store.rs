//! `RaftLogStorage`. Calls that may wait on the disk (fdatasync, fsync of
//! a metadata file, reads of old entries) run on tokio's blocking pool;
//! in-memory answers and page-cache writes run inline, since a thread hop
//! costs more than they do.

use nines_types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::OptionalSend;

use crate::LogStore;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (last_purged_log_id, last_log_id) = self.wal.log_state().map_err(|e| e.read_logs())?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.run(move |wal| wal.save_vote(&vote))
            .await
            .map_err(|e| e.write_vote())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.run(|wal| wal.read_vote())
            .await
            .map_err(|e| e.read_vote())
    }

    /// See `Wal::save_committed`: written without its own fsync.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.wal
            .save_committed(committed)
            .map_err(|e| e.write_logs())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.wal.committed().map_err(|e| e.read_logs())
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
        let result = if self.wal.pipeline.is_own_leader_append(&entries) {
            // A page-cache write; the flusher thread syncs it.
            self.wal.append(&entries, false)
        } else {
            self.run_in_place(move |wal| wal.append(&entries, true))
                .await
        };
        match result {
            Ok(()) => {
                // Synced, or a leader's own pipelined append.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                // A dropped callback is fatal to openraft; report the failure instead.
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.write_logs())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.run(move |wal| wal.truncate(log_id.index))
            .await
            .map_err(|e| e.write_logs())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.run(move |wal| wal.purge(log_id))
            .await
            .map_err(|e| e.write_logs())
    }
}
