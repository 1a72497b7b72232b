//! Locks and elections: etcd's `v3lock` and `v3election` services, with
//! the semantics of etcd's clientv3/concurrency recipes. A holder (or
//! campaigner) is a key `<name>/<lease in hex>` attached to its lease; the
//! key with the lowest create revision under `<name>/` owns the lock (or
//! leads), and that create revision is its fencing token.
//!
//! Writes go through [`Kv`], the API layer's write-or-forward path (applied
//! here on the leader, sent to the leader from a follower, each bounded by
//! the request timeout). Waiting is local: after its write, a waiter
//! follows this member's own applied history through the watch hub, so a
//! wait may outlast any request timeout without a call held open at the
//! leader. No protocol types here: `api/etcd/{lock,election}.rs` convert.

pub mod election;
pub mod lock;
#[cfg(test)]
mod tests;
mod turn;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nines_state::StateReader;
use nines_types::{
    CommandResult, Compare, CompareOp, CompareTarget, KeyRange, RangeRequest, Response, Txn, TxnOp,
    TxnOpResponse,
};

use crate::error::ApiError;
use crate::metrics::Counters;
use crate::watch::Hub;

pub use election::{Election, LeaderKey, Observed, Observer};
pub use lock::{Lock, Locked};

/// A txn as the state machine applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The store revision after the txn.
    pub revision: i64,
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

impl Applied {
    /// The state machine's answer to a txn, its refusals mapped as every
    /// write's are.
    pub fn of(response: Response) -> Result<Applied, ApiError> {
        match crate::api::convert::applied(response)? {
            (
                revision,
                CommandResult::Txn {
                    succeeded,
                    responses,
                },
            ) => Ok(Applied {
                revision,
                succeeded,
                responses,
            }),
            (_, other) => Err(ApiError::Internal(format!(
                "a txn was answered with {other:?}"
            ))),
        }
    }
}

/// The store as the coordinator writes to it and syncs with it.
pub trait Kv: Clone + Send + Sync + 'static {
    /// Applies `txn` through Raft: here on the leader, else at the leader.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<Applied, ApiError>> + Send;

    /// A revision this member's own state must reach for a read of it to
    /// be linearizable now (a read barrier, passed here or at the leader).
    fn read_barrier(&self) -> impl Future<Output = Result<i64, ApiError>> + Send;
}

/// This member's applied state and its watch hub.
#[derive(Clone)]
pub struct Local {
    pub reader: StateReader,
    pub hub: Arc<Hub>,
    /// Bounds a wait for this member to apply what the leader answered
    /// with: a member that cannot catch up fails the call, never hangs it.
    pub timeout: Duration,
    /// `has_leader` says whether this member is in contact with a leader.
    pub counters: Arc<Counters>,
}

/// How often a waiter checks that its member still hears from a leader.
const LEADER_CHECK: Duration = Duration::from_millis(500);

impl Local {
    /// Resolves once this member has lost contact with any leader: its
    /// history then stops, and a waiter here would wait for a release it
    /// cannot see (its key meanwhile blocking everyone behind it). The
    /// waiter answers UNAVAILABLE instead; its client calls another member
    /// with the same lease and takes the same place in the queue.
    pub async fn leader_lost(&self) {
        let mut tick = tokio::time::interval(LEADER_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.counters.has_leader.load(Ordering::Relaxed) != 1 {
                return;
            }
        }
    }

    /// Waits until this member's store has reached `revision`.
    pub async fn reach(&self, revision: i64) -> Result<(), ApiError> {
        let mut revisions = self.reader.subscribe();
        let reached = async move { revisions.wait_for(|r| *r >= revision).await.is_ok() };
        match tokio::time::timeout(self.timeout, reached).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::ShuttingDown),
            Err(_) => Err(ApiError::Timeout(self.timeout)),
        }
    }
}

/// The queue of lock `name` (or election `name`): every key under
/// `<name>/`. An empty name is refused: its queue would be `/`, shared by
/// every unnamed caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    prefix: Vec<u8>,
}

