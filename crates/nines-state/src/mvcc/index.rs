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
    /// Never empty: a generation starts with the put that created the key.
    puts: Vec<Rev>,
    end: Option<Rev>,
}

impl Generation {
    fn newest(&self) -> Rev {
        self.end.unwrap_or_else(|| self.puts[self.puts.len() - 1])
    }
}

/// Every write of one key, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyHistory {
    generations: Vec<Generation>,
}

impl KeyHistory {
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
            create_revision: generation.puts[0].main,
            version: seen as i64,
        })
    }

    fn newest(&self) -> Option<Rev> {
        self.generations.last().map(Generation::newest)
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
            }),
        }
        Ok(())
    }

    fn tombstone(&mut self, rev: Rev) -> Result<(), IndexError> {
        match self.generations.last_mut() {
            Some(open) if open.end.is_none() => {
                if rev <= open.newest() {
                    return Err(IndexError::OutOfOrder);
                }
                open.end = Some(rev);
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
                return;
            }
            self.generations.pop();
        }
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
    fn empty_and_inverted_ranges_yield_nothing() {
        let mut index = KeyIndex::default();
        index.put(b"b", rev(1, 0)).unwrap();
        let r = |l, u| index.range(l, u).count();
        assert_eq!(r(Bound::Included(&b"b"[..]), Bound::Excluded(&b"b"[..])), 0);
        assert_eq!(r(Bound::Excluded(&b"c"[..]), Bound::Excluded(&b"a"[..])), 0);
        assert_eq!(r(Bound::Excluded(&b"b"[..]), Bound::Excluded(&b"b"[..])), 0);
        assert_eq!(r(Bound::Included(&b"a"[..]), Bound::Unbounded), 1);
    }
}
