//! `RaftLogReader`: positional reads of entries through the in-memory index.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use nines_types::{Entry, StorageError, TypeConfig};
use openraft::{OptionalSend, RaftLogReader};

use crate::LogStore;

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
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        if self.wal.is_recent(start).map_err(|e| e.read_logs())? {
            // Replication reads what was just written: the page cache has it.
            return self.wal.read(start, end).map_err(|e| e.read_logs());
        }
        self.run(move |wal| wal.read(start, end))
            .await
            .map_err(|e| e.read_logs())
    }
}
