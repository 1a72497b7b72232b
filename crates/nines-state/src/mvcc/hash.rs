//! etcd's HashKV: one checksum of the store's history at a revision, equal
//! on every member that applied the same log, so an operator can compare
//! members (`etcdctl endpoint hashkv --cluster`).
//!
//! What is hashed: every write a read at or below the revision could still
//! see (the compaction's survivors plus everything after it), key by key in
//! key order, each as its revision and its stored record (key, value,
//! create revision, version, tombstone flag). It is walked from the key
//! index, not the engine: records a compaction dropped may still sit on
//! disk until the sweep deletes them, at a pace that differs per member.

use std::ops::Bound;

use super::read::KEYS_PER_LOCK;
use super::{rev_key, Mvcc, Rev};
use crate::engine::Engine;
use crate::error::StateError;
use crate::store::read_lock;

/// A HashKV answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// crc32c (Castagnoli, as etcd's) of the writes at or below `revision`.
    pub hash: u32,
    /// The compacted revision the hash was taken at.
    pub compact_revision: i64,
    /// The revision hashed (the current one when 0 was asked).
    pub revision: i64,
}

/// A compaction that starts during a walk changes what is hashed: walk
/// again, a few times at most (compactions are minutes apart).
const ATTEMPTS: usize = 3;

impl<E: Engine> Mvcc<E> {
    /// The hash of the history at `at` (0 or less: the current revision).
    /// A revision not reached yet or compacted fails as a range would.
    pub fn hash_kv(&self, at: i64) -> Result<HashKv, StateError> {
        for _ in 0..ATTEMPTS {
            let compacted = self.compacted();
            let revision = self.read_revision(at)?;
            let hash = self.walk(compacted, revision);
            if self.compacted() == compacted {
                return Ok(HashKv {
                    hash: hash?,
                    compact_revision: compacted,
                    revision,
                });
            }
        }
        Err(StateError::Task(format!(
            "hash at revision {at}: compactions kept changing the history ({ATTEMPTS} attempts)"
        )))
    }

    fn walk(&self, compacted: i64, revision: i64) -> Result<u32, StateError> {
        let mut crc = 0u32;
        let mut resume: Option<Vec<u8>> = None;
        loop {
            // A chunk of keys under the lock, then their records without it.
            let chunk: Vec<(Vec<u8>, Vec<Rev>)> = {
                let index = read_lock(&self.index);
                let lower = match &resume {
                    Some(last) => Bound::Excluded(last.as_slice()),
                    None => Bound::Unbounded,
                };
                index
                    .range(lower, Bound::Unbounded)
                    .take(KEYS_PER_LOCK)
                    .map(|(key, history)| (key.clone(), history.kept_revs(compacted, revision)))
                    .collect()
            };
            for (_, revs) in &chunk {
                for rev in revs {
                    let key = rev_key(*rev);
                    let record = self.engine.get(&key)?.ok_or(StateError::MissingRecord {
                        main: rev.main,
                        sub: rev.sub,
                    })?;
                    let record = record.as_ref();
                    crc = crc32c::crc32c_append(crc, &key);
                    crc = crc32c::crc32c_append(crc, &(record.len() as u64).to_be_bytes());
                    crc = crc32c::crc32c_append(crc, record);
                }
            }
            if chunk.len() < KEYS_PER_LOCK {
                return Ok(crc);
            }
            resume = chunk.last().map(|(key, _)| key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use nines_types::Command;

    use super::super::tests::{put, Store};
    use super::*;

    fn history(last: &str) -> Store {
        let mut s = Store::new();
        s.apply(put("a", "1"));
        s.apply(put("b", "x"));
        s.apply(put("a", "2"));
        s.apply(Command::Delete {
            key: b"b".to_vec(),
            prev_kv: false,
        });
        s.apply(put("c", last));
        s
    }

    fn compact(revision: i64) -> Command {
        Command::Compact {
            revision,
            physical: false,
        }
    }

    #[test]
    fn same_history_same_hash_and_a_different_value_differs() {
        let (one, two) = (history("z"), history("z"));
        let a = one.mvcc.hash_kv(0).unwrap();
        assert_eq!(a, two.mvcc.hash_kv(0).unwrap());
        assert_eq!((a.revision, a.compact_revision), (5, 0));
        assert_ne!(a.hash, history("y").mvcc.hash_kv(0).unwrap().hash);
        // The rebuilt index walks the same records.
        assert_eq!(one.reopen().mvcc.hash_kv(0).unwrap(), a);
    }

    #[test]
    fn a_past_revision_hashes_only_what_was_written_by_then() {
        let full = history("z");
        let (at4, at5) = (full.mvcc.hash_kv(4).unwrap(), full.mvcc.hash_kv(5).unwrap());
        assert_eq!(at4.revision, 4);
        assert_ne!(at4.hash, at5.hash);
        // A store that stopped at 4 hashes as the longer one did at 4.
        let mut short = Store::new();
        short.apply(put("a", "1"));
        short.apply(put("b", "x"));
        short.apply(put("a", "2"));
        short.apply(Command::Delete {
            key: b"b".to_vec(),
            prev_kv: false,
        });
        assert_eq!(short.mvcc.hash_kv(0).unwrap(), at4);
        // Bigger sizes cover more than one index chunk.
        let mut many = Store::new();
        for i in 0..(KEYS_PER_LOCK * 2 + 3) {
            many.apply(put(&format!("k{i:05}"), "v"));
        }
        let h = many.mvcc.hash_kv(0).unwrap();
        assert_ne!(h.hash, many.mvcc.hash_kv(h.revision - 1).unwrap().hash);
    }

    #[test]
    fn compaction_and_revisions_outside_history() {
        let mut s = history("z");
        assert!(matches!(
            s.mvcc.hash_kv(6),
            Err(StateError::FutureRevision { .. })
        ));
        s.apply(compact(3));
        let compacted = s.mvcc.hash_kv(0).unwrap();
        assert_eq!(compacted.compact_revision, 3);
        assert!(matches!(
            s.mvcc.hash_kv(2),
            Err(StateError::Compacted { .. })
        ));
        // Dropped but unswept records on disk do not count: sweeping
        // changes nothing, and neither does a reopen.
        assert!(s.mvcc.sweep_all(3).unwrap() > 0);
        assert_eq!(s.mvcc.hash_kv(0).unwrap(), compacted);
        let s = s.reopen();
        assert_eq!(s.mvcc.hash_kv(0).unwrap(), compacted);
        // The compaction dropped history the uncompacted store still hashes.
        assert_ne!(history("z").mvcc.hash_kv(0).unwrap().hash, compacted.hash);
    }
}
