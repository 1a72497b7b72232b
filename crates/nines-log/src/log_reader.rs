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

    /// What replication sends in one append: at most
    /// [`REPLICATION_BATCH_BYTES`] of records, at least one entry. openraft
    /// gives an append one heartbeat interval (75 ms by default) and asks
    /// for up to `max_payload_entries` at once: a follower 40 MB behind in
    /// 1 MB values was sent all 40 in one call, which timed out, was sent
    /// again, and the follower never caught up.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let end = self
            .wal
            .bounded_end(start, end, REPLICATION_BATCH_BYTES)
            .map_err(|e| e.read_logs())?;
        self.try_get_log_entries(start..end).await
    }
}

/// Bytes of records one append carries at most (see
/// `limited_get_log_entries`): 1 MiB reaches a follower and is synced there
/// well within a heartbeat interval, even in a debug build on a loaded
/// machine.
const REPLICATION_BATCH_BYTES: u64 = 1 << 20;
