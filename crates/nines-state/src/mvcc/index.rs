//! The in-memory key index: for every key, the revisions it was written
//! at, grouped into generations (one life from creation to deletion), so a
//! read at any revision finds the right record, its create_revision and its
//! version without visiting a value.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::StateError;

/// A write's place in history: the main revision of the command that made
/// it, and its position among that command's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Rev {
    pub main: i64,
    pub sub: u32,
}

/// What a key is at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyAt {
    /// The write that produced the visible value (its `mod_revision`).
    pub rev: Rev,
    pub create_revision: i64,
    pub version: i64,
}

/// One life of a key: its puts in order, and the tombstone that ended it.
#[derive(Debug, Clone)]
struct Generation {
    /// Never empty. Starts with the put that created the key, unless a
    /// compaction dropped the older puts (see `first_version`).
    puts: Vec<Rev>,
    end: Option<Rev>,
    /// Kept apart from `puts[0]`: after a compaction the first put left is
    /// not the creation.
    create_revision: i64,
    /// The version `puts[0]` gave the key.
    first_version: i64,
}

impl Generation {
    fn newest(&self) -> Rev {
        self.end.unwrap_or_else(|| self.puts[self.puts.len() - 1])
    }
}

/// Every write of one key, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct KeyHistory {
    generations: Vec<Generation>,
    /// The key exists at every revision from this one on (the first put of
    /// its open generation), or i64::MAX if it is deleted now. Kept inline
    /// so that counting a range (`alive_at`) reads only the index's B-tree
    /// nodes: a range with a limit counts every key past the limit too.
    alive_since: i64,
}

impl Default for KeyHistory {
    fn default() -> Self {
        KeyHistory {
            generations: Vec::new(),
            alive_since: i64::MAX,
        }
    }
}

impl KeyHistory {
    /// Whether the key exists at main revision `at`: `at(at).is_some()`,
    /// without leaving the index node for keys alive since before `at`.
    pub fn alive_at(&self, at: i64) -> bool {
        // i64::MAX marks a deleted key, and apply reads at i64::MAX.
        (self.alive_since != i64::MAX && self.alive_since <= at) || self.at(at).is_some()
    }

    /// Recomputes `alive_since` after a change to `generations`.
    fn refresh(&mut self) {
        self.alive_since = match self.generations.last() {
            Some(open) if open.end.is_none() => open.puts[0].main,
            _ => i64::MAX,
        };
    }

    /// The key as a read at main revision `at` sees it; None if it did not
    /// exist then.
    pub fn at(&self, at: i64) -> Option<KeyAt> {
        let started = self.generations.partition_point(|g| g.puts[0].main <= at);
        let generation = self.generations.get(started.checked_sub(1)?)?;
        if generation.end.is_some_and(|end| end.main <= at) {
            return None;
        }
        let seen = generation.puts.partition_point(|p| p.main <= at);
        let rev = *generation.puts.get(seen.checked_sub(1)?)?;
        Some(KeyAt {
            rev,
            create_revision: generation.create_revision,
            version: generation.first_version.saturating_add(seen as i64 - 1),
        })
    }

    fn newest(&self) -> Option<Rev> {
        self.generations.last().map(Generation::newest)
    }

    /// The writes a compaction at `compacted` keeps, at or below `at`, oldest
    /// first (puts and tombstones). Computed on a copy, so it is the same
    /// whether or not the index already dropped that history: a hash taken
    /// while a compaction is dropping it sees one answer.
    pub fn kept_revs(&self, compacted: i64, at: i64) -> Vec<Rev> {
        let mut kept = self.clone();
        kept.compact(compacted);
        kept.generations
            .iter()
            .flat_map(|g| g.puts.iter().copied().chain(g.end))
            .filter(|rev| rev.main <= at)
            .collect()
    }

    fn put(&mut self, rev: Rev) -> Result<(), IndexError> {
        if self.newest().is_some_and(|newest| rev <= newest) {
            return Err(IndexError::OutOfOrder);
        }
        match self.generations.last_mut() {
            Some(open) if open.end.is_none() => open.puts.push(rev),
            _ => self.generations.push(Generation {
                puts: vec![rev],
                end: None,
                create_revision: rev.main,
                first_version: 1,
            }),
        }
        self.refresh();
        Ok(())
    }

