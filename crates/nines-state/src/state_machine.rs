//! `RaftStateMachine` and `StateMachine::open`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_types::{
    DurableIndex, Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::OptionalSend;

use crate::apply::apply_entries;
use crate::base_file::BaseFile;
use crate::capture;
use crate::compactor::Compactor;
use crate::engine::{Engine, Write};
use crate::error::StateError;
use crate::install;
use crate::mvcc::Mvcc;
use crate::reader::StateReader;
use crate::rebuild::{self, OpenFailure};
use crate::redo;
use crate::sled_engine::SledEngine;
use crate::snapshot_builder::SnapshotBuilder;
use crate::snapshot_dir::SnapshotDir;
use crate::store::{
    self, lock, read_meta, MetaState, Shared, StateOptions, EMPTY_STORE_REVISION, SLED_DIR,
    SLED_OPEN_LINK, SNAPSHOT_DIR, TAIL_DIR,
};
use crate::tail::Tail;
use crate::tiered::TieredEngine;

/// The sled-backed state machine. Raft owns it; use [`StateMachine::reader`]
/// for concurrent reads.
pub struct StateMachine {
    shared: Arc<Shared>,
    /// When set, no entry is applied before the local log has it on disk.
    durable: Option<DurableIndex>,
    /// Where the damaged sled dir went, if this open rebuilt it.
    rebuilt_from: Option<PathBuf>,
}

/// Snapshot diagnostics since open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStats {
    pub builds: u64,
    /// Of those, the ones built from the previous snapshot file.
    pub builds_from_base: u64,
    /// Keys whose pre-change value an apply had to save for a running build.
    pub undo_entries_captured: u64,
    /// How long the last build blocked apply.
    pub last_capture_block: Duration,
}

