//! Leases in the state machine: grant, attach, revoke deleting every key
//! in one revision, checkpoints, and the table surviving a reopen and a
//! snapshot install.

mod common;

use common::*;
use nines_state::LeaseInfo;
use nines_types::{
    Command, CommandResult, Keep, KeyRange, LeaseRemaining, RangeRequest, RejectReason, Txn, TxnOp,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

fn put(key: &str, lease: i64) -> Command {
    Command::Put {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        prev_kv: false,
    }
}

fn get_lease(sm: &nines_state::StateMachine, key: &str) -> Option<i64> {
    let read = sm.reader().range(&RangeRequest::key(key)).unwrap();
    read.data.kvs.first().map(|kv| kv.lease)
}

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let granted = a.cmd(Command::LeaseGrant { id: 7, ttl: 10 }).await;
    assert_eq!(
        granted.result,
        CommandResult::LeaseGranted { id: 7, ttl: 10 }
    );
    // A grant does not move the revision (etcd).
    assert_eq!(granted.revision, 1);
    for key in ["a", "b", "c"] {
        a.cmd(put(key, 7)).await;
    }
    a.cmd(put("free", 0)).await;
    assert_eq!(get_lease(&a.sm, "b"), Some(7));
    assert_eq!(
        a.sm.reader().lease_keys(7),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );

    let before = a.sm.reader().revision();
    let revoked = a.cmd(Command::LeaseRevoke { id: 7 }).await;
    assert_eq!(revoked.result, CommandResult::LeaseRevoked { deleted: 3 });
    assert_eq!(revoked.revision, before + 1, "one revision for all keys");
    let all =
        a.sm.reader()
            .range(&RangeRequest::range(KeyRange::From(vec![0])))
            .unwrap();
    assert_eq!(all.data.kvs.len(), 1);
    assert_eq!(all.data.kvs[0].key, b"free");
    // The deletes are in history at that one revision, in one change set.
    let changes =
        a.sm.reader()
            .changes(before + 1, before + 1, usize::MAX)
            .unwrap();
    assert_eq!(changes.changes.len(), 3);
    assert!(changes
        .changes
        .iter()
        .all(|c| c.deleted && c.kv.mod_revision == before + 1));
    assert_eq!(a.sm.reader().lease(7), None);
    assert_eq!(
        a.cmd(Command::LeaseRevoke { id: 7 }).await.result,
        CommandResult::Rejected(RejectReason::LeaseNotFound(7))
    );
}

#[tokio::test]
async fn puts_need_a_granted_lease_and_rewrites_move_keys_between_leases() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let refused = a.cmd(put("k", 5)).await;
    assert_eq!(
        refused.result,
        CommandResult::Rejected(RejectReason::LeaseNotFound(5))
    );
    assert_eq!(a.sm.reader().revision(), 1, "a refused put changes nothing");
    a.cmd(Command::LeaseGrant { id: 5, ttl: 10 }).await;
    a.cmd(Command::LeaseGrant { id: 6, ttl: 10 }).await;
    assert_eq!(
        a.cmd(Command::LeaseGrant { id: 6, ttl: 30 }).await.result,
        CommandResult::Rejected(RejectReason::LeaseExists(6))
    );
    a.cmd(put("k", 5)).await;
    a.cmd(put("k", 6)).await;
    assert_eq!(a.sm.reader().lease_keys(5), Vec::<Vec<u8>>::new());
    assert_eq!(a.sm.reader().lease_keys(6), vec![b"k".to_vec()]);
    // ignore_lease keeps the key's lease; a plain put detaches it.
    a.cmd(Command::PutKeeping {
        key: b"k".to_vec(),
        value: b"w".to_vec(),
        lease: 0,
        prev_kv: false,
        keep: Keep {
            value: false,
            lease: true,
        },
    })
    .await;
    assert_eq!(get_lease(&a.sm, "k"), Some(6));
    a.cmd(put("k", 0)).await;
    assert_eq!(get_lease(&a.sm, "k"), Some(0));
    assert!(a.sm.reader().lease_keys(6).is_empty());
    // Revoking 6 now leaves k alone, and moves no revision.
    let before = a.sm.reader().revision();
    let revoked = a.cmd(Command::LeaseRevoke { id: 6 }).await;
    assert_eq!(revoked.result, CommandResult::LeaseRevoked { deleted: 0 });
    assert_eq!(revoked.revision, before);
    assert!(get_lease(&a.sm, "k").is_some());
}

