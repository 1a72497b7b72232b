//! The lock and election logic on a real state machine and watch hub, with
//! writes applied straight to it (no Raft): queue order, waking on the
//! predecessor's delete, a lease revoked while waiting, an abandoned wait
//! withdrawing its key, and an observer's view of leadership changes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nines_state::{StateMachine, StateOptions};
use nines_types::{Command, Entry, LogId, RangeRequest, Request, Response};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

use super::election::{NOT_LEADER, NO_LEADER};
use super::*;
use crate::metrics::Counters;

/// Writes applied in order to one state machine, as a one-member cluster
/// would.
#[derive(Clone)]
struct Direct {
    sm: Arc<tokio::sync::Mutex<(StateMachine, u64)>>,
    reader: StateReader,
}

impl Direct {
    async fn apply(&self, command: Command) -> Response {
        let mut guard = self.sm.lock().await;
        guard.1 += 1;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), guard.1),
            payload: EntryPayload::Normal(Request::new(command)),
        };
        guard.0.apply([entry]).await.expect("apply").remove(0)
    }

    async fn grant(&self, id: i64) {
        self.apply(Command::LeaseGrant { id, ttl: 60 }).await;
    }

    async fn revoke(&self, id: i64) {
        self.apply(Command::LeaseRevoke { id }).await;
    }

    fn exists(&self, key: &[u8]) -> bool {
        let read = self.reader.range(&RangeRequest::key(key.to_vec())).unwrap();
        !read.data.kvs.is_empty()
    }
}

impl Kv for Direct {
    async fn txn(&self, txn: Txn) -> Result<Applied, ApiError> {
        Applied::of(self.apply(Command::Txn(txn)).await)
    }

    async fn read_barrier(&self) -> Result<i64, ApiError> {
        Ok(self.reader.revision())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    kv: Direct,
    local: Local,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path(), StateOptions::default())
            .await
            .unwrap();
        let reader = sm.reader();
        let counters = Arc::new(Counters::default());
        // A one-member cluster hears from its leader.
        counters.has_leader.store(1, Ordering::Relaxed);
        let hub = Hub::start(reader.clone(), counters.clone());
        let kv = Direct {
            sm: Arc::new(tokio::sync::Mutex::new((sm, 0))),
            reader: reader.clone(),
        };
        let local = Local {
            reader,
            hub,
            timeout: Duration::from_secs(5),
            counters,
        };
        Fixture {
            _dir: dir,
            kv,
            local,
        }
    }

    fn lock(&self) -> Arc<Lock<Direct>> {
        Arc::new(Lock {
            kv: self.kv.clone(),
            local: self.local.clone(),
        })
    }

    fn election(&self) -> Arc<Election<Direct>> {
        Arc::new(Election {
            kv: self.kv.clone(),
            local: self.local.clone(),
        })
    }
}

/// A spawned call that must still be waiting.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) {
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!task.is_finished(), "the call should still be waiting");
}

async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the call finishes")
        .expect("the task does not panic")
}

#[tokio::test]
async fn a_lock_waits_for_every_older_holder_in_queue_order() {
    let f = Fixture::new().await;
    for lease in [1, 2, 3] {
        f.kv.grant(lease).await;
    }
    let lock = f.lock();
    let first = lock.lock(b"job", 1).await.unwrap();
    assert_eq!(first.key, b"job/1");
    let l = lock.clone();
    let second = tokio::spawn(async move { l.lock(b"job", 2).await });
    still_waiting(&second).await;
    let l = lock.clone();
    let third = tokio::spawn(async move { l.lock(b"job", 3).await });
    still_waiting(&third).await;
    // Releasing the newest waiter's predecessor's predecessor wakes only
    // the next in line.
    lock.unlock(&first.key).await.unwrap();
    let second = finished(second).await.unwrap();
    assert!(second.fence > first.fence, "fencing tokens increase");
    still_waiting(&third).await;
    lock.unlock(&second.key).await.unwrap();
    let third = finished(third).await.unwrap();
    assert!(third.fence > second.fence);
    assert!(third.revision >= third.fence);
}

