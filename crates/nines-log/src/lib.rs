//! The Raft log of nines: a segmented, append-only write-ahead log
//! implementing openraft's `RaftLogStorage` (storage-v2).
//!
//! Directory layout:
//! - `<first index, 20 digits>.wal`: segments (format in `segment.rs`),
//!   zero-filled ahead of the writer so a sync commits no metadata
//!   (`prealloc.rs`);
//! - `vote`, `purged`: small metadata files replaced atomically (`meta.rs`);
//! - `LOCK`: held with an exclusive `flock` while the log is open.
//!
//! Each append batch is one write plus one fdatasync before openraft's
//! callback fires; the vote is fsynced before `save_vote` returns. With
//! [`LogStore::enable_leader_pipelining`], a leader's own appends are synced
//! in the background instead, behind a durable-index gate (`pipeline.rs`).

mod error;
mod log_reader;
mod log_store;
mod meta;
mod pipeline;
mod prealloc;
mod recovery;
mod segment;
mod wal;

use std::path::Path;
use std::sync::Arc;

pub use error::LogError;
use nines_types::{DurableIndex, NodeId};

/// Called with the duration of each fdatasync of appended entries (in an
/// append, or the pipelining flusher), on the thread that synced: keep it
/// cheap. Lets a server time syncs without this crate knowing its metrics.
pub type SyncHook = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Tuning for a [`LogStore`].
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// A segment rolls over once an append would take it past this size.
    pub segment_bytes: u64,
    /// Keep this many bytes past the write position zero-filled, so an
    /// fdatasync flushes data without a metadata commit (`prealloc.rs`).
    /// 0 turns it off.
    pub preallocate_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 * 1024 * 1024,
            preallocate_bytes: 8 * 1024 * 1024,
        }
    }
}

impl LogOptions {
    /// Default options with a different segment size.
    pub fn with_segment_bytes(segment_bytes: u64) -> LogOptions {
        LogOptions {
            segment_bytes,
            ..LogOptions::default()
        }
    }
}

/// The Raft log store. Cheap to clone; clones share one log.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<wal::Wal>,
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, recovering from any
    /// crash. Blocking: call it at startup or from a blocking thread.
    ///
    /// Fails with [`LogError::Locked`] if another process has the directory
    /// open, and with [`LogError::Corrupt`] on damage a crash cannot explain.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<LogStore, LogError> {
        let wal = recovery::open(dir, opts)?;
        Ok(LogStore { wal: Arc::new(wal) })
    }

    /// Creates the log of a member restored from a backup in `dir`: empty,
    /// purged up to `last` (the restored state machine's last applied
    /// entry), so openraft continues after it and serves the entries
    /// before it from the snapshot. Refuses a dir that holds a log.
    pub fn create_restored(dir: &Path, last: nines_types::LogId) -> Result<(), LogError> {
        let log = LogStore::open(dir, LogOptions::default())?;
        if log.wal.log_state()? != (None, None) {
            return Err(LogError::NotEmpty(dir.to_path_buf()));
        }
        log.wal.purge(last)
    }

    /// Lets this node's own leader appends return before their fdatasync
    /// (see `pipeline.rs` for the rules that keep that safe). Call it before
    /// the log is handed to openraft: it changes the vote reported at start.
    ///
    /// Whoever enables it must gate on [`LogStore::durable_index`]: apply
    /// no entry above it, and send followers no commit index above it.
    pub fn enable_leader_pipelining(&self, me: NodeId) -> Result<(), LogError> {
        if self.wal.pipeline.node_id.set(me).is_ok() {
            pipeline::start_flusher(&self.wal).map_err(|e| LogError::io(&self.wal.dir, e))?;
        }
        Ok(())
    }

    /// Reports the duration of every later fdatasync of appended entries to
    /// `hook`. Only the first hook set is kept.
    pub fn observe_syncs(&self, hook: SyncHook) {
        let _ = self.wal.pipeline.flush.sync_hook.set(hook);
    }

    /// The highest index on disk, updated as syncs complete.
    pub fn durable_index(&self) -> DurableIndex {
        self.wal.pipeline.flush.durable.subscribe()
    }

    /// The vote last saved (on disk before `save_vote` returned, so before
    /// openraft could send a grant or an ack carrying it). A node whose
    /// saved vote is still for term T has granted nothing in a later term:
    /// what lets a follower's read index ask vouch for its leader
    /// (nines-server `read_index.rs`). None before the first vote, or if a
    /// writer panicked while holding it.
    pub fn saved_vote(&self) -> Option<nines_types::Vote> {
        self.wal.pipeline.vote.lock().ok().and_then(|v| *v)
    }

    /// The newest committed index openraft saved here (before it applies
    /// up to it), or None on a read error or before the first commit.
    pub fn committed_index(&self) -> Option<u64> {
        self.wal.committed().ok().flatten().map(|c| c.index)
    }

    /// The id of the last entry in the log (written, maybe not yet synced
    /// on a pipelining leader), or of the last purged one.
    pub fn last_log_id(&self) -> Result<Option<nines_types::LogId>, LogError> {
        let (purged, last) = self.wal.log_state()?;
        Ok(last.or(purged))
    }

    /// The highest index to purge so that the entries kept at or below
    /// `upto` (a snapshot's last index) number at most `max_entries` and
    /// take at most `max_bytes` on disk; None when nothing is to purge.
    /// Entries kept behind a snapshot let a lagging follower catch up from
    /// the log instead of installing the snapshot.
    pub fn purge_point(
        &self,
        upto: u64,
        max_entries: u64,
        max_bytes: u64,
    ) -> Result<Option<u64>, LogError> {
        self.wal.purge_point(upto, max_entries, max_bytes)
    }

    /// Number of segment files currently in use (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.wal.read_index().map_or(0, |idx| idx.segments.len())
    }

    /// Runs a blocking log operation on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&wal::Wal) -> Result<T, LogError> + Send + 'static,
    {
        let wal = Arc::clone(&self.wal);
        tokio::task::spawn_blocking(move || f(&wal)).await?
    }

    /// Runs a blocking log operation on the calling thread after handing the
    /// tokio worker's other tasks to another thread (`block_in_place`). With
    /// `spawn_blocking` the caller waits for two thread wake-ups around the
    /// fdatasync, each tens of µs on a busy VM; here neither is on the path.
    /// Off a multi-thread runtime (where that is not allowed) it uses `run`.
    async fn run_in_place<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&wal::Wal) -> Result<T, LogError> + Send + 'static,
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| f(&self.wal)),
            _ => self.run(f).await,
        }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.wal.dir)
            .finish_non_exhaustive()
    }
}