    /// Drops what a compaction at `at` drops (etcd's keyIndex.compact):
    /// generations that ended at or below it, and every put at or below it
    /// but the newest of the generation live at `at`.
    fn compact(&mut self, at: i64) {
        let ended = self
            .generations
            .partition_point(|g| g.end.is_some_and(|end| end.main <= at));
        self.generations.drain(..ended);
        // Only the first generation left can hold puts at or below `at`:
        // every later one began after it ended, above `at`.
        if let Some(first) = self.generations.first_mut() {
            let seen = first.puts.partition_point(|p| p.main <= at);
            if seen > 1 {
                first.puts.drain(..seen - 1);
                first.first_version = first.first_version.saturating_add(seen as i64 - 1);
            }
        }
        self.refresh();
    }

    /// Whether `rev` is one of the writes this history still holds.
    fn holds(&self, rev: Rev) -> bool {
        self.generations
            .iter()
            .any(|g| g.end == Some(rev) || g.puts.binary_search(&rev).is_ok())
    }

    fn tombstone(&mut self, rev: Rev) -> Result<(), IndexError> {
        match self.generations.last_mut() {
            Some(open) if open.end.is_none() => {
                if rev <= open.newest() {
                    return Err(IndexError::OutOfOrder);
                }
                open.end = Some(rev);
                self.refresh();
                Ok(())
            }
            _ => Err(IndexError::NotLive),
        }
    }

    /// Forgets every write with a main revision above `main`.
    fn truncate_after(&mut self, main: i64) {
        while let Some(last) = self.generations.last_mut() {
            if last.end.is_some_and(|end| end.main > main) {
                last.end = None;
            }
            while last.puts.last().is_some_and(|p| p.main > main) {
                last.puts.pop();
            }
            if !last.puts.is_empty() {
                break;
            }
            self.generations.pop();
        }
        self.refresh();
    }

    fn is_empty(&self) -> bool {
        self.generations.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("a write is not newer than the key's last one")]
    OutOfOrder,
    #[error("a delete of a key that does not exist")]
    NotLive,
}

/// Every key ever written (tombstones included) with its history.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
}