#[tokio::test]
async fn a_waiter_whose_predecessor_leaves_the_queue_waits_for_the_one_before() {
    let f = Fixture::new().await;
    for lease in [1, 2, 3] {
        f.kv.grant(lease).await;
    }
    let lock = f.lock();
    let first = lock.lock(b"q", 1).await.unwrap();
    let l = lock.clone();
    let second = tokio::spawn(async move { l.lock(b"q", 2).await });
    still_waiting(&second).await;
    let l = lock.clone();
    let third = tokio::spawn(async move { l.lock(b"q", 3).await });
    still_waiting(&third).await;
    // The middle waiter's lease ends: it fails, the last keeps waiting.
    f.kv.revoke(2).await;
    let err = finished(second).await.unwrap_err().to_string();
    assert!(err.contains("lease not found"), "{err}");
    still_waiting(&third).await;
    lock.unlock(&first.key).await.unwrap();
    finished(third).await.unwrap();
}

#[tokio::test]
async fn locking_again_with_one_lease_is_one_acquisition() {
    let f = Fixture::new().await;
    f.kv.grant(7).await;
    let lock = f.lock();
    let a = lock.lock(b"m", 7).await.unwrap();
    let b = lock.lock(b"m", 7).await.unwrap();
    assert_eq!((a.key.clone(), a.fence), (b.key, b.fence));
    assert!(f.kv.exists(&a.key));
}

