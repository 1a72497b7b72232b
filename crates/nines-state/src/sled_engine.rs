//! The production [`Engine`]: one sled tree, with crash-atomic batches
//! through a redo record (`redo.rs`).

use crate::engine::{Engine, ScanIter, Write};
use crate::error::StateError;
use crate::redo;

pub(crate) struct SledEngine {
    tree: sled::Tree,
}

impl SledEngine {
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// The tree itself, for what only sled has: swapping trees on install.
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }
}

impl Engine for SledEngine {
    type Bytes = sled::IVec;

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StateError> {
        Ok(self.tree.get(key)?)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_, sled::IVec> {
        let iter = match end {
            // sled panics on an inverted range.
            Some(end) if end <= start => return Box::new(std::iter::empty()),
            Some(end) => self.tree.range(start..end),
            None => self.tree.range(start..),
        };
        Box::new(iter.map(|r| r.map_err(StateError::from)))
    }

    fn write_batch(&self, writes: &[Write]) -> Result<(), StateError> {
        redo::write_atomically(&self.tree, writes)
    }

    fn remove_each(&self, keys: &[Vec<u8>]) -> Result<(), StateError> {
        // Single removes, no redo record: this runs beside applies, and the
        // redo record belongs to the apply thread alone.
        for key in keys {
            self.tree.remove(key.as_slice())?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StateError> {
        self.tree.flush()?;
        Ok(())
    }
}
