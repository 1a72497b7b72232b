//! How far the local Raft log is on disk.
//!
//! A leader may hand its own entries to openraft (and so to replication)
//! before their fdatasync finishes, the overlap Raft's thesis allows in
//! section 10.2.1. openraft 0.9 then counts the leader in the commit quorum
//! at once, so nothing that reveals a commit may run ahead of the leader's
//! own disk: the state machine applies an entry, and followers learn a
//! commit index, only up to the durable index published here.

use std::time::Duration;

use tokio::sync::watch;

/// Creates the publishing side (owned by the log) and a reader.
pub fn durable_index(initial: u64) -> (DurableIndexTx, DurableIndex) {
    let (tx, rx) = watch::channel(initial);
    (DurableIndexTx(tx), DurableIndex(rx))
}

/// Written by the log store only.
#[derive(Debug)]
pub struct DurableIndexTx(watch::Sender<u64>);

impl DurableIndexTx {
    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }

    /// Raises the index after an fdatasync covered entries up to `index`.
    pub fn advance(&self, index: u64) {
        self.0.send_if_modified(|cur| {
            let raise = index > *cur;
            if raise {
                *cur = index;
            }
            raise
        });
    }

    /// Sets the index outright: after a truncate or a reset of the log.
    pub fn set(&self, index: u64) {
        self.0.send_if_modified(|cur| {
            let changed = index != *cur;
            *cur = index;
            changed
        });
    }

    pub fn subscribe(&self) -> DurableIndex {
        DurableIndex(self.0.subscribe())
    }
}

/// The highest log index known to be on the local disk.
#[derive(Clone, Debug)]
pub struct DurableIndex(watch::Receiver<u64>);

impl DurableIndex {
    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }

    /// Waits until `index` is durable. Returns false only if the log is gone.
    pub async fn wait_for(&mut self, index: u64) -> bool {
        self.0.wait_for(|d| *d >= index).await.is_ok()
    }

    /// Like [`DurableIndex::wait_for`], but gives up after `limit`.
    pub async fn wait_for_within(&mut self, index: u64, limit: Duration) -> bool {
        if self.get() >= index {
            return true;
        }
        matches!(
            tokio::time::timeout(limit, self.wait_for(index)).await,
            Ok(true)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_the_index_reaches_them() {
        let (tx, mut rx) = durable_index(3);
        assert!(rx.wait_for(3).await);
        assert!(!rx.wait_for_within(5, Duration::from_millis(20)).await);
        let mut waiter = rx.clone();
        let task = tokio::spawn(async move { waiter.wait_for(5).await });
        tx.advance(4);
        tx.advance(2); // never lowers
        assert_eq!(rx.get(), 4);
        tx.advance(5);
        assert!(task.await.unwrap());
        tx.set(1);
        assert_eq!(rx.get(), 1);
    }
}