impl StateMachine {
    /// Opens (or creates) the state at `dir`: sled at `dir/sm`, snapshots at
    /// `dir/snapshots`. Reloads the newest snapshot if it is ahead of sled.
    /// A damaged sled dir is moved aside and rebuilt from the newest snapshot
    /// (see `rebuild.rs`); call [`StateMachine::check_rebuildable`] next.
    pub async fn open(dir: &Path, opts: StateOptions) -> Result<StateMachine, StateError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || open_blocking(dir, opts)).await?
    }

    /// Applies an entry only once `durable` covers it. Needed when the log
    /// acknowledges a leader's own appends before their fdatasync: an applied
    /// entry is visible to clients and must not vanish in a crash.
    pub fn gate_on(&mut self, durable: DurableIndex) {
        self.durable = Some(durable);
    }

    /// The dir the damaged sled state was moved to, if this open rebuilt it.
    pub fn rebuilt_from(&self) -> Option<&Path> {
        self.rebuilt_from.as_deref()
    }

    /// Fails if the log cannot bring this state up to date: openraft
    /// re-applies committed entries after `last_applied`, so the log must
    /// still hold the one right after it.
    pub fn check_rebuildable(&self, log_last_purged: Option<LogId>) -> Result<(), StateError> {
        let applied = self.shared.cached_applied();
        let applied_index = applied.map(|l| l.index);
        let purged_index = log_last_purged.map(|l| l.index);
        if purged_index > applied_index {
            return Err(StateError::CannotRebuild {
                applied: applied_index,
                purged: purged_index,
            });
        }
        Ok(())
    }

    /// Checks and loads snapshots received from peers before their install
    /// (`stage.rs`).
    pub fn stager(&self) -> crate::stage::SnapshotStager {
        crate::stage::SnapshotStager {
            shared: self.shared.clone(),
        }
    }

    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: self.shared.clone(),
        }
    }

    pub fn snapshot_stats(&self) -> SnapshotStats {
        let s = &self.shared.stats;
        SnapshotStats {
            builds: s.builds.load(Ordering::Relaxed),
            builds_from_base: s.builds_from_base.load(Ordering::Relaxed),
            undo_entries_captured: s.undo_captured.load(Ordering::Relaxed),
            last_capture_block: Duration::from_nanos(s.last_capture_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Test hook: slow the snapshot scan down by `per_record` per record.
    #[doc(hidden)]
    pub fn set_snapshot_scan_delay(&self, per_record: Duration) {
        self.shared
            .stats
            .scan_delay_nanos
            .store(per_record.as_nanos() as u64, Ordering::Relaxed);
    }
}

fn open_blocking(dir: PathBuf, opts: StateOptions) -> Result<StateMachine, StateError> {
    std::fs::create_dir_all(&dir).map_err(|e| StateError::io(&dir, e))?;
    let reason = match open_watched(&dir, &opts) {
        Ok(sm) => return Ok(sm),
        Err(OpenFailure::Other(e)) => return Err(e),
        Err(OpenFailure::Damaged(reason)) => reason,
    };
    let sled_dir = dir.join(SLED_DIR);
    let aside = rebuild::move_aside(&sled_dir)?;
    // Derived from what is rebuilt: it goes with it.
    let tails = dir.join(TAIL_DIR);
    if tails.exists() {
        std::fs::remove_dir_all(&tails).map_err(|e| StateError::io(&tails, e))?;
    }
    tracing::warn!(
        error = %reason,
        moved_to = %aside.display(),
        "state machine is damaged: moved it aside; rebuilding it from the newest \
         snapshot and the Raft log"
    );
    // At the real path, never the link: a hung open may still use that one.
    let sled = open_sled_state(&sled_dir, &opts, &AtomicU64::new(0), None)?;
    let mut sm = open_snapshots(&dir, sled, &opts)?;
    tracing::warn!(
        applied = ?sm.shared.cached_applied(),
        "state machine rebuilt from the snapshot; openraft re-applies the committed log after it"
    );
    sm.rebuilt_from = Some(aside);
    Ok(sm)
}

/// Opens sled through [`SLED_OPEN_LINK`] on a watched thread (see
/// `rebuild.rs`), then the snapshots here: a hung thread must not touch the
/// snapshot dir the rebuild reads.
fn open_watched(dir: &Path, opts: &StateOptions) -> Result<StateMachine, OpenFailure> {
    let sled_dir = dir.join(SLED_DIR);
    let link = dir.join(SLED_OPEN_LINK);
    std::fs::create_dir_all(&sled_dir)
        .map_err(|e| StateError::io(&sled_dir, e))
        .and_then(|()| rebuild::relink(&link, SLED_DIR))
        .map_err(OpenFailure::Other)?;
    let progress = Arc::new(AtomicU64::new(0));
    let open_sled = {
        let (link, opts, progress) = (link.clone(), opts.clone(), progress.clone());
        move || open_sled_state(&link, &opts, &progress, opts.open_test_hook)
    };
    let result = rebuild::run_watched(opts.open_stall_timeout, &progress, open_sled)
        .and_then(|sled| rebuild::classify(|| open_snapshots(dir, sled, opts)));
    if result.is_err() {
        rebuild::unlink(&link).map_err(OpenFailure::Other)?;
    }
    result
}

/// sled, its current tree, the next tree number and the meta.
type SledState = (sled::Db, sled::Tree, u64, MetaState);

/// Opens sled at `sled_path`, finishes an interrupted apply and reads every
/// record but the revision records (counting them in `progress`). `hook`:
/// see `open_test_hook`.
fn open_sled_state(
    sled_path: &Path,
    opts: &StateOptions,
    progress: &AtomicU64,
    hook: Option<fn()>,
) -> Result<SledState, StateError> {
    let (db, tree, next_tree) = store::open_db(sled_path, opts)?;
    if let Some(hook) = hook {
        hook();
    }
    if redo::finish_interrupted(&tree)? {
        tracing::info!("replayed an apply a crash interrupted");
    }
    rebuild::verify(&db, &tree, progress)?;
    let meta = read_meta(&SledEngine::new(tree.clone()))?;
    Ok((db, tree, next_tree, meta))
}

/// Finds the newest snapshot next to an opened sled and opens the store on
/// both: the snapshot file serves the revision records up to its revision
/// (`tiered.rs`). A snapshot ahead of sled is loaded into a new tree.
fn open_snapshots(
    dir: &Path,
    (db, tree, next_tree, meta): SledState,
    opts: &StateOptions,
) -> Result<StateMachine, StateError> {
    let snapshots = SnapshotDir::new(dir.join(SNAPSHOT_DIR));
    snapshots.create()?;
    snapshots.remove_tmp();
    let tails = dir.join(TAIL_DIR);
    let tail_dir = tails.join(String::from_utf8_lossy(&tree.name()).as_ref());
    remove_other_tails(&tails, &tail_dir);
    let sled = SledEngine::new(tree);
    let mut reload = None;
    let mut current = None;
    let store = match newest_valid(&snapshots, &meta) {
        // A crash mid-install, or sled lost its tail: the log entries up to
        // the snapshot may be purged, so the snapshot is the truth.
        Some(Newest::Ahead(snap, path)) => {
            tracing::info!(snapshot = ?snap.last_log_id, applied = ?meta.applied, "reloading snapshot");
            reload = Some((snap, path));
            let engine = TieredEngine::new(sled, Tail::detached(), None);
            Mvcc::placeholder(engine, meta.revision)
        }
        Some(Newest::Base(snap, path, base)) => {
            let tail = Tail::open(&tail_dir, base.revision, meta.revision)?;
            let engine = TieredEngine::new(sled, tail, Some(Arc::new(base)));
            current = Some((snap, path));
            Mvcc::open(engine, meta.revision, meta.compacted, &AtomicU64::new(0))?
        }
        None => {
            let tail = Tail::open(&tail_dir, EMPTY_STORE_REVISION, meta.revision)?;
            let engine = TieredEngine::new(sled, tail, None);
            Mvcc::open(engine, meta.revision, meta.compacted, &AtomicU64::new(0))?
        }
    };
    let shared = store::shared(dir.to_path_buf(), db, store, next_tree, opts.clone(), &meta);
    if let Some((snap, path)) = reload {
        let (store, state) = install::fill_new_tree(&shared, &path, &snap)?;
        install::activate(&shared, store, state, snap, &path)?;
        // The old tree's tail: its records are the snapshot's or cut off.
        if tail_dir.exists() {
            std::fs::remove_dir_all(&tail_dir).map_err(|e| StateError::io(&tail_dir, e))?;
        }
    } else if let Some((snap, path)) = current {
        *lock(&shared.current_snapshot) = Some(snap);
        shared.snapshots.remove_others(&path);
    }
    Compactor::start(&shared)?;
    Ok(StateMachine {
        shared,
        durable: None,
        rebuilt_from: None,
    })
}

/// The newest snapshot whose whole file verifies.
enum Newest {
    /// Ahead of sled: to be loaded into a new tree.
    Ahead(SnapshotMeta, PathBuf),
    /// The base of the store sled holds, read once to find its records.
    Base(SnapshotMeta, PathBuf, BaseFile),
}

/// Reads each candidate whole at most once (a million keys make a file of
/// ~300 MB): a base is checked while its records are found.
fn newest_valid(snapshots: &SnapshotDir, meta: &MetaState) -> Option<Newest> {
    for (snap, path) in snapshots.newest_first() {
        let found = if snap.last_log_id > meta.applied {
            crate::snapshot_file::validate(&path).map(|_| Newest::Ahead(snap, path))
        } else {
            BaseFile::open(&path).map(|base| Newest::Base(snap, path, base))
        };
        match found {
            Ok(newest) => return Some(newest),
            Err(e) => tracing::warn!(error = %e, "ignoring corrupt snapshot"),
        }
    }
    None
}

/// Removes the tails of trees that are not `keep`'s (left by an install a
/// crash interrupted, or by a rebuild).
fn remove_other_tails(tails: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(tails) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old tail");
            }
        }
    }
}