impl KeyIndex {
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.at(at)
    }

    pub fn put(&mut self, key: &[u8], rev: Rev) -> Result<(), StateError> {
        match self.keys.get_mut(key) {
            Some(history) => history.put(rev).map_err(|e| index_error(e, key, rev)),
            None => {
                let mut history = KeyHistory::default();
                history.put(rev).map_err(|e| index_error(e, key, rev))?;
                self.keys.insert(key.to_vec(), history);
                Ok(())
            }
        }
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Rev) -> Result<(), StateError> {
        self.keys
            .get_mut(key)
            .ok_or(IndexError::NotLive)
            .and_then(|history| history.tombstone(rev))
            .map_err(|e| index_error(e, key, rev))
    }

    /// Starts `key`'s history with a put whose older history a compaction
    /// dropped: its create revision and version come from its record.
    pub fn restore_compacted(&mut self, key: &[u8], at: KeyAt) -> Result<(), StateError> {
        let sane = at.create_revision >= 1 && at.create_revision <= at.rev.main && at.version >= 1;
        if !sane || self.keys.contains_key(key) {
            return Err(StateError::CorruptState(format!(
                "the record kept by compaction at {}.{} of {:?} says create {} version {}",
                at.rev.main,
                at.rev.sub,
                String::from_utf8_lossy(key),
                at.create_revision,
                at.version
            )));
        }
        let mut history = KeyHistory {
            generations: vec![Generation {
                puts: vec![at.rev],
                end: None,
                create_revision: at.create_revision,
                first_version: at.version,
            }],
            alive_since: i64::MAX,
        };
        history.refresh();
        self.keys.insert(key.to_vec(), history);
        Ok(())
    }

    /// Compacts up to `max_keys` keys after `after` (all keys from the first
    /// if None) at revision `at`; returns the last key visited if more are
    /// left. Chunked so an apply or read never waits for the whole index.
    pub fn compact_chunk(
        &mut self,
        after: Option<&[u8]>,
        at: i64,
        max_keys: usize,
    ) -> Option<Vec<u8>> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut emptied = Vec::new();
        let mut last = None;
        for (visited, (key, history)) in self
            .keys
            .range_mut::<[u8], _>((lower, Bound::Unbounded))
            .enumerate()
        {
            history.compact(at);
            if history.is_empty() {
                emptied.push(key.clone());
            }
            if visited + 1 >= max_keys {
                last = Some(key.clone());
                break;
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        last
    }

    /// Whether the record at `rev`, a write of `key`, is still in history.
    pub fn holds(&self, key: &[u8], rev: Rev) -> bool {
        self.keys.get(key).is_some_and(|h| h.holds(rev))
    }

    /// Undoes an apply that failed: drops the writes of `keys` above `main`.
    pub fn truncate_after(&mut self, keys: &[Vec<u8>], main: i64) {
        for key in keys {
            if let Some(history) = self.keys.get_mut(key) {
                history.truncate_after(main);
                if history.is_empty() {
                    self.keys.remove(key);
                }
            }
        }
    }

    /// Keys in `(lower, upper)` with their histories, in order. An empty or
    /// inverted range yields nothing (a BTreeMap range would panic on it).
    pub fn range<'a>(
        &'a self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyHistory)> + 'a {
        let empty = match (lower, upper) {
            (Bound::Included(l), Bound::Excluded(u)) => l >= u,
            (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
            (Bound::Excluded(l), Bound::Included(u)) => l >= u,
            (Bound::Included(l), Bound::Included(u)) => l > u,
            _ => false,
        };
        let range = if empty {
            None
        } else {
            Some(self.keys.range::<[u8], _>((lower, upper)))
        };
        range.into_iter().flatten()
    }
}

fn index_error(e: IndexError, key: &[u8], rev: Rev) -> StateError {
    StateError::CorruptState(format!(
        "key index: {e} (key {:?}, revision {}.{})",
        String::from_utf8_lossy(key),
        rev.main,
        rev.sub
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64, sub: u32) -> Rev {
        Rev { main, sub }
    }

    fn at(rev: Rev, create_revision: i64, version: i64) -> Option<KeyAt> {
        Some(KeyAt {
            rev,
            create_revision,
            version,
        })
    }

    #[test]
    fn generations_answer_every_revision() {
        let mut index = KeyIndex::default();
        index.put(b"k", rev(2, 0)).unwrap();
        index.put(b"k", rev(4, 1)).unwrap();
        index.tombstone(b"k", rev(5, 0)).unwrap();
        index.put(b"k", rev(7, 0)).unwrap();
        assert_eq!(index.get(b"k", 1), None);
        assert_eq!(index.get(b"k", 2), at(rev(2, 0), 2, 1));
        assert_eq!(index.get(b"k", 3), at(rev(2, 0), 2, 1));
        assert_eq!(index.get(b"k", 4), at(rev(4, 1), 2, 2));
        assert_eq!(index.get(b"k", 5), None);
        assert_eq!(index.get(b"k", 6), None);
        assert_eq!(index.get(b"k", 7), at(rev(7, 0), 7, 1));
        assert_eq!(index.get(b"k", i64::MAX), at(rev(7, 0), 7, 1));
        assert_eq!(index.get(b"other", 7), None);
    }

    #[test]
    fn one_revision_may_delete_and_recreate_a_key() {
        let mut index = KeyIndex::default();
        index.put(b"k", rev(1, 0)).unwrap();
        // A txn: delete k, then put k.
        index.tombstone(b"k", rev(2, 0)).unwrap();
        index.put(b"k", rev(2, 1)).unwrap();
        assert_eq!(index.get(b"k", 1), at(rev(1, 0), 1, 1));
        assert_eq!(index.get(b"k", 2), at(rev(2, 1), 2, 1));
        // A txn: put k, then delete it.
        index.put(b"k", rev(3, 0)).unwrap();
        index.tombstone(b"k", rev(3, 1)).unwrap();
        assert_eq!(index.get(b"k", 3), None);
    }

    #[test]
    fn out_of_order_writes_are_refused() {
        let mut index = KeyIndex::default();
        index.put(b"k", rev(3, 0)).unwrap();
        assert!(index.put(b"k", rev(3, 0)).is_err());
        assert!(index.put(b"k", rev(2, 5)).is_err());
        assert!(index.tombstone(b"gone", rev(4, 0)).is_err());
        index.tombstone(b"k", rev(4, 0)).unwrap();
        assert!(index.tombstone(b"k", rev(5, 0)).is_err());
    }

    #[test]
    fn truncate_undoes_a_failed_apply() {
        let mut index = KeyIndex::default();
        index.put(b"k", rev(1, 0)).unwrap();
        index.tombstone(b"k", rev(2, 0)).unwrap();
        index.put(b"k", rev(2, 1)).unwrap();
        index.put(b"new", rev(2, 2)).unwrap();
        let touched = vec![b"k".to_vec(), b"new".to_vec(), b"k".to_vec()];
        index.truncate_after(&touched, 1);
        assert_eq!(index.get(b"k", i64::MAX), at(rev(1, 0), 1, 1));
        assert_eq!(index.range(Bound::Unbounded, Bound::Unbounded).count(), 1);
        index.put(b"k", rev(2, 0)).unwrap();
    }

    #[test]
    fn compaction_keeps_the_newest_put_of_the_live_generation() {
        let mut index = KeyIndex::default();
        index.put(b"k", rev(1, 0)).unwrap();
        index.put(b"k", rev(2, 0)).unwrap();
        index.tombstone(b"k", rev(3, 0)).unwrap();
        index.put(b"k", rev(4, 0)).unwrap();
        index.put(b"k", rev(5, 0)).unwrap();
        index.put(b"k", rev(7, 0)).unwrap();
        index.put(b"gone", rev(2, 1)).unwrap();
        index.tombstone(b"gone", rev(6, 0)).unwrap();
        assert!(index.compact_chunk(None, 6, 100).is_none());
        // The ended generation of k and the whole history of `gone` are dropped.
        assert!(!index.holds(b"k", rev(1, 0)) && !index.holds(b"k", rev(3, 0)));
        assert!(!index.holds(b"k", rev(4, 0)) && index.holds(b"k", rev(5, 0)));
        assert_eq!(index.range(Bound::Unbounded, Bound::Unbounded).count(), 1);
        // Reads at or above the compaction answer as before.
        assert_eq!(index.get(b"k", 6), at(rev(5, 0), 4, 2));
        assert_eq!(index.get(b"k", 7), at(rev(7, 0), 4, 3));
        assert_eq!(index.get(b"gone", 6), None);
        // Compacting again at the same revision changes nothing.
        index.compact_chunk(None, 6, 1);
        assert_eq!(index.get(b"k", 7), at(rev(7, 0), 4, 3));
    }

    #[test]
    fn compaction_resumes_after_the_last_key_of_a_chunk() {
        let mut index = KeyIndex::default();
        for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
            index.put(*key, rev(i as i64 + 1, 0)).unwrap();
            index.tombstone(*key, rev(i as i64 + 4, 0)).unwrap();
        }
        let next = index.compact_chunk(None, 10, 2);
        assert_eq!(next.as_deref(), Some(&b"b"[..]));
        assert_eq!(index.range(Bound::Unbounded, Bound::Unbounded).count(), 1);
        assert!(index.compact_chunk(next.as_deref(), 10, 2).is_none());
        assert_eq!(index.range(Bound::Unbounded, Bound::Unbounded).count(), 0);
    }

    #[test]
    fn a_compacted_history_restores_from_its_kept_record() {
        let mut index = KeyIndex::default();
        let kept = KeyAt {
            rev: rev(5, 1),
            create_revision: 2,
            version: 3,
        };
        index.restore_compacted(b"k", kept).unwrap();
        index.put(b"k", rev(6, 0)).unwrap();
        assert_eq!(index.get(b"k", 5), Some(kept));
        assert_eq!(index.get(b"k", 6), at(rev(6, 0), 2, 4));
        assert!(index.restore_compacted(b"k", kept).is_err(), "twice");
        let bad = KeyAt {
            create_revision: 9,
            ..kept
        };
        assert!(index.restore_compacted(b"x", bad).is_err(), "created later");
    }

    #[test]
    fn empty_and_inverted_ranges_yield_nothing() {
        let mut index = KeyIndex::default();
        index.put(b"b", rev(1, 0)).unwrap();
        let r = |l, u| index.range(l, u).count();
        assert_eq!(r(Bound::Included(&b"b"[..]), Bound::Excluded(&b"b"[..])), 0);
        assert_eq!(r(Bound::Excluded(&b"c"[..]), Bound::Excluded(&b"a"[..])), 0);
        assert_eq!(r(Bound::Excluded(&b"b"[..]), Bound::Excluded(&b"b"[..])), 0);
        assert_eq!(r(Bound::Included(&b"a"[..]), Bound::Unbounded), 1);
    }

    #[test]
    fn alive_at_agrees_with_at_through_every_change() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut h = KeyHistory::default();
            let mut main = 0;
            for _ in 0..rng.gen_range(1..30) {
                main += rng.gen_range(1..3);
                match rng.gen_range(0..10) {
                    0..=5 => {
                        let _ = h.put(rev(main, 0));
                    }
                    6 | 7 => {
                        let _ = h.tombstone(rev(main, 0));
                    }
                    8 => h.compact(rng.gen_range(0..=main)),
                    _ => h.truncate_after(rng.gen_range(0..=main)),
                }
                for at in (0..=main + 2).chain([i64::MAX]) {
                    assert_eq!(h.alive_at(at), h.at(at).is_some(), "at {at}: {h:?}");
                }
            }
        }
    }
}
