//! The multi-version store, as etcd's mvcc: every write is kept under its
//! revision, deletes are tombstones, and a read at revision R sees exactly
//! the writes at or below R.
//!
//! Publish rule: an apply first puts every record it wrote in the engine
//! (one atomic batch) and only then publishes its revision; readers read at
//! the published revision, so they see an apply whole or not at all. The
//! index may hold writes above the published revision while an apply runs;
//! reads at a revision ignore them.

mod index;
mod read;
mod record;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

use nines_types::{KeyValue, RangeRequest, RangeResponse};

pub(crate) use index::{KeyAt, KeyIndex, Rev};
pub(crate) use read::{key_value, value_of};
pub(crate) use record::{
    decode_record, encode_record, parse_rev_key, rev_key, RecordHeader, REV_PREFIX,
};

use crate::engine::Engine;
use crate::error::StateError;
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
}

impl<E: Engine> Mvcc<E> {
    /// Rebuilds the index from the records in `engine`; `revision` is the
    /// stored store revision. Counts each record in `progress`.
    pub fn open(engine: E, revision: i64, progress: &AtomicU64) -> Result<Self, StateError> {
        let mut index = KeyIndex::default();
        let end = [REV_PREFIX + 1];
        for item in engine.scan(&[REV_PREFIX], Some(&end)) {
            let (raw_key, raw) = item?;
            let rev = parse_rev_key(raw_key.as_ref())?;
            if rev.main > revision {
                return Err(StateError::CorruptState(format!(
                    "a record at revision {} is above the store revision {revision}",
                    rev.main
                )));
            }
            let (header, _) = decode_record(raw.as_ref())?;
            restore(&mut index, &header, rev)?;
            progress.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Self {
            engine,
            index: RwLock::new(index),
            published: AtomicI64::new(revision),
        })
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
    /// one for 0 or less (etcd's rule), else `requested` if it exists.
    pub fn read_revision(&self, requested: i64) -> Result<i64, StateError> {
        let current = self.revision();
        match requested {
            r if r <= 0 => Ok(current),
            r if r > current => Err(StateError::FutureRevision {
                requested: r,
                current,
            }),
            r => Ok(r),
        }
    }

    pub fn range(&self, req: &RangeRequest, at: i64) -> Result<Read<RangeResponse>, StateError> {
        let revision = self.read_revision(at)?;
        let data = read::range(&self.index, req, revision, |rev| {
            self.engine.get(&rev_key(rev))
        })?;
        Ok(Read { revision, data })
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
        read::range(&self.index, req, i64::MAX, fetch)
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