#[tokio::test]
async fn an_abandoned_wait_withdraws_the_key_it_created() {
    let f = Fixture::new().await;
    f.kv.grant(1).await;
    f.kv.grant(2).await;
    let lock = f.lock();
    lock.lock(b"w", 1).await.unwrap();
    // The client goes away: the handler's future is dropped mid-wait.
    let waited = tokio::time::timeout(Duration::from_millis(200), lock.lock(b"w", 2)).await;
    assert!(waited.is_err(), "the second locker waits");
    let key = Queue::new("lock", b"w").unwrap().key(2);
    for _ in 0..50 {
        if !f.kv.exists(&key) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the abandoned waiter's key is still there");
}

/// The client's wait on one member is cut off; it calls again with its
/// lease (on another member), rejoins its key and is told it holds the
/// lock; only then does the first member drop the abandoned call. Its
/// withdraw used to delete the key the client now holds.
#[tokio::test]
async fn an_abandoned_call_spares_the_key_a_retry_rejoined() {
    let f = Fixture::new().await;
    f.kv.grant(1).await;
    f.kv.grant(2).await;
    let lock = f.lock();
    let first = lock.lock(b"r", 1).await.unwrap();
    let mut abandoned = Box::pin(lock.lock(b"r", 2));
    let waited = tokio::time::timeout(Duration::from_millis(200), &mut abandoned).await;
    assert!(waited.is_err(), "the first call waits");
    let l = lock.clone();
    let retry = tokio::spawn(async move { l.lock(b"r", 2).await });
    still_waiting(&retry).await;
    lock.unlock(&first.key).await.unwrap();
    let held = finished(retry).await.unwrap();
    drop(abandoned);
    // The withdraw runs in a task of its own: give it time, then write
    // once more so that it has been applied if it was sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.kv.grant(3).await;
    assert!(f.kv.exists(&held.key), "the lock the retry holds is gone");
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_write() {
    let f = Fixture::new().await;
    let lock = f.lock();
    let err = |r: Result<Locked, ApiError>| r.unwrap_err();
    assert!(matches!(
        err(lock.lock(b"", 5).await),
        ApiError::InvalidRequest(_)
    ));
    assert!(matches!(
        err(lock.lock(b"n", 0).await),
        ApiError::InvalidRequest(_)
    ));
    // A lease that does not exist: the queuing put is refused.
    assert!(lock.lock(b"n", 99).await.is_err());
    assert!(!f.kv.exists(b"n/63"));
    assert!(lock.unlock(b"").await.is_err());
    // A key put by hand under the name, with no lease, is not a holder's.
    f.kv.grant(5).await;
    f.kv.txn(Txn {
        compares: Vec::new(),
        success: vec![put(b"n/5", b"", 0)],
        failure: Vec::new(),
    })
    .await
    .unwrap();
    assert!(matches!(
        err(lock.lock(b"n", 5).await),
        ApiError::Precondition(_)
    ));
}

#[test]
fn queue_keys_follow_etcd() {
    let q = Queue::new("lock", b"a/b").unwrap();
    assert_eq!(q.key(0x694d77aa9e1e3c0b), b"a/b/694d77aa9e1e3c0b");
    assert_eq!(q.key(-26), b"a/b/-1a");
    assert_eq!(
        q.range(),
        KeyRange::Between {
            start: b"a/b/".to_vec(),
            end: b"a/b0".to_vec()
        }
    );
    assert!(Queue::new("lock", b"").is_err());
}

#[tokio::test]
async fn an_election_hands_over_and_observers_see_each_change() {
    let f = Fixture::new().await;
    f.kv.grant(1).await;
    f.kv.grant(2).await;
    let election = f.election();
    assert!(matches!(
        election.leader(b"e").await,
        Err(ApiError::Precondition(m)) if m == NO_LEADER
    ));
    let mut observer = election.observe(b"e").await.unwrap();
    let (a, _) = election.campaign(b"e", 1, b"a").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), observer.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.kv.key.as_slice(), seen.kv.value.as_slice()),
        (&b"e/1"[..], &b"a"[..])
    );
    election.proclaim(&a, b"a2").await.unwrap();
    let seen = observer.next().await.unwrap();
    assert_eq!(seen.kv.value, b"a2");
    assert_eq!(election.leader(b"e").await.unwrap().kv.value, b"a2");

    let e = election.clone();
    let b = tokio::spawn(async move { e.campaign(b"e", 2, b"b").await });
    still_waiting(&b).await;
    election.resign(&a).await.unwrap();
    let (b, _) = finished(b).await.unwrap();
    let seen = observer.next().await.unwrap();
    assert_eq!(
        (seen.kv.key.as_slice(), seen.kv.value.as_slice()),
        (&b"e/2"[..], &b"b"[..])
    );
    assert_eq!(seen.kv.create_revision, b.rev);
    // The old leadership can no longer proclaim; resigning it is a no-op.
    assert!(matches!(
        election.proclaim(&a, b"late").await,
        Err(ApiError::Precondition(m)) if m == NOT_LEADER
    ));
    election.resign(&a).await.unwrap();
    assert_eq!(election.leader(b"e").await.unwrap().kv.value, b"b");
}

#[tokio::test]
async fn campaigning_again_with_one_lease_proclaims_the_new_value() {
    let f = Fixture::new().await;
    f.kv.grant(4).await;
    let election = f.election();
    let (first, _) = election.campaign(b"c", 4, b"x").await.unwrap();
    let (again, _) = election.campaign(b"c", 4, b"y").await.unwrap();
    assert_eq!(first, again);
    assert_eq!(election.leader(b"c").await.unwrap().kv.value, b"y");
}

