//! `RaftLogReader`: reads come from the in-memory cache of recent entries or
//! positional reads of the segment files.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use nines_types::{Entry, StorageError, TypeConfig};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};

use crate::log_store::{storage_error, LogStore};

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e,
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&e) => e - 1,
            Bound::Unbounded => u64::MAX,
        };
        if start > end {
            return Ok(Vec::new());
        }
        self.with_wal(move |wal| wal.read(start, end))
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}
