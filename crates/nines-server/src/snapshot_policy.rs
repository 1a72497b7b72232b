//! When to build a snapshot. openraft's own policy counts entries only, so
//! a store of a million keys was copied in full every 20,000 writes: at
//! 1,000,000 keys of 256 B that is a 272 MB scan and file write every few
//! seconds of load, which took put throughput down by a third and evicted
//! the page cache reads need. Here a snapshot also waits until the bytes
//! written since the last one reach half the data held, so its cost stays
//! proportional to what was written (the log it lets us purge is at most
//! about half the data, plus the entries kept behind it).

use std::time::Duration;

use nines_log::LogStore;
use nines_state::StateReader;
use nines_types::Raft;
use tokio::sync::watch;

/// How often the counters are looked at: well under the time a build takes.
const POLL: Duration = Duration::from_millis(200);
/// How long one requested build may take before it is asked for again.
const BUILD_WAIT: Duration = Duration::from_secs(120);
/// Past this many times the entry threshold, build whatever the bytes say
/// (a log of many tiny entries still costs replay time at restart).
const ENTRY_CAP_FACTOR: u64 = 32;

/// Whether a snapshot is due: at least `every` entries since the last one,
/// and either half the data rewritten since or far more entries than that.
pub fn due(entries_since: u64, written_since: u64, data_bytes: u64, every: u64) -> bool {
    let every = every.max(1);
    entries_since >= every
        && (written_since >= data_bytes / 2
            || entries_since >= every.saturating_mul(ENTRY_CAP_FACTOR))
}

/// How much log to keep behind a snapshot, at most.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    pub entries: u64,
    pub bytes: u64,
}

/// Asks openraft for a snapshot whenever [`due`] says so, and purges the
/// log behind each new snapshot down to what [`Keep`] allows, until `stop`.
pub async fn run(
    raft: Raft,
    reader: StateReader,
    log: LogStore,
    every: u64,
    keep: Keep,
    mut stop: watch::Receiver<bool>,
) {
    // Bytes written as of the last request (the counter starts at open).
    let mut mark = 0u64;
    // The snapshot the log was last purged behind.
    let mut purged_behind = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let (applied, snapshot) = {
            let m = raft.metrics();
            let m = m.borrow();
            let index = |l: Option<nines_types::LogId>| l.map(|l| l.index).unwrap_or(0);
            (index(m.last_applied), index(m.snapshot))
        };
        if snapshot > 0 && purged_behind != Some(snapshot) {
            purged_behind = Some(snapshot);
            // Any snapshot counts: built here, asked for by an admin, installed.
            match log.purge_point(snapshot, keep.entries, keep.bytes) {
                Ok(Some(upto)) => {
                    if raft.trigger().purge_log(upto).await.is_err() {
                        return; // shutting down
                    }
                }
                Ok(None) => {}
                // The log store reports fatal errors to openraft itself.
                Err(e) => tracing::warn!(error = %e, "cannot compute the log purge point"),
            }
        }
        let written = reader.written_bytes();
        let since = applied.saturating_sub(snapshot);
        if !due(
            since,
            written.saturating_sub(mark),
            reader.data_bytes(),
            every,
        ) {
            continue;
        }
        if raft.trigger().snapshot().await.is_err() {
            return; // shutting down
        }
        mark = written;
        // One build at a time: wait for this one to land before looking again.
        let _ = raft
            .wait(Some(BUILD_WAIT))
            .metrics(
                |m| m.snapshot.map(|l| l.index).unwrap_or(0) > snapshot,
                "snapshot built",
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn small_stores_snapshot_by_entries_alone() {
        // 10,000 keys of ~300 B: half the data is written long before
        // 20,000 entries, so the entry count decides, as before.
        assert!(!due(19_999, 6_000_000, 3_000_000, 20_000));
        assert!(due(20_000, 6_000_000, 3_000_000, 20_000));
    }

    #[test]
    fn large_stores_wait_for_half_the_data_to_be_written() {
        let data = 300 << 20;
        assert!(!due(100_000, 100 << 20, data, 20_000));
        assert!(due(100_000, 150 << 20, data, 20_000));
        // ... but not forever in entries.
        assert!(due(640_000, 1 << 20, data, 20_000));
        assert!(!due(639_999, 1 << 20, data, 20_000));
    }

    #[test]
    fn an_entry_threshold_of_zero_means_every_entry() {
        assert!(due(1, 0, 0, 0));
        assert!(!due(0, 0, 0, 0));
    }
}
