//! What a compaction keeps, worked out from the stored records alone: for
//! each key, its newest record at or below the compacted revision, if that
//! is a put. Used where no compacted index exists yet (open, snapshot
//! build), on a store that may still hold records the compaction dropped.
//!
//! Correct on any store whose dropped records were deleted oldest first
//! (the sweep's order, kept by sled's crash recovery as a prefix): a
//! generation's tombstone is then never gone while an older put of it is
//! left, which would bring the deleted key back.

use std::collections::{HashMap, HashSet};

use super::index::{KeyAt, KeyIndex, Rev};
use super::record::RecordHeader;
use crate::error::StateError;

struct Newest {
    rev: Rev,
    tombstone: bool,
    create_revision: i64,
    version: i64,
}

#[derive(Default)]
pub(crate) struct Survivors {
    newest: HashMap<Vec<u8>, Newest>,
    /// Records seen that the compaction dropped.
    dropped: u64,
}

impl Survivors {
    /// Takes the next record at or below the compacted revision, in
    /// revision order.
    pub fn see(&mut self, header: RecordHeader, rev: Rev) -> Result<(), StateError> {
        let newest = Newest {
            rev,
            tombstone: header.tombstone,
            create_revision: header.create_revision,
            version: header.version,
        };
        match self.newest.get_mut(&header.key) {
            Some(old) if old.rev >= rev => Err(StateError::CorruptState(format!(
                "revision records out of order at {}.{}",
                rev.main, rev.sub
            ))),
            Some(old) => {
                *old = newest;
                self.dropped += 1;
                Ok(())
            }
            None => {
                self.newest.insert(header.key, newest);
                Ok(())
            }
        }
    }

    /// Starts the index with the kept records; returns how many records
    /// seen were dropped (left on disk by an unfinished deletion).
    pub fn into_index(self, index: &mut KeyIndex) -> Result<u64, StateError> {
        let mut dropped = self.dropped;
        for (key, n) in self.newest {
            if n.tombstone {
                dropped += 1;
                continue;
            }
            let at = KeyAt {
                rev: n.rev,
                create_revision: n.create_revision,
                version: n.version,
            };
            index.restore_compacted(&key, at)?;
        }
        Ok(dropped)
    }

    /// The revisions of the kept records.
    pub fn kept(self) -> HashSet<Rev> {
        self.newest
            .into_values()
            .filter(|n| !n.tombstone)
            .map(|n| n.rev)
            .collect()
    }
}