/// Both the call and its client's retry are abandoned mid-wait: the
/// key goes (the first call's withdraw finds it rewritten, the retry's
/// withdraws it), and does not hold the queue for the lease's life.
#[tokio::test]
async fn a_rejoin_abandoned_too_withdraws_the_key() {
    let f = Fixture::new().await;
    f.kv.grant(1).await;
    f.kv.grant(2).await;
    let lock = f.lock();
    let first = lock.lock(b"s", 1).await.unwrap();
    let mut abandoned = Box::pin(lock.lock(b"s", 2));
    let waited = tokio::time::timeout(Duration::from_millis(200), &mut abandoned).await;
    assert!(waited.is_err(), "the first call waits");
    let mut retry = Box::pin(lock.lock(b"s", 2));
    let waited = tokio::time::timeout(Duration::from_millis(200), &mut retry).await;
    assert!(waited.is_err(), "the retry waits");
    drop(abandoned);
    drop(retry);
    let key = Queue::new("lock", b"s").unwrap().key(2);
    for _ in 0..50 {
        if !f.kv.exists(&key) {
            assert!(f.kv.exists(&first.key));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the key of two abandoned calls is still queued");
}

/// The holder calls Lock again with its lease through a member that has
/// not applied the claim yet, and gives up: the lock it holds stays, as
/// etcd's Lock returns at once for a key that owns the lock.
#[tokio::test]
async fn a_holder_rejoining_and_giving_up_keeps_its_lock() {
    let f = Fixture::new().await;
    // A member that applies none of `f`'s writes.
    let lagging = Fixture::new().await;
    f.kv.grant(1).await;
    let held = f.lock().lock(b"h", 1).await.unwrap();
    let through_lagging = Lock {
        kv: f.kv.clone(),
        local: lagging.local.clone(),
    };
    let waited =
        tokio::time::timeout(Duration::from_millis(300), through_lagging.lock(b"h", 1)).await;
    assert!(waited.is_err(), "the lagging member waits for the claim");
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.kv.grant(2).await;
    assert!(f.kv.exists(&held.key), "the holder's lock was withdrawn");
}

/// `an_abandoned_call_spares_the_key_a_retry_rejoined`, for a campaign.
#[tokio::test]
async fn an_abandoned_campaign_spares_the_leadership_a_retry_rejoined() {
    let f = Fixture::new().await;
    f.kv.grant(1).await;
    f.kv.grant(2).await;
    let election = f.election();
    let (first, _) = election.campaign(b"e", 1, b"a").await.unwrap();
    let mut abandoned = Box::pin(election.campaign(b"e", 2, b"b"));
    let waited = tokio::time::timeout(Duration::from_millis(200), &mut abandoned).await;
    assert!(waited.is_err(), "the first campaign waits");
    let e = election.clone();
    let retry = tokio::spawn(async move { e.campaign(b"e", 2, b"b").await });
    still_waiting(&retry).await;
    election.resign(&first).await.unwrap();
    let (leader, _) = finished(retry).await.unwrap();
    drop(abandoned);
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.kv.grant(3).await;
    assert!(f.kv.exists(&leader.key), "the retry's leadership is gone");
    assert_eq!(election.leader(b"e").await.unwrap().kv.value, b"b");
}

#[tokio::test]
async fn a_waiter_on_a_member_without_a_leader_gives_up_and_keeps_its_place() {
    let f = Fixture::new().await;
    f.kv.grant(1).await;
    f.kv.grant(2).await;
    let lock = f.lock();
    let first = lock.lock(b"p", 1).await.unwrap();
    let l = lock.clone();
    let waiting = tokio::spawn(async move { l.lock(b"p", 2).await });
    still_waiting(&waiting).await;
    f.local.counters.has_leader.store(0, Ordering::Relaxed);
    assert!(matches!(finished(waiting).await, Err(ApiError::NoLeader)));
    // The key stays for the client's retry, which takes the same place.
    let key = Queue::new("lock", b"p").unwrap().key(2);
    assert!(f.kv.exists(&key));
    f.local.counters.has_leader.store(1, Ordering::Relaxed);
    let l = lock.clone();
    let retry = tokio::spawn(async move { l.lock(b"p", 2).await });
    still_waiting(&retry).await;
    lock.unlock(&first.key).await.unwrap();
    assert_eq!(finished(retry).await.unwrap().key, key);
}