/// Writes one apply's batch, first saving what a running snapshot build
/// needs (see `capture.rs`).
fn commit(shared: &Shared, engine: &TieredEngine, writes: &[Write]) -> Result<(), StateError> {
    let _capturing = capture::before_write(shared, engine, writes)?;
    engine.write_batch(writes)?;
    let bytes: usize = writes
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    shared
        .stats
        .written_bytes
        .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let meta = read_meta(&self.shared.current().engine)
            .map_err(|e| self.shared.failed(e.read_sm()))?;
        Ok((meta.applied, meta.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (self.durable.as_mut(), entries.last()) {
            if !durable.wait_for(last.log_id.index).await {
                return Err(self.shared.failed(StateError::LogClosed.write_sm()));
            }
        }
        let started = std::time::Instant::now();
        let shared = &self.shared;
        let store = shared.current();
        let base = store.revision();
        let sink = crate::store::read_lock(&shared.change_sink)
            .clone()
            .filter(|s| s.wanted());
        let mut changes = None;
        let done = apply_entries(&*store, &shared.opts, &entries, |writes| {
            commit(shared, &store.engine, &writes)?;
            if sink.is_some() {
                changes = Some(crate::mvcc::changes_of(&writes)?);
            }
            Ok(())
        })
        .map_err(|e| shared.failed(e.write_sm()))?;
        if done.applied.is_some() {
            shared.set_applied(done.applied);
            let through = store.revision();
            if let (Some(sink), Some(changes)) = (sink, changes) {
                if through > base {
                    sink.applied(base + 1, through, changes);
                }
            }
            shared.announce_revision();
        }
        if let Some(at) = done.compacted {
            shared.compactor.schedule(at);
        }
        if let Some(observer) = &shared.opts.observer {
            observer.applied(started.elapsed());
        }
        Ok(done.responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.shared.snapshots.tmp_path("receive");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                self.shared
                    .failed(StateError::io(&path, e).write_snapshot())
            })?;
        // Unlinked at once: the open handle is all we need, and nothing is
        // left behind if the transfer is abandoned.
        let _ = std::fs::remove_file(&path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let _one_at_a_time = self.shared.build_lock.lock().await;
        let file = (*snapshot).into_std().await;
        let shared = self.shared.clone();
        let meta = meta.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || install::install(&shared, &meta, file))
            .await
            .map_err(StateError::from)
            .and_then(|r| r)
            .map_err(|e| self.shared.failed(e.write_snapshot()))?;
        if let Some(observer) = &self.shared.opts.observer {
            observer.snapshot_installed(started.elapsed());
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        // Held while opening so a finishing build cannot delete the file first.
        let current = lock(&self.shared.current_snapshot);
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let path = self.shared.snapshots.file_for(&meta.snapshot_id);
        let file = std::fs::File::open(&path)
            .map_err(|e| self.shared.failed(StateError::io(&path, e).read_snapshot()))?;
        drop(current);
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}
