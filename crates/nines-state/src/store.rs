//! Shared state, key layout and `StateMachine::open`.
//!
//! Everything the machine owns lives in ONE engine tree so one apply's
//! records, sessions and meta commit atomically (through a redo record,
//! `redo.rs`):
//! - `r` + main revision (u64 BE) + sub (u32 BE) → a revision record: one
//!   put or delete of a user key (see `mvcc/record.rs`)
//! - `s` + client id (u64 BE) → `SessionRecord` (see `sessions.rs`)
//! - `t` + last index (u64 BE) + client id (u64 BE) → empty: the sessions
//!   ordered by last use, for expiry and eviction
//! - `m` + name → meta (`applied`, `membership`, `revision`, `sessions`)
//!
//! The default tree holds `current_tree`, the name of that tree, so an
//! installed snapshot can be loaded into a fresh tree and swapped in by
//! rewriting one key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use nines_types::{Limits, LogId, SnapshotMeta, StorageError, StoredMembership};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::capture::Capture;
use crate::compactor::Compactor;
use crate::engine::Engine;
use crate::error::StateError;
use crate::mvcc::Mvcc;
use crate::snapshot_dir::SnapshotDir;
use crate::tiered::TieredEngine;

/// Where user data lived before the multi-version store (`d` + key): a
/// tree that still has it was written by an older version.
pub(crate) const LEGACY_DATA_PREFIX: u8 = b'd';
pub(crate) const SESSION_PREFIX: u8 = b's';
pub(crate) const SESSION_LRU_PREFIX: u8 = b't';
pub(crate) const META_APPLIED: &[u8] = b"mapplied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"mmembership";
pub(crate) const META_REVISION: &[u8] = b"mrevision";
/// The revision of a store nothing was written to: 1, as etcd's, so the
/// first write is revision 2 and clients see the revisions etcd would give.
pub const EMPTY_STORE_REVISION: i64 = 1;
/// The compacted revision: written in the batch of the apply that compacts.
pub(crate) const META_COMPACTED: &[u8] = b"mcompacted";
/// Number of `s` records, so the cap is enforced without a scan.
pub(crate) const META_SESSIONS: &[u8] = b"msessions";
const CURRENT_TREE: &[u8] = b"current_tree";
/// The sled dir inside the state dir.
pub(crate) const SLED_DIR: &str = "sm";
/// A symlink to [`SLED_DIR`] that a bounded open hands to sled (see
/// `rebuild::open_bounded`).
pub(crate) const SLED_OPEN_LINK: &str = "sm.open";
const TREE_PREFIX: &str = "data-";
/// The dir of the trees' tails inside the state dir.
pub(crate) const TAIL_DIR: &str = "tail";
/// The snapshot dir inside the state dir.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";

/// Tuning of the state machine.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// This member's input limits, for the reads it serves; applying the
    /// log never reads them (`Limits::APPLY`).
    pub limits: Limits,
    /// sled page cache size; sled's own default is 1 GiB per Db.
    pub cache_capacity_bytes: u64,
    /// A session idle for this many log entries is forgotten (swept every
    /// 4096 entries). Must be equal on every replica.
    pub session_ttl_entries: u64,
    /// Hard cap on remembered client ids; a new one beyond it evicts the
    /// least recently used. Must be equal on every replica.
    pub max_sessions: u64,
    /// Opening sled is given up when it makes no progress for this long:
    /// sled 0.34's recovery can hang after a full disk, and a hung open is
    /// then handled like damage (moved aside, rebuilt; see `rebuild.rs`).
    /// Progress is counted per record verified, so a large, healthy state
    /// is not mistaken for a hang.
    pub open_stall_timeout: Duration,
    /// Test hook: runs on the open thread with sled open, before the state
    /// is verified (a test makes it block to stand in for a sled hang).
    #[doc(hidden)]
    pub open_test_hook: Option<fn()>,
    /// Told how long applies and snapshot builds and installs take.
    pub observer: Option<Arc<dyn StateObserver>>,
}

/// Where applies hand their changes as they publish them (a server's
/// watch feed), so watchers get them without reading the engine back.
/// Called on the apply path: keep it cheap.
pub trait ChangeSink: Send + Sync {
    /// Whether anyone wants changes now; if not, none are decoded.
    fn wanted(&self) -> bool;
    /// The changes of revisions `from..=through`, just published.
    fn applied(&self, from: i64, through: i64, changes: Vec<crate::mvcc::Change>);
}

/// Durations the state machine reports (a server's metrics), so this
/// crate needs no metrics library. Called on the thread that did the
/// work: keep it cheap.
pub trait StateObserver: Send + Sync + std::fmt::Debug {
    /// One `apply` call (a batch of entries), after they were durable.
    fn applied(&self, _took: Duration) {}
    fn snapshot_built(&self, _took: Duration) {}
    /// Installing a snapshot received from the leader.
    fn snapshot_installed(&self, _took: Duration) {}
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            cache_capacity_bytes: 128 * 1024 * 1024,
            session_ttl_entries: crate::sessions::DEFAULT_TTL_ENTRIES,
            max_sessions: crate::sessions::DEFAULT_MAX_SESSIONS,
            open_stall_timeout: Duration::from_secs(30),
            open_test_hook: None,
            observer: None,
        }
    }
}

