//! The multi-version store, as etcd's mvcc: every write is kept under its
//! revision, deletes are tombstones, and a read at revision R sees exactly
//! the writes at or below R.
//!
//! Publish rule: an apply first puts every record it wrote in the engine
//! (one atomic batch) and only then publishes its revision; readers read at
//! the published revision, so they see an apply whole or not at all. The
//! index may hold writes above the published revision while an apply runs;
//! reads at a revision ignore them.
//!
//! Compaction (`compact.rs`) drops history at or below a revision: reads
//! below it fail with [`StateError::Compacted`].

mod compact;
#[cfg(test)]
mod compact_tests;
mod hash;
mod history;
#[cfg(test)]
mod history_tests;
mod index;
#[cfg(test)]
pub(crate) mod model;
mod read;
mod record;
mod sorted;
#[cfg(test)]
mod sorted_tests;
mod survivors;
#[cfg(test)]
mod tests;
mod txn_read;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

use nines_types::{KeyValue, RangeOptions, RangeRequest, RangeResponse};

pub use hash::HashKv;
pub(crate) use history::changes_of;
pub use history::{Change, Changes};
pub(crate) use index::{KeyAt, KeyIndex, Rev};
pub(crate) use read::{key_value, record_of, value_of};
pub(crate) use record::{
    decode_record, encode_record, parse_rev_key, rev_key, RecordHeader, REV_PREFIX,
};
pub(crate) use survivors::Survivors;
pub(crate) use txn_read::compare_key;
pub use txn_read::TxnRead;

use crate::auth::AuthState;
use crate::engine::{Engine, Write};
use crate::error::StateError;
use crate::lease::LeaseTable;
use crate::store::read_lock;

/// A read's result and the revision it was served at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    pub revision: i64,
    pub data: T,
}

pub(crate) struct Mvcc<E> {
    pub engine: E,
    index: RwLock<KeyIndex>,
    /// The newest revision whose writes are all in the engine.
    published: AtomicI64,
    /// Reads below it fail. Raised before the index drops anything, so a
    /// read that passed the check and then saw dropped history finds it
    /// raised when it checks again (see `checked`).
    compacted: AtomicI64,
    /// Records found at open that a compaction dropped but whose deletion
    /// had not finished.
    dropped_at_open: u64,
    /// Bytes of the revision records in the engine (keys and encoded
    /// values): the data the store holds, what the quota limits and what
    /// compaction and deletes free. Engine overhead comes on top.
    record_bytes: AtomicU64,
    /// Granted leases and their keys (see `lease/mod.rs`); apply is the
    /// only writer.
    leases: RwLock<LeaseTable>,
    /// Users, roles and permissions (see `auth/mod.rs`); apply is the only
    /// writer.
    auth: RwLock<AuthState>,
    /// Whether any record held may carry a lease: found at open or
    /// written since. Until then a keys-only read fetches no record.
    leased: std::sync::atomic::AtomicBool,
}

impl<E: Engine> Mvcc<E> {
    /// Rebuilds the index from the records in `engine`; `revision` and
    /// `compacted` are the stored store and compacted revisions. Counts each
    /// record in `progress`.
    pub fn open(
        engine: E,
        revision: i64,
        compacted: i64,
        progress: &AtomicU64,
    ) -> Result<Self, StateError> {
        if !(0..=revision).contains(&compacted) {
            return Err(StateError::CorruptState(format!(
                "compacted revision {compacted} is outside 0..={revision}"
            )));
        }
        let mut index = KeyIndex::default();
        // Below the compaction a record's older history may be gone: keep
        // what the compaction keeps, and check strictly from there on.
        let mut below = Some(Survivors::default());
        let mut dropped = 0;
        let mut record_bytes = 0;
        let mut leased = false;
        let end = [REV_PREFIX + 1];
        for item in engine.scan(&[REV_PREFIX], Some(&end)) {
            let (raw_key, raw) = item?;
            record_bytes += (raw_key.as_ref().len() + raw.as_ref().len()) as u64;
            let rev = parse_rev_key(raw_key.as_ref())?;
            if rev.main > revision {
                return Err(StateError::CorruptState(format!(
                    "a record at revision {} is above the store revision {revision}",
                    rev.main
                )));
            }
            let (header, _) = decode_record(raw.as_ref())?;
            leased |= header.lease != 0;
            progress.fetch_add(1, Ordering::Relaxed);
            match &mut below {
                Some(survivors) if rev.main <= compacted => {
                    survivors.see(header, rev)?;
                    continue;
                }
                Some(_) => dropped += below.take().map_or(Ok(0), |s| s.into_index(&mut index))?,
                None => {}
            }
            restore(&mut index, &header, rev)?;
        }
        if let Some(survivors) = below {
            dropped += survivors.into_index(&mut index)?;
        }
        let leases = LeaseTable::load(&engine)?;
        let auth = AuthState::load(&engine)?;
        Ok(Self {
            engine,
            index: RwLock::new(index),
            published: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            dropped_at_open: dropped,
            record_bytes: AtomicU64::new(record_bytes),
            leases: RwLock::new(leases),
            auth: RwLock::new(auth),
            leased: std::sync::atomic::AtomicBool::new(leased),
        })
    }