#[tokio::test]
async fn a_txn_with_an_unknown_lease_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.cmd(Command::LeaseGrant { id: 1, ttl: 10 }).await;
    let txn = |lease| {
        Command::Txn(Txn {
            compares: vec![],
            success: vec![
                TxnOp::Put {
                    key: b"plain".to_vec(),
                    value: vec![],
                    prev_kv: false,
                },
                TxnOp::PutLeased {
                    key: b"leased".to_vec(),
                    value: vec![],
                    lease,
                    prev_kv: false,
                },
            ],
            failure: vec![],
        })
    };
    assert_eq!(
        a.cmd(txn(2)).await.result,
        CommandResult::Rejected(RejectReason::LeaseNotFound(2))
    );
    assert_eq!(get_lease(&a.sm, "plain"), None, "nothing of it applied");
    a.cmd(txn(1)).await;
    assert_eq!(get_lease(&a.sm, "leased"), Some(1));
    assert_eq!(get_lease(&a.sm, "plain"), Some(0));
    // A delete detaches.
    a.cmd(Command::Delete {
        key: b"leased".to_vec(),
        prev_kv: false,
    })
    .await;
    assert!(a.sm.reader().lease_keys(1).is_empty());
}

#[tokio::test]
async fn leases_and_checkpoints_survive_a_reopen_and_a_snapshot_install() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.cmd(Command::LeaseGrant { id: 3, ttl: 60 }).await;
    a.cmd(Command::LeaseGrant { id: 4, ttl: 20 }).await;
    a.cmd(put("x", 3)).await;
    a.cmd(put("y", 4)).await;
    // etcd grants negative ids too: they must reload like any other.
    a.cmd(Command::LeaseGrant { id: -5, ttl: 30 }).await;
    a.cmd(put("z", -5)).await;
    a.cmd(Command::LeaseCheckpoint(vec![
        LeaseRemaining {
            id: 3,
            remaining: 42,
        },
        // Above the TTL: capped, so a checkpoint never extends a lease.
        LeaseRemaining {
            id: 4,
            remaining: 99,
        },
        // Not granted: skipped.
        LeaseRemaining {
            id: 9,
            remaining: 5,
        },
    ]))
    .await;
    let mut expect = vec![
        LeaseInfo {
            id: -5,
            ttl: 30,
            // Never checkpointed.
            remaining: 0,
        },
        LeaseInfo {
            id: 3,
            ttl: 60,
            remaining: 42,
        },
        LeaseInfo {
            id: 4,
            ttl: 20,
            remaining: 20,
        },
    ];
    let sorted = |mut v: Vec<LeaseInfo>| {
        v.sort_by_key(|l| l.id);
        v
    };
    expect = sorted(expect);
    assert_eq!(sorted(a.sm.reader().leases()), expect);
    let next = a.next_index;
    drop(a);

    let mut sm = open(dir.path()).await;
    assert_eq!(sorted(sm.reader().leases()), expect, "after a reopen");
    assert_eq!(sm.reader().lease_keys(3), vec![b"x".to_vec()]);
    assert_eq!(sm.reader().lease_keys(-5), vec![b"z".to_vec()]);
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let other = tempfile::tempdir().unwrap();
    let mut b = open(other.path()).await;
    let mut receive = b.begin_receiving_snapshot().await.unwrap();
    *receive = *snap.snapshot;
    b.install_snapshot(&snap.meta, receive).await.unwrap();
    assert_eq!(
        sorted(b.reader().leases()),
        expect,
        "after a snapshot install"
    );
    assert_eq!(b.reader().lease_keys(4), vec![b"y".to_vec()]);
    assert_eq!(b.reader().lease_keys(-5), vec![b"z".to_vec()]);
    let mut b = Applier {
        sm: b,
        next_index: next,
    };
    let revoked = b.cmd(Command::LeaseRevoke { id: 4 }).await;
    assert_eq!(revoked.result, CommandResult::LeaseRevoked { deleted: 1 });
    assert_eq!(get_lease(&b.sm, "y"), None);
}

/// A checkpoint proposed by the leader of one term and committed in an
/// entry of another (it waited in a proposal queue while its member lost
/// leadership and won it again) predates keepalives committed meanwhile: it
/// changes nothing. In an entry of its own term it records the remaining
/// TTLs. (The helper's entries are of term 1.)
#[tokio::test]
async fn a_checkpoint_applies_only_from_an_entry_of_its_own_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.cmd(Command::LeaseGrant { id: 5, ttl: 60 }).await;
    let remaining = |a: &Applier| {
        a.sm.reader()
            .leases()
            .iter()
            .find(|l| l.id == 5)
            .map(|l| l.remaining)
    };
    let checkpoint = |term, remaining| Command::LeaseCheckpointOf {
        term,
        list: vec![LeaseRemaining { id: 5, remaining }],
    };
    let done = a.cmd(checkpoint(2, 7)).await;
    assert_eq!(done.result, CommandResult::Empty);
    assert_eq!(remaining(&a), Some(0), "a checkpoint of term 2 in term 1");
    a.cmd(checkpoint(1, 7)).await;
    assert_eq!(remaining(&a), Some(7));
    // A keepalive's clearing, of the same term, after it.
    a.cmd(checkpoint(1, 0)).await;
    assert_eq!(remaining(&a), Some(0));
}