/// A raw tree key and value.
pub type RawRecord = (Vec<u8>, Vec<u8>);

pub(crate) fn session_key(client_id: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(9);
    raw.push(SESSION_PREFIX);
    raw.extend_from_slice(&client_id.to_be_bytes());
    raw
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StateError> {
    nines_types::codec::encode(value).map_err(|e| StateError::Codec(e.to_string()))
}

/// Decodes a value from the front of `bytes` (trailing bytes are allowed so
/// a record's prefix can be read on its own).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    nines_types::codec::decode_prefix(bytes)
        .map(|(v, _)| v)
        .map_err(|e| StateError::Codec(e.to_string()))
}

/// Locks a std mutex, recovering from poisoning: the data it guards is only
/// mutated by short sections that cannot panic halfway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks a std RwLock, recovering from poisoning (same reason).
pub(crate) fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// The meta records of a tree.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetaState {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub revision: i64,
    pub compacted: i64,
}

pub(crate) fn read_meta<E: Engine>(engine: &E) -> Result<MetaState, StateError> {
    let applied = match engine.get(META_APPLIED)? {
        Some(v) => decode(v.as_ref())?,
        None => None,
    };
    let membership = match engine.get(META_MEMBERSHIP)? {
        Some(v) => decode(v.as_ref())?,
        None => StoredMembership::default(),
    };
    let revision = match engine.get(META_REVISION)? {
        Some(v) => decode(v.as_ref())?,
        None => EMPTY_STORE_REVISION,
    };
    let compacted = match engine.get(META_COMPACTED)? {
        Some(v) => decode(v.as_ref())?,
        None => 0,
    };
    Ok(MetaState {
        applied,
        membership,
        revision,
        compacted,
    })
}

/// State shared by the state machine, its snapshot builders and readers.
pub(crate) struct Shared {
    pub db: sled::Db,
    /// The current store (its tree and key index); replaced only by a
    /// snapshot install. Guards are never held across `.await` (clone the
    /// handle out instead).
    pub store: RwLock<Arc<Mvcc<TieredEngine>>>,
    /// Copy-on-write undo capture of a running snapshot build.
    pub capture: Mutex<Option<Capture>>,
    /// One snapshot build or install at a time.
    pub build_lock: tokio::sync::Mutex<()>,
    /// Meta of the newest snapshot file, if any. Held while opening the
    /// file so a concurrent build cannot delete it in between.
    pub current_snapshot: Mutex<Option<SnapshotMeta>>,
    pub snapshots: SnapshotDir,
    /// Where each tree's tail lives (`tail.rs`): one dir per tree.
    pub tails: PathBuf,
    pub opts: StateOptions,
    /// Cache for readers; written after the tree.
    pub last_applied: RwLock<Option<LogId>>,
    pub tree_counter: AtomicU64,
    pub stats: Stats,
    /// Deletes what compactions dropped, in the background.
    pub compactor: Compactor,
    /// The published revision, for watchers: sent after every apply that
    /// moved it and after a snapshot install.
    pub revisions: tokio::sync::watch::Sender<i64>,
    /// The applied log index, sent after every apply and snapshot install:
    /// what a linearizable read waits for.
    pub applied_index: tokio::sync::watch::Sender<u64>,
    /// Where applies hand their changes, once a server set one.
    pub change_sink: RwLock<Option<Arc<dyn ChangeSink>>>,
    /// The first storage error the state machine returned to openraft. Its
    /// worker then quits, and RaftCore may report only "channel closed"
    /// (its next send fails before it reads the error): the server names
    /// this one instead.
    pub fault: std::sync::OnceLock<String>,
    /// A received snapshot already checked and loaded (`stage.rs`), which
    /// the install that follows takes instead of loading it again.
    pub staged: Mutex<Option<crate::stage::Staged>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The sweep thread holds only a weak handle; wake it to exit.
        self.compactor.stop();
    }
}

/// Counters exposed for diagnostics and tests.
#[derive(Default)]
pub(crate) struct Stats {
    pub builds: AtomicU64,
    /// Builds that copied their older records from the previous snapshot.
    pub builds_from_base: AtomicU64,
    pub undo_captured: AtomicU64,
    pub last_capture_nanos: AtomicU64,
    /// Bytes of every batch committed since open (keys and values): what
    /// the server's snapshot policy weighs against the data held.
    pub written_bytes: AtomicU64,
    /// Test hook: sleep this long per scanned record to widen the window in
    /// which applies race a build.
    pub scan_delay_nanos: AtomicU64,
}