    /// A store with an empty index over `engine`, for the moment before a
    /// snapshot replaces it at open: nothing reads it.
    pub fn placeholder(engine: E, revision: i64) -> Self {
        Self {
            engine,
            index: RwLock::new(KeyIndex::default()),
            published: AtomicI64::new(revision),
            compacted: AtomicI64::new(0),
            dropped_at_open: 0,
            record_bytes: AtomicU64::new(0),
            leases: RwLock::new(LeaseTable::default()),
            auth: RwLock::new(AuthState::default()),
            leased: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a record may carry a lease (see `leased`).
    pub fn any_leased(&self) -> bool {
        self.leased.load(Ordering::Acquire)
    }

    /// Called by apply before it writes a record with a lease.
    pub fn note_leased(&self) {
        self.leased.store(true, Ordering::Release);
    }

    /// The auth state, for reading.
    pub fn auth(&self) -> std::sync::RwLockReadGuard<'_, AuthState> {
        read_lock(&self.auth)
    }

    /// The auth state, for apply.
    pub fn auth_mut(&self) -> RwLockWriteGuard<'_, AuthState> {
        self.auth.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease table, for reading.
    pub fn leases(&self) -> std::sync::RwLockReadGuard<'_, LeaseTable> {
        read_lock(&self.leases)
    }

