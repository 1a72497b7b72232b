//! The engine as it will be once an apply's pending writes land: apply
//! reads its own writes through it before they are committed in one batch.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::engine::{Engine, Write};
use crate::error::StateError;

pub(crate) struct Overlay<'a, E> {
    engine: &'a E,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, E: Engine> Overlay<'a, E> {
    pub fn new(engine: &'a E) -> Self {
        Self {
            engine,
            writes: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => Ok(self.engine.get(key)?.map(|v| v.as_ref().to_vec())),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    pub fn into_writes(self) -> Vec<Write> {
        self.writes.into_iter().collect()
    }

    /// Visits live keys in `[start, end)` in order until `f` returns false.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StateError>,
    ) -> Result<(), StateError> {
        if start >= end {
            return Ok(());
        }
        let mut stored = self.engine.scan(start, Some(end));
        let mut pending = self
            .writes
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let mut s = stored.next().transpose()?;
        let mut p = pending.next();
        loop {
            let order = match (&s, &p) {
                (None, None) => return Ok(()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((sk, _)), Some((pk, _))) => sk.as_ref().cmp(pk.as_slice()),
            };
            if order == Ordering::Less {
                if let Some((k, v)) = s.take() {
                    if !f(k.as_ref(), v.as_ref())? {
                        return Ok(());
                    }
                }
                s = stored.next().transpose()?;
                continue;
            }
            if order == Ordering::Equal {
                // The pending write shadows the stored value.
                s = stored.next().transpose()?;
            }
            if let Some((k, Some(v))) = p.take() {
                if !f(k, v)? {
                    return Ok(());
                }
            }
            p = pending.next();
        }
    }
}
