//! etcd's lock service: Lock queues a key attached to the caller's lease
//! and answers once every key queued before it is gone; Unlock deletes it.
//!
//! Differences from etcd, on purpose:
//! - etcd grants a 60-second lease when the request names none; nines
//!   refuses a lock without a lease (a holder that crashed would hold it
//!   for good, or for a TTL the caller never chose).
//! - When the client goes away mid-wait, both delete the key the call
//!   queued (etcd's Mutex.Lock releases it after a canceled wait); nines
//!   deletes it only as that call left it: a rejoin (a call with the same
//!   lease) writes the key, so the withdraw of a call abandoned before
//!   leaves alone the lock its client's retry (on another member) was
//!   told it holds; etcd's deletes it. A rejoin withdraws only once it saw
//!   its key wait behind another, as etcd's does. A wait that ends
//!   in an error (this member lost its leader) keeps the key, so the
//!   client's retry with the same lease takes the same place; etcd
//!   deletes it there too.
//! - A key deleted while its owner waited answers the lease error if the
//!   lease is gone (etcd 3.4 answered success, Jepsen's etcd 3.4.3
//!   finding; 3.5 answers "session is expired").

use super::{enqueue, key_vanished, turn, Kv, Local, Queue, Withdraw};
use crate::error::ApiError;

pub struct Lock<K> {
    pub kv: K,
    pub local: Local,
}

/// A lock now held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// The ownership key: it exists while the lock is held.
    pub key: Vec<u8>,
    /// Its create revision: the fencing token.
    pub fence: i64,
    /// The revision at which the key was seen to own the lock.
    pub revision: i64,
}

impl<K: Kv> Lock<K> {
    pub async fn lock(&self, name: &[u8], lease: i64) -> Result<Locked, ApiError> {
        let queue = Queue::new("lock", name)?;
        if lease == 0 {
            return Err(ApiError::InvalidRequest(
                "lock: a lease is required (the lock ends with it)".into(),
            ));
        }
        let key = queue.key(lease);
        let queued = enqueue(&self.kv, &key, b"", lease).await?;
        let mut withdraw = Withdraw::new(&self.kv, &queued);
        let arm = || withdraw.arm();
        let turn = turn::wait(&self.local, &queue, &key, queued.rev, queued.revision, arm).await;
        withdraw.disarm();
        match turn? {
            turn::Turn::Ours(revision) => Ok(Locked {
                key,
                fence: queued.rev,
                revision,
            }),
            turn::Turn::Gone(_) => Err(key_vanished(&self.local.reader, "lock", lease)),
        }
    }

    /// Deletes `key` (any key, as etcd's Unlock does: the caller names the
    /// key Lock gave it). Answers the revision after the delete.
    pub async fn unlock(&self, key: &[u8]) -> Result<i64, ApiError> {
        if key.is_empty() {
            return Err(nines_types::InputError::EmptyKey.into());
        }
        let txn = nines_types::Txn {
            compares: Vec::new(),
            success: vec![super::delete(key)],
            failure: Vec::new(),
        };
        Ok(self.kv.txn(txn).await?.revision)
    }
}
