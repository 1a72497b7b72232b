//! The storage seam: what the state machine needs from an ordered key-value
//! engine. sled backs it in production (`sled_engine.rs`); unit tests of the
//! multi-version logic use the in-memory [`MemEngine`].

use crate::error::StateError;

/// One write of a batch: a value, or `None` to remove the key.
pub(crate) type Write = (Vec<u8>, Option<Vec<u8>>);

/// Records in key order, as an engine scan yields them.
pub(crate) type ScanIter<'a, B> = Box<dyn Iterator<Item = Result<(B, B), StateError>> + 'a>;

pub(crate) trait Engine: Send + Sync + 'static {
    /// A stored key or value; sled hands out its own buffers without a copy.
    type Bytes: AsRef<[u8]> + Send;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Bytes>, StateError>;

    /// Records with `start <= key` and, when `end` is given, `key < end`.
    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_, Self::Bytes>;

    /// Applies `writes` so that a crash leaves all of them or none. Not
    /// durable by itself: the Raft log is, and the state is rebuilt from the
    /// newest snapshot plus the log.
    fn write_batch(&self, writes: &[Write]) -> Result<(), StateError>;

    /// Removes `keys` one by one, in order, NOT atomically: only for records
    /// any prefix of whose removal leaves a consistent store (what a
    /// compaction dropped). Unlike `write_batch` it may run beside an apply.
    fn remove_each(&self, keys: &[Vec<u8>]) -> Result<(), StateError>;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StateError>;
}

/// A `BTreeMap` engine for unit tests: every batch is atomic by holding
/// the lock, nothing is durable.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemEngine {
    map: std::sync::RwLock<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
}

#[cfg(test)]
impl Engine for MemEngine {
    type Bytes = Vec<u8>;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.map.read().expect("mem engine lock").get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_, Vec<u8>> {
        use std::ops::Bound;
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        if end.is_some_and(|e| e <= start) {
            return Box::new(std::iter::empty());
        }
        // Copied out: the lock must not outlive this call.
        let records: Vec<_> = self
            .map
            .read()
            .expect("mem engine lock")
            .range::<[u8], _>((Bound::Included(start), upper))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(records.into_iter())
    }

    fn write_batch(&self, writes: &[Write]) -> Result<(), StateError> {
        let mut map = self.map.write().expect("mem engine lock");
        for (key, value) in writes {
            match value {
                Some(v) => map.insert(key.clone(), v.clone()),
                None => map.remove(key),
            };
        }
        Ok(())
    }

    fn remove_each(&self, keys: &[Vec<u8>]) -> Result<(), StateError> {
        for key in keys {
            self.map.write().expect("mem engine lock").remove(key);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }
}