impl Queue {
    pub fn new(what: &str, name: &[u8]) -> Result<Queue, ApiError> {
        if name.is_empty() {
            return Err(ApiError::InvalidRequest(format!(
                "{what}: name is not provided"
            )));
        }
        let mut prefix = Vec::with_capacity(name.len() + 1);
        prefix.extend_from_slice(name);
        prefix.push(b'/');
        Ok(Queue { prefix })
    }

    /// Every key under the prefix. It ends in `/`, whose successor `0`
    /// bounds the range.
    pub fn range(&self) -> KeyRange {
        let mut end = self.prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = b'0';
        }
        KeyRange::Between {
            start: self.prefix.clone(),
            end,
        }
    }

    /// The key a holder with `lease` queues under: etcd's `%x` of the
    /// lease id (Go prints a negative one as `-` and its magnitude).
    pub fn key(&self, lease: i64) -> Vec<u8> {
        let hex = match lease {
            l if l < 0 => format!("-{:x}", l.unsigned_abs()),
            l => format!("{l:x}"),
        };
        let mut key = self.prefix.clone();
        key.extend_from_slice(hex.as_bytes());
        key
    }
}

/// A compare that holds while `key` is the incarnation created at `rev`
/// (0: while it does not exist).
pub fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        op: CompareOp::Equal,
        target: CompareTarget::CreateRevision(rev),
    }
}

/// A compare that holds while `key` was last written at `rev`.
pub fn written_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        op: CompareOp::Equal,
        target: CompareTarget::ModRevision(rev),
    }
}

/// A put attaching `key` to `lease` (none for 0).
pub fn put(key: &[u8], value: &[u8], lease: i64) -> TxnOp {
    match lease {
        0 => TxnOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            prev_kv: false,
        },
        lease => TxnOp::PutLeased {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            prev_kv: false,
        },
    }
}

pub fn delete(key: &[u8]) -> TxnOp {
    TxnOp::Delete {
        range: KeyRange::Single(key.to_vec()),
        prev_kv: false,
    }
}

/// Where a caller stands after queuing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    key: Vec<u8>,
    /// The key's create revision: its place in the queue.
    rev: i64,
    /// Whether this call created the key (else it rejoined it).
    created: bool,
    /// The revision the queuing txn (or the rejoin's claim) was applied
    /// at: the key's mod revision then.
    revision: i64,
}

/// How often a rejoin tries again when the key it found was deleted
/// before its claim.
const ENQUEUE_ATTEMPTS: usize = 3;

/// Queues `key` with `value` and `lease` unless it exists (one lease holds
/// one place: a second call with it rejoins the first's place, as in etcd).
/// A key there that is not attached to `lease` is refused: a key someone
/// put under the name by hand would otherwise hold the lock forever.
///
/// A rejoin claims the key by writing it again with `value` (for a
/// campaign, that is etcd's proclaim of a new value): the call that
/// created it may be an abandoned one, on another member, whose withdraw
/// (`Withdraw`) must then find the key changed and leave it to the caller.
async fn enqueue<K: Kv>(kv: &K, key: &[u8], value: &[u8], lease: i64) -> Result<Queued, ApiError> {
    for _ in 0..ENQUEUE_ATTEMPTS {
        let txn = Txn {
            compares: vec![created_at(key, 0)],
            success: vec![put(key, value, lease)],
            failure: vec![TxnOp::Get(RangeRequest::key(key.to_vec()))],
        };
        let applied = kv.txn(txn).await?;
        if applied.succeeded {
            return Ok(Queued {
                key: key.to_vec(),
                rev: applied.revision,
                created: true,
                revision: applied.revision,
            });
        }
        let existing = match applied.responses.into_iter().next() {
            Some(TxnOpResponse::Get(read)) => read.kvs.into_iter().next(),
            _ => None,
        };
        let Some(existing) = existing else {
            return Err(ApiError::Internal(
                "queuing txn failed its compare but read no key".into(),
            ));
        };
        if existing.lease != lease {
            return Err(ApiError::Precondition(format!(
                "key {} exists and is attached to lease {:x}, not {lease:x}",
                String::from_utf8_lossy(key),
                existing.lease
            )));
        }
        let claim = Txn {
            // Unchanged since read: a put under another lease meanwhile
            // must be refused, not taken over.
            compares: vec![
                created_at(key, existing.create_revision),
                written_at(key, existing.mod_revision),
            ],
            success: vec![put(key, value, lease)],
            failure: Vec::new(),
        };
        let claimed = kv.txn(claim).await?;
        if claimed.succeeded {
            return Ok(Queued {
                key: key.to_vec(),
                rev: existing.create_revision,
                created: false,
                revision: claimed.revision,
            });
        }
        // Deleted (unlocked, its lease ended) or written since it was
        // read: look again.
    }
    Err(ApiError::Precondition(format!(
        "key {} kept changing while queuing; try again",
        String::from_utf8_lossy(key)
    )))
}

