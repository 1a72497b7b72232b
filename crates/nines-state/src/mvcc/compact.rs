//! Compaction: the index drops history at apply (in chunks, so reads and
//! applies wait for one chunk at most), then a sweep deletes the dropped
//! records from the engine in bounded chunks, beside applies.

use std::sync::atomic::Ordering;

use super::read::KEYS_PER_LOCK;
use super::{decode_record, parse_rev_key, rev_key, Mvcc, Rev, REV_PREFIX};
use crate::engine::Engine;
use crate::error::StateError;
use crate::store::read_lock;

impl<E: Engine> Mvcc<E> {
    /// Reads below this revision fail; 0 if never compacted.
    pub fn compacted(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Records a compaction dropped that were still on disk at open.
    pub fn dropped_at_open(&self) -> u64 {
        self.dropped_at_open
    }

    /// Makes a compaction at `at` visible, then drops it from the index.
    /// Call after the apply that stored it is published: `at` is then at or
    /// below the published revision.
    pub fn compact(&self, at: i64) {
        // First, so a read that sees dropped history fails its recheck.
        self.compacted.fetch_max(at, Ordering::AcqRel);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let next = self
                .index_mut()
                .compact_chunk(after.as_deref(), at, KEYS_PER_LOCK);
            match next {
                Some(last) => after = Some(last),
                None => return,
            }
        }
    }

    /// Deletes up to `max` records at or below `at` that the index no
    /// longer holds, oldest first, starting at `from`. Returns where to go
    /// on, None once every record at or below `at` was visited. Safe beside
    /// applies and reads: it only deletes what the index dropped, and no
    /// read resolves to a record the index dropped (see `checked`).
    pub fn sweep(
        &self,
        at: i64,
        from: Option<Rev>,
        max: usize,
    ) -> Result<(Option<Rev>, u64), StateError> {
        let start = from.map_or_else(|| vec![REV_PREFIX], |r| rev_key(r).to_vec());
        let end = rev_key(Rev {
            main: at.saturating_add(1),
            sub: 0,
        });
        let mut seen = Vec::new();
        let mut next = None;
        for item in self.engine.scan(&start, Some(&end)) {
            let (raw_key, raw) = item?;
            let rev = parse_rev_key(raw_key.as_ref())?;
            if seen.len() == max {
                next = Some(rev);
                break;
            }
            let (header, _) = decode_record(raw.as_ref())?;
            let size = raw_key.as_ref().len() + raw.as_ref().len();
            seen.push((header.key, rev, raw_key.as_ref().to_vec(), size));
        }
        let mut freed = 0;
        let doomed: Vec<Vec<u8>> = {
            let index = read_lock(&self.index);
            seen.into_iter()
                .filter(|(key, rev, _, _)| !index.holds(key, *rev))
                .map(|(_, _, raw_key, size)| {
                    freed += size as u64;
                    raw_key
                })
                .collect()
        };
        let removed = self.engine.remove_each(&doomed);
        // Counted as freed even if the removal failed part way: the error
        // ends the sweep, and the next open recounts from the engine.
        self.sub_record_bytes(freed);
        removed?;
        Ok((next, doomed.len() as u64))
    }

    /// Sweeps everything at or below `at` (tests and small stores).
    #[cfg(test)]
    pub fn sweep_all(&self, at: i64) -> Result<u64, StateError> {
        let mut from = None;
        let mut deleted = 0;
        loop {
            let (next, n) = self.sweep(at, from, 1000)?;
            deleted += n;
            match next {
                Some(rev) => from = Some(rev),
                None => return Ok(deleted),
            }
        }
    }
}
