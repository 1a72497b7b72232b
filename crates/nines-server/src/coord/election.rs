//! etcd's election service: Campaign queues a key holding the candidate's
//! value and answers once it is the oldest (the leader); Proclaim and
//! Resign act only while the leader key is the incarnation the campaign
//! created; Leader reads the oldest key; Observe follows it.
//!
//! Like the lock (see `lock.rs`): a lease is required, and an abandoned
//! campaign withdraws only the key it created.

use std::collections::VecDeque;

use nines_types::{KeyRange, KeyValue, Txn};

use super::turn::{self, Follow};
use super::{created_at, delete, enqueue, key_vanished, put, Kv, Local, Queue, Withdraw};
use crate::error::ApiError;
use crate::watch::WatchSpec;

pub const NOT_LEADER: &str = "election: not leader";
pub const NO_LEADER: &str = "election: no leader";

pub struct Election<K> {
    pub kv: K,
    pub local: Local,
}

/// One leadership: what Proclaim and Resign name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: Vec<u8>,
    pub key: Vec<u8>,
    /// The key's create revision (the fencing token).
    pub rev: i64,
    pub lease: i64,
}

/// The leader's key as an observer sees it, at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub revision: i64,
    pub kv: KeyValue,
}

impl<K: Kv> Election<K> {
    /// Waits until the caller leads election `name`; answers its
    /// leadership and the revision it was seen leading at.
    pub async fn campaign(
        &self,
        name: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<(LeaderKey, i64), ApiError> {
        let queue = Queue::new("election", name)?;
        if lease == 0 {
            return Err(ApiError::InvalidRequest(
                "election: a lease is required (leadership ends with it)".into(),
            ));
        }
        let key = queue.key(lease);
        let queued = enqueue(&self.kv, &key, value, lease).await?;
        let mut withdraw = Withdraw::new(&self.kv, &queued);
        let leader = LeaderKey {
            name: name.to_vec(),
            key,
            rev: queued.rev,
            lease,
        };
        // Campaigning again with the same lease: the key kept its place
        // and took the new value (`enqueue`'s claim; etcd proclaims it).
        let after = queued.revision;
        let arm = || withdraw.arm();
        let turn = turn::wait(&self.local, &queue, &leader.key, leader.rev, after, arm).await;
        withdraw.disarm();
        match turn? {
            turn::Turn::Ours(revision) => Ok((leader, revision)),
            turn::Turn::Gone(_) => Err(key_vanished(&self.local.reader, "election", lease)),
        }
    }

    /// Sets the leader's value if `leader` still holds its key; answers
    /// the revision after the write.
    pub async fn proclaim(&self, leader: &LeaderKey, value: &[u8]) -> Result<i64, ApiError> {
        check_leader_key(leader)?;
        let txn = Txn {
            compares: vec![created_at(&leader.key, leader.rev)],
            success: vec![put(&leader.key, value, leader.lease)],
            failure: Vec::new(),
        };
        let applied = self.kv.txn(txn).await?;
        if !applied.succeeded {
            return Err(ApiError::Precondition(NOT_LEADER.into()));
        }
        Ok(applied.revision)
    }

    /// Deletes the leader key if `leader` still holds it (a resignation of
    /// a leadership already gone succeeds, as in etcd).
    pub async fn resign(&self, leader: &LeaderKey) -> Result<i64, ApiError> {
        check_leader_key(leader)?;
        let txn = Txn {
            compares: vec![created_at(&leader.key, leader.rev)],
            success: vec![delete(&leader.key)],
            failure: Vec::new(),
        };
        Ok(self.kv.txn(txn).await?.revision)
    }

    /// The current leader's key and value, linearizably.
    pub async fn leader(&self, name: &[u8]) -> Result<Observed, ApiError> {
        let queue = Queue::new("election", name)?;
        let barrier = self.kv.read_barrier().await?;
        self.local.reach(barrier).await?;
        match turn::first(&self.local.reader, &queue)? {
            (Some(kv), revision) => Ok(Observed { revision, kv }),
            (None, _) => Err(ApiError::Precondition(NO_LEADER.into())),
        }
    }

    /// Follows election `name` from now (linearizably: the first leader
    /// handed out is at least as new as any write done before this call).
    pub async fn observe(&self, name: &[u8]) -> Result<Observer, ApiError> {
        let queue = Queue::new("election", name)?;
        let barrier = self.kv.read_barrier().await?;
        self.local.reach(barrier).await?;
        Ok(Observer {
            local: self.local.clone(),
            queue,
            following: None,
            pending: VecDeque::new(),
            last: None,
        })
    }
}

/// A leader key that cannot name a leadership is refused before any write.
fn check_leader_key(leader: &LeaderKey) -> Result<(), ApiError> {
    if leader.key.is_empty() {
        return Err(ApiError::InvalidRequest(
            "election: leader key is not provided".into(),
        ));
    }
    Ok(())
}

/// Follows an election on this member's history: hands out the leader's
/// key and value each time the leader or its value changes, in order.
pub struct Observer {
    local: Local,
    queue: Queue,
    /// The leader key being followed, and its watcher.
    following: Option<(Vec<u8>, Follow)>,
    /// Changes read and not handed out yet.
    pending: VecDeque<Observed>,
    /// The last handed out (key, mod revision): one leader state is never
    /// handed out twice when it is read again.
    last: Option<(Vec<u8>, i64)>,
}

impl Observer {
    /// The next leader state; waits as long as there is none new.
    /// UNAVAILABLE once this member loses its leader: its history stops,
    /// and the client should follow the election elsewhere.
    pub async fn next(&mut self) -> Result<Observed, ApiError> {
        let local = self.local.clone();
        tokio::select! {
            next = self.next_here() => next,
            () = local.leader_lost() => Err(ApiError::NoLeader),
        }
    }

