//! History as a stream of changes, for watchers: every put and delete with
//! a main revision in a window, in revision order, read from the revision
//! records (their keys sort by revision, so this is one engine scan).

use nines_types::KeyValue;

use super::index::Rev;
use super::read::{get, key_value};
use super::record::{decode_record, parse_rev_key, rev_key};
use super::Mvcc;
use crate::engine::Engine;
use crate::error::StateError;

/// One write: a put with its key-value, or a delete whose key-value has
/// only `key` and `mod_revision` set (as etcd's delete events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub deleted: bool,
    pub kv: KeyValue,
}

impl Change {
    /// Bytes this change holds (key and value), for memory bounds.
    pub fn size(&self) -> usize {
        self.kv.key.len() + self.kv.value.len()
    }
}

/// The changes with main revisions in `from..=through`, oldest first.
/// `through` may be below the window asked for when a byte bound cut the
/// read short; the revision it names is always complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub changes: Vec<Change>,
    pub through: i64,
}

impl<E: Engine> Mvcc<E> {
    /// The changes with main revisions in `from..=to` (`to` capped at the
    /// published revision), stopping after the first revision that takes
    /// the bytes read past `max_bytes` (one revision is never split, so a
    /// read returns at least one whole revision if any is in the window).
    /// History at or below the compacted revision is gone: a window that
    /// starts there fails with [`StateError::Compacted`] (a compaction
    /// drops the deletes at its revision, so that one is not complete).
    pub fn changes(&self, from: i64, to: i64, max_bytes: usize) -> Result<Changes, StateError> {
        let to = to.min(self.revision());
        let from = from.max(1);
        if from > to {
            return Ok(Changes {
                changes: Vec::new(),
                through: to,
            });
        }
        // A window must start above the compacted revision: `from - 1` at
        // or above it, which is what `checked` requires of a read.
        self.checked(from - 1, self.scan_changes(from, to, max_bytes))
    }

    fn scan_changes(&self, from: i64, to: i64, max_bytes: usize) -> Result<Changes, StateError> {
        let start = rev_key(Rev { main: from, sub: 0 });
        let end = rev_key(Rev {
            main: to.saturating_add(1),
            sub: 0,
        });
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        let mut through = to;
        for item in self.engine.scan(&start, Some(&end)) {
            let (raw_key, raw) = item?;
            let rev = parse_rev_key(raw_key.as_ref())?;
            if bytes > max_bytes
                && changes
                    .last()
                    .is_some_and(|c: &Change| c.kv.mod_revision < rev.main)
            {
                through = rev.main - 1;
                break;
            }
            let change = change_of(rev, raw.as_ref())?;
            bytes = bytes.saturating_add(change.size());
            changes.push(change);
        }
        Ok(Changes { changes, through })
    }

    /// `key` as it was just before main revision `before` (a watcher's
    /// `prev_kv`); None if it did not exist then.
    pub fn before(&self, key: &[u8], before: i64) -> Result<Option<KeyValue>, StateError> {
        let at = before - 1;
        let read = get(&self.index, key, at, |rev| self.engine.get(&rev_key(rev)));
        self.checked(at, read)
    }
}

/// The change a revision record holds.
fn change_of(rev: Rev, raw: &[u8]) -> Result<Change, StateError> {
    let (header, value) = decode_record(raw)?;
    Ok(if header.tombstone {
        Change {
            deleted: true,
            kv: KeyValue {
                key: header.key,
                mod_revision: rev.main,
                ..KeyValue::default()
            },
        }
    } else {
        let at = super::KeyAt {
            rev,
            create_revision: header.create_revision,
            version: header.version,
        };
        let kv = key_value(header.key, value.to_vec(), at, header.lease);
        Change { deleted: false, kv }
    })
}

/// The changes among an apply's engine writes (its new revision records),
/// in revision order.
pub(crate) fn changes_of(writes: &[crate::engine::Write]) -> Result<Vec<Change>, StateError> {
    let mut records: Vec<(Rev, &[u8])> = Vec::new();
    for (key, value) in writes {
        if let (Some(&super::REV_PREFIX), Some(value)) = (key.first(), value) {
            records.push((parse_rev_key(key)?, value));
        }
    }
    records.sort_by_key(|(rev, _)| *rev);
    records
        .into_iter()
        .map(|(rev, raw)| change_of(rev, raw))
        .collect()
}
