//! Range and get at a revision: keys are resolved in the index, values are
//! then fetched by revision with no lock held.

use std::ops::Bound;
use std::sync::RwLock;

use nines_types::{KeyRange, KeyValue, RangeRequest, RangeResponse};

use super::index::{KeyAt, KeyIndex, Rev};
use super::record::decode_record;
use crate::error::StateError;
use crate::store::read_lock;

/// Keys visited per hold of the index lock: a range over millions of keys
/// must not keep an apply waiting for its whole walk (one hold measured
/// ~41 us in a debug build; see `a_large_count_holds_the_index_lock_briefly_
/// per_chunk`). A read at a fixed revision may release the lock between
/// chunks because what it resolves (writes at or below its revision) never
/// changes.
pub(super) const KEYS_PER_LOCK: usize = 256;

/// Resolves `req` at revision `at` and builds its response; `fetch` returns
/// a record by revision. Values are fetched only for keys returned with
/// their value (not for counting, `keys_only`, or keys past `limit`).
///
/// `leases` says whether any record may carry a lease: if not, a
/// `keys_only` range needs no record at all.
pub(crate) fn range<B: AsRef<[u8]>>(
    index: &RwLock<KeyIndex>,
    req: &RangeRequest,
    at: i64,
    leases: bool,
    fetch: impl Fn(Rev) -> Result<Option<B>, StateError>,
) -> Result<RangeResponse, StateError> {
    let limit = match (req.count_only, req.limit) {
        (true, _) => 0,
        (false, 0) => u64::MAX,
        (false, n) => n,
    };
    let (count, found) = resolve(index, &req.range, at, limit);
    let mut kvs = Vec::with_capacity(found.len());
    for (key, key_at) in found {
        // keys_only still reads the record's header if keys may have
        // leases: a key's lease is kept there, not in the index.
        let (value, lease) = if req.keys_only && !leases {
            (Vec::new(), 0)
        } else {
            record_of(&key, key_at.rev, &fetch, !req.keys_only)?
        };
        kvs.push(key_value(key, value, key_at, lease));
    }
    Ok(RangeResponse {
        more: count > kvs.len() as u64 && !req.count_only,
        count,
        kvs,
    })
}

/// One key at revision `at`, with its value.
pub(crate) fn get<B: AsRef<[u8]>>(
    index: &RwLock<KeyIndex>,
    key: &[u8],
    at: i64,
    fetch: impl Fn(Rev) -> Result<Option<B>, StateError>,
) -> Result<Option<KeyValue>, StateError> {
    let Some(key_at) = read_lock(index).get(key, at) else {
        return Ok(None);
    };
    let (value, lease) = record_of(key, key_at.rev, &fetch, true)?;
    Ok(Some(key_value(key.to_vec(), value, key_at, lease)))
}

pub(crate) fn key_value(key: Vec<u8>, value: Vec<u8>, at: KeyAt, lease: i64) -> KeyValue {
    KeyValue {
        key,
        value,
        create_revision: at.create_revision,
        mod_revision: at.rev.main,
        version: at.version,
        lease,
    }
}

/// The value written at `rev`, checked to belong to `key`.
pub(crate) fn value_of<B: AsRef<[u8]>>(
    key: &[u8],
    rev: Rev,
    fetch: impl Fn(Rev) -> Result<Option<B>, StateError>,
) -> Result<Vec<u8>, StateError> {
    record_of(key, rev, fetch, true).map(|(value, _)| value)
}

/// The value (empty unless `with_value`) and lease written at `rev`,
/// checked to belong to `key`.
pub(crate) fn record_of<B: AsRef<[u8]>>(
    key: &[u8],
    rev: Rev,
    fetch: impl Fn(Rev) -> Result<Option<B>, StateError>,
    with_value: bool,
) -> Result<(Vec<u8>, i64), StateError> {
    let raw = fetch(rev)?.ok_or(StateError::MissingRecord {
        main: rev.main,
        sub: rev.sub,
    })?;
    let (header, value) = decode_record(raw.as_ref())?;
    if header.key != key || header.tombstone {
        return Err(StateError::CorruptState(format!(
            "revision {}.{} holds {} of {:?}, the index says a put of {:?}",
            rev.main,
            rev.sub,
            if header.tombstone {
                "a delete"
            } else {
                "a put"
            },
            String::from_utf8_lossy(&header.key),
            String::from_utf8_lossy(key)
        )));
    }
    let value = if with_value {
        value.to_vec()
    } else {
        Vec::new()
    };
    Ok((value, header.lease))
}

/// Counts the keys of `range` alive at `at` and returns the first `limit`.
pub(super) fn resolve(
    index: &RwLock<KeyIndex>,
    range: &KeyRange,
    at: i64,
    limit: u64,
) -> (u64, Vec<(Vec<u8>, KeyAt)>) {
    let mut count = 0u64;
    let mut found = Vec::new();
    let (start, end) = match range {
        KeyRange::Single(key) => {
            if let Some(key_at) = read_lock(index).get(key, at) {
                count = 1;
                if limit > 0 {
                    found.push((key.clone(), key_at));
                }
            }
            return (count, found);
        }
        // etcd reads an end at or below the start as an empty interval (and
        // a BTreeMap range would panic on it).
        KeyRange::Between { start, end } if end <= start => return (0, found),
        KeyRange::Between { start, end } => (start, Some(end.as_slice())),
        KeyRange::From(start) => (start, None),
    };
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut resume: Option<Vec<u8>> = None;
    loop {
        let guard = read_lock(index);
        let lower = match &resume {
            Some(last) => Bound::Excluded(last.as_slice()),
            None => Bound::Included(start.as_slice()),
        };
        let mut visited = 0;
        let mut next = None;
        for (key, history) in guard.range(lower, upper) {
            if (found.len() as u64) < limit {
                if let Some(key_at) = history.at(at) {
                    count += 1;
                    found.push((key.clone(), key_at));
                }
            } else if history.alive_at(at) {
                count += 1;
            }
            visited += 1;
            if visited == KEYS_PER_LOCK {
                next = Some(key.clone());
                break;
            }
        }
        drop(guard);
        match next {
            Some(last) => resume = Some(last),
            None => return (count, found),
        }
    }
}