    /// The lease table, for apply.
    pub fn leases_mut(&self) -> RwLockWriteGuard<'_, LeaseTable> {
        self.leases.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of the revision records held (see `record_bytes`).
    pub fn record_bytes(&self) -> u64 {
        self.record_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of the revision records among `writes`. Each record key is
    /// written once (revisions only grow), so adding it after a commit is
    /// exact.
    pub fn record_bytes_of(writes: &[Write]) -> u64 {
        let bytes: usize = writes
            .iter()
            .filter(|(k, _)| k.first() == Some(&REV_PREFIX))
            .filter_map(|(k, v)| v.as_ref().map(|v| k.len() + v.len()))
            .sum();
        bytes as u64
    }

    /// Counts `bytes` of records just committed.
    pub fn add_record_bytes(&self, bytes: u64) {
        self.record_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` of records just removed.
    fn sub_record_bytes(&self, bytes: u64) {
        let _ = self
            .record_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
    }

    /// Keys that exist at revision `at` (deleted ones excluded).
    pub fn live_keys(&self, at: i64) -> u64 {
        let index = read_lock(&self.index);
        let live = index
            .range(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
            .filter(|(_, history)| history.at(at).is_some())
            .count();
        live as u64
    }

    /// The revision reads are served at.
    pub fn revision(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// Makes `revision` visible: call only once its writes are in the engine.
    pub fn publish(&self, revision: i64) {
        self.published.store(revision, Ordering::Release);
    }

    /// The revision a read asking for `requested` is served at: the current
    /// one for 0 or less (etcd's rule), else `requested` if it is in the
    /// retained history.
    pub fn read_revision(&self, requested: i64) -> Result<i64, StateError> {
        let current = self.revision();
        match requested {
            r if r <= 0 => Ok(current),
            r if r > current => Err(StateError::FutureRevision {
                requested: r,
                current,
            }),
            r => self.checked(r, Ok(r)),
        }
    }

    /// `result` of a read at `revision`, unless a compaction above it began
    /// meanwhile (it may have seen history half dropped).
    fn checked<T>(&self, revision: i64, result: Result<T, StateError>) -> Result<T, StateError> {
        let compacted = self.compacted();
        if revision < compacted {
            return Err(StateError::Compacted {
                requested: revision,
                compacted,
            });
        }
        result
    }

    pub fn range(&self, req: &RangeRequest, at: i64) -> Result<Read<RangeResponse>, StateError> {
        self.range_with(req, &RangeOptions::default(), at)
    }

    /// A range with etcd's sort and revision filters.
    pub fn range_with(
        &self,
        req: &RangeRequest,
        opts: &RangeOptions,
        at: i64,
    ) -> Result<Read<RangeResponse>, StateError> {
        let revision = self.read_revision(at)?;
        let data = self.range_unchecked(req, opts, revision);
        let data = self.checked(revision, data)?;
        Ok(Read { revision, data })
    }

    /// A range at `revision` from the engine, not yet checked against a
    /// compaction that may have begun meanwhile (the caller's `checked`).
    fn range_unchecked(
        &self,
        req: &RangeRequest,
        opts: &RangeOptions,
        revision: i64,
    ) -> Result<RangeResponse, StateError> {
        let fetch = |rev| self.engine.get(&rev_key(rev));
        if opts.is_plain() {
            read::range(&self.index, req, revision, self.any_leased(), fetch)
        } else {
            sorted::range(&self.index, req, opts, revision, self.any_leased(), fetch)
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Read<Option<KeyValue>>, StateError> {
        let revision = self.revision();
        let data = read::get(&self.index, key, revision, |rev| {
            self.engine.get(&rev_key(rev))
        })?;
        Ok(Read { revision, data })
    }

    /// The newest state of `key`, unpublished writes included (for apply).
    pub fn latest(&self, key: &[u8]) -> Option<KeyAt> {
        read_lock(&self.index).get(key, i64::MAX)
    }

    /// Like `range` at the newest state, fetching through `fetch` (apply
    /// reads its own unwritten records).
    pub fn range_latest<B: AsRef<[u8]>>(
        &self,
        req: &RangeRequest,
        fetch: impl Fn(Rev) -> Result<Option<B>, StateError>,
    ) -> Result<RangeResponse, StateError> {
        read::range(&self.index, req, i64::MAX, self.any_leased(), fetch)
    }

    /// `range_latest` with etcd's sort and revision filters.
    pub fn range_latest_with<B: AsRef<[u8]>>(
        &self,
        req: &RangeRequest,
        opts: &RangeOptions,
        fetch: impl Fn(Rev) -> Result<Option<B>, StateError>,
    ) -> Result<RangeResponse, StateError> {
        if opts.is_plain() {
            return self.range_latest(req, fetch);
        }
        sorted::range(&self.index, req, opts, i64::MAX, self.any_leased(), fetch)
    }

    /// For apply, the only writer; hold it for one index update at a time.
    pub fn index_mut(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds a stored record to the index, checking the derived create
/// revision and version against the stored ones.
fn restore(index: &mut KeyIndex, header: &RecordHeader, rev: Rev) -> Result<(), StateError> {
    if header.tombstone {
        return index.tombstone(&header.key, rev);
    }
    index.put(&header.key, rev)?;
    let derived = index.get(&header.key, rev.main);
    let stored = KeyAt {
        rev,
        create_revision: header.create_revision,
        version: header.version,
    };
    if derived != Some(stored) {
        return Err(StateError::CorruptState(format!(
            "revision {}.{} of {:?} says create {} version {}; its history gives {derived:?}",
            rev.main,
            rev.sub,
            String::from_utf8_lossy(&header.key),
            header.create_revision,
            header.version
        )));
    }
    Ok(())
}