impl Shared {
    pub fn current(&self) -> Arc<Mvcc<TieredEngine>> {
        read_lock(&self.store).clone()
    }

    /// Tells watchers the current store's published revision.
    pub fn announce_revision(&self) {
        let revision = self.current().revision();
        self.revisions.send_if_modified(|r| {
            let moved = *r != revision;
            *r = revision;
            moved
        });
    }

    /// Keeps the first storage error on its way to openraft (see `fault`).
    pub fn failed(&self, error: StorageError) -> StorageError {
        let _ = self.fault.set(error.to_string());
        error
    }

    pub fn set_applied(&self, applied: Option<LogId>) {
        *self.last_applied.write().unwrap_or_else(|e| e.into_inner()) = applied;
        let index = applied.map_or(0, |l| l.index);
        self.applied_index.send_if_modified(|i| {
            let moved = *i != index;
            *i = index;
            moved
        });
    }

    pub fn cached_applied(&self) -> Option<LogId> {
        *self.last_applied.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The tail dir of the tree named `tree`.
    pub fn tail_dir(&self, tree: &[u8]) -> PathBuf {
        self.tails.join(String::from_utf8_lossy(tree).as_ref())
    }

    /// Opens a new, empty tree for a snapshot load.
    pub fn new_tree(&self) -> Result<sled::Tree, StateError> {
        let n = self.tree_counter.fetch_add(1, Ordering::Relaxed);
        let tree = self.db.open_tree(format!("{TREE_PREFIX}{n}"))?;
        // A crashed earlier load may have left data under this name.
        tree.clear()?;
        Ok(tree)
    }

    /// Makes `new` the current store: persist the pointer to its tree, swap
    /// the handle readers use, then drop the old tree.
    pub fn flip(&self, new: Mvcc<TieredEngine>) -> Result<(), StateError> {
        let name = new.engine.tree().name();
        // The new store must be on disk before the pointer to it is.
        new.engine.flush()?;
        self.db.insert(CURRENT_TREE, &*name)?;
        self.db.flush()?;
        let old = {
            let mut guard = self.store.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *guard, Arc::new(new))
        };
        self.db.drop_tree(old.engine.tree().name())?;
        // Readers still on the old store keep their files open.
        old.engine.tail().remove_files();
        Ok(())
    }
}

/// Opens sled at `sled_path` and the current tree, dropping trees left by a
/// crashed install.
pub(crate) fn open_db(
    sled_path: &Path,
    opts: &StateOptions,
) -> Result<(sled::Db, sled::Tree, u64), StateError> {
    let db = open_sled(sled_path, opts.cache_capacity_bytes)?;
    let name = match db.get(CURRENT_TREE)? {
        Some(name) => name.to_vec(),
        None => {
            let name = format!("{TREE_PREFIX}0").into_bytes();
            db.insert(CURRENT_TREE, name.clone())?;
            name
        }
    };
    let mut max_n = 0u64;
    for existing in db.tree_names() {
        let Some(n) = tree_number(&existing) else {
            continue;
        };
        max_n = max_n.max(n);
        if existing.as_ref() != name.as_slice() {
            db.drop_tree(&existing)?;
        }
    }
    let tree = db.open_tree(&name)?;
    Ok((db, tree, max_n + 1))
}

/// How long to wait for a previous in-process owner's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens sled, waiting briefly for its file lock: after the last handle is
/// dropped, sled's pool threads can still hold the file for a moment (its
/// own test mode blocks on the lock for the same reason), which makes an
/// in-process reopen fail spuriously. Only that error is retried.
fn open_sled(path: &Path, cache_capacity: u64) -> Result<sled::Db, StateError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

fn tree_number(name: &[u8]) -> Option<u64> {
    std::str::from_utf8(name)
        .ok()?
        .strip_prefix(TREE_PREFIX)?
        .parse()
        .ok()
}

pub(crate) fn shared(
    dir: PathBuf,
    db: sled::Db,
    store: Mvcc<TieredEngine>,
    next_tree: u64,
    opts: StateOptions,
    meta: &MetaState,
) -> Arc<Shared> {
    Arc::new(Shared {
        db,
        store: RwLock::new(Arc::new(store)),
        capture: Mutex::new(None),
        build_lock: tokio::sync::Mutex::new(()),
        current_snapshot: Mutex::new(None),
        snapshots: SnapshotDir::new(dir.join(SNAPSHOT_DIR)),
        tails: dir.join(TAIL_DIR),
        opts,
        last_applied: RwLock::new(meta.applied),
        tree_counter: AtomicU64::new(next_tree),
        stats: Stats::default(),
        compactor: Compactor::new(),
        revisions: tokio::sync::watch::Sender::new(meta.revision),
        applied_index: tokio::sync::watch::Sender::new(meta.applied.map_or(0, |l| l.index)),
        change_sink: RwLock::new(None),
        fault: std::sync::OnceLock::new(),
        staged: Mutex::new(None),
    })
}