/// What a waiter answers when its key vanished while it waited: the lease
/// error if the lease is gone (expired or revoked), else that someone
/// deleted the key (etcd 3.5's "session is expired").
fn key_vanished(reader: &StateReader, what: &str, lease: i64) -> ApiError {
    if reader.lease(lease).is_some() {
        return ApiError::Precondition(format!(
            "{what}: the key was deleted while waiting (session is expired)"
        ));
    }
    ApiError::LeaseNotFound
}

/// Deletes a key this call queued if the call is abandoned mid-wait (the
/// client went away or its deadline passed: the handler's future is
/// dropped), as etcd's Mutex.Lock and Election.Campaign clean up after a
/// canceled wait. Only the key as this call left it (created, or claimed
/// on a rejoin): once a later call with the same lease rejoined it (its
/// claim wrote it), it is that call's, which the client may have been told
/// holds the lock. A rejoin withdraws only once it saw its key wait behind
/// another (`arm`): etcd's Lock and Campaign return at once, never
/// withdrawing, when the key they rejoin already owns the lock. A wait
/// that ends in an error keeps the key: the client may call again with
/// its lease and take the same place (a delete racing that retry would
/// fail it), and the lease bounds the key's life otherwise.
struct Withdraw<K: Kv> {
    kv: K,
    key: Vec<u8>,
    /// The key's create and mod revisions as this call left it.
    rev: i64,
    written: i64,
    armed: bool,
    /// The caller's credentials: the delete runs in a task of its own,
    /// outside the call, and a follower forwards it to the leader, which
    /// refused it without them when auth was on (the key stayed and
    /// blocked the lock until its lease ended).
    identity: crate::auth::Identity,
}

impl<K: Kv> Withdraw<K> {
    fn new(kv: &K, queued: &Queued) -> Self {
        Withdraw {
            kv: kv.clone(),
            key: queued.key.clone(),
            rev: queued.rev,
            written: queued.revision,
            armed: queued.created,
            identity: crate::auth::current_identity(),
        }
    }

    /// A rejoin's key waits behind another: withdraw it if abandoned.
    fn arm(&mut self) {
        self.armed = true;
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl<K: Kv> Drop for Withdraw<K> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let kv = self.kv.clone();
        let key = std::mem::take(&mut self.key);
        let txn = Txn {
            compares: vec![created_at(&key, self.rev), written_at(&key, self.written)],
            success: vec![delete(&key)],
            failure: Vec::new(),
        };
        // Best effort, like etcd's: the lease still bounds the key's life.
        let identity = std::mem::take(&mut self.identity);
        runtime.spawn(crate::auth::with_identity(identity, async move {
            if let Err(e) = kv.txn(txn).await {
                tracing::debug!(
                    key = %String::from_utf8_lossy(&key),
                    "withdrawing an abandoned lock or campaign key failed: {e}"
                );
            }
        }));
    }
}