    async fn next_here(&mut self) -> Result<Observed, ApiError> {
        loop {
            if let Some(observed) = self.pending.pop_front() {
                self.last = Some((observed.kv.key.clone(), observed.kv.mod_revision));
                return Ok(observed);
            }
            let Some((key, follow)) = self.following.as_mut() else {
                self.find_leader().await?;
                continue;
            };
            let Some(events) = follow.next().await? else {
                self.following = None;
                continue;
            };
            let key = key.clone();
            for event in events {
                if event.kv.key != key {
                    continue;
                }
                if event.deleted {
                    // A new leader, or none: read again.
                    self.following = None;
                    break;
                }
                self.push(event.kv.mod_revision, event.kv);
            }
        }
    }

    fn push(&mut self, revision: i64, kv: KeyValue) {
        if self.last.as_ref() == Some(&(kv.key.clone(), kv.mod_revision)) {
            return;
        }
        self.pending.push_back(Observed { revision, kv });
    }

    /// Reads the leader; with none, waits for a key to be put in the queue
    /// (the first one is the leader) and reads again.
    async fn find_leader(&mut self) -> Result<(), ApiError> {
        let (leader, at) = turn::first(&self.local.reader, &self.queue)?;
        match leader {
            Some(kv) => {
                let spec = WatchSpec {
                    range: KeyRange::Single(kv.key.clone()),
                    start_revision: at + 1,
                    prev_kv: false,
                    no_put: false,
                    no_delete: false,
                };
                let follow = Follow::new(&self.local.hub, spec);
                self.following = Some((kv.key.clone(), follow));
                self.push(at, kv);
            }
            None => {
                let spec = WatchSpec {
                    range: self.queue.range(),
                    start_revision: at + 1,
                    prev_kv: false,
                    no_put: false,
                    no_delete: true,
                };
                // Any put (or a compacted history) means: read again.
                Follow::new(&self.local.hub, spec).next().await?;
            }
        }
        Ok(())
    }
}
