//! Concurrent reads while Raft owns the state machine.
//!
//! Reads go straight to the current sled tree. They see each applied batch
//! as sled exposes it and never a half-installed snapshot (installs build a
//! new tree and swap the handle). Serve them on the leader after a read
//! barrier for linearizability.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nines_types::{KeyValue, LogId, RangeRequest, RangeResponse};

use crate::apply::Overlay;
use crate::error::StateError;
use crate::store::{data_key, decode, RawRecord, Shared, StoredValue};

#[derive(Clone)]
pub struct StateReader {
    pub(crate) shared: Arc<Shared>,
}

impl StateReader {
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StateError> {
        self.shared.opts.limits.check_read(req)?;
        let tree = self.shared.current_tree();
        Overlay::new(&tree).range(req)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StateError> {
        let tree = self.shared.current_tree();
        match tree.get(data_key(key))? {
            Some(raw) => Ok(Some(decode::<StoredValue>(&raw)?.into_kv(key, false))),
            None => Ok(None),
        }
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.cached_applied()
    }

    /// Test hook: every raw record of the current tree (data, sessions, meta).
    #[doc(hidden)]
    pub fn dump_raw(&self) -> Result<Vec<RawRecord>, StateError> {
        let tree = self.shared.current_tree();
        tree.iter()
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StateError::from)
            })
            .collect()
    }
}
