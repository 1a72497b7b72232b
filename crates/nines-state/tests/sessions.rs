//! Exactly-once sessions: dedup, stale sequences, snapshots, expiry.

mod common;

use common::*;
use nines_state::{StateMachine, StateOptions};
use nines_types::{CommandResult, RejectReason, Request};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

#[tokio::test]
async fn retry_applies_once_and_stale_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.cmd(put("k", "0")).await;

    let first = a
        .apply(Request::with_session(put_prev("k", "1"), 7, 1))
        .await;
    assert_eq!(first.revision, 3);
    // The retry returns the first response.
    let again = a
        .apply(Request::with_session(put_prev("k", "1"), 7, 1))
        .await;
    assert_eq!(again, first);
    // The same seq with a different request is refused, not acknowledged.
    let other = a
        .apply(Request::with_session(put("k", "other"), 7, 1))
        .await;
    assert_eq!(
        other.result,
        CommandResult::Rejected(RejectReason::SessionSeqReused {
            client_id: 7,
            seq: 1
        })
    );
    let kv = a.sm.reader().get(b"k").unwrap().data.unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"1"[..], 2));
    assert_eq!(a.sm.reader().revision(), 3);
    assert_eq!(a.sm.reader().last_applied(), Some(log_id(4)));

    let second = a.apply(Request::with_session(put("k", "2"), 7, 2)).await;
    assert_eq!(second.revision, 4);
    let stale = a.apply(Request::with_session(put("k", "old"), 7, 1)).await;
    assert_eq!(
        stale.result,
        CommandResult::Rejected(RejectReason::StaleSequence {
            client_id: 7,
            seq: 1,
            last_seq: 2
        })
    );
    assert_eq!(stale.revision, 4);
    assert_eq!(a.sm.reader().get(b"k").unwrap().data.unwrap().value, b"2");

    // Sessions are independent per client.
    let other_client = a.apply(Request::with_session(put("k", "c8"), 8, 1)).await;
    assert_eq!(other_client.revision, 5);

    // Survives snapshot + install on a fresh state machine.
    let snap =
        a.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut b = Applier::new(open(dir2.path()).await);
    let mut receive = b.sm.begin_receiving_snapshot().await.unwrap();
    *receive = *snap.snapshot;
    b.sm.install_snapshot(&snap.meta, receive).await.unwrap();
    b.next_index = a.next_index;
    assert_eq!(sessions(&b.sm), sessions(&a.sm));
    assert_eq!(sessions(&b.sm).len(), 2);
    let retry = b.apply(Request::with_session(put("k", "2"), 7, 2)).await;
    assert_eq!(retry, second);
    let stale = b.apply(Request::with_session(put("k", "x"), 7, 1)).await;
    assert!(matches!(
        stale.result,
        CommandResult::Rejected(RejectReason::StaleSequence { last_seq: 2, .. })
    ));
    assert_eq!(b.sm.reader().get(b"k").unwrap().data.unwrap().value, b"c8");
    assert_eq!(b.sm.reader().revision(), 5);
    let next = b.apply(Request::with_session(put("k", "3"), 7, 3)).await;
    assert_eq!(next.revision, 6);
}

#[tokio::test]
async fn invalid_command_with_session_keeps_no_response() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let bad = a.apply(Request::with_session(put("", "x"), 3, 1)).await;
    assert!(matches!(
        bad.result,
        CommandResult::Rejected(RejectReason::InvalidInput(_))
    ));
    // Known to the table (so seq 2 is accepted); a retry of seq 1 gets the
    // refusal it got.
    assert_eq!(sessions(&a.sm).len(), 1);
    let retry = a.apply(Request::with_session(put("", "x"), 3, 1)).await;
    assert_eq!(retry.result, bad.result);
    let good = a.apply(Request::with_session(put("a", "x"), 3, 2)).await;
    assert_eq!(good.revision, 2);
}

/// A write that changed nothing was kept as "run it again". A late copy
/// of it (queued on a follower while the client's retry went to the
/// leader and was answered) then ran after that answer and changed what
/// the answer told: the delete that deleted nothing deleted the key
/// another client had created meanwhile, and the txn whose compare had
/// failed took its success branch.
#[tokio::test]
async fn a_late_copy_of_a_write_that_changed_nothing_answers_as_the_first() {
    use nines_types::{CompareOp, CompareTarget};
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let del = || Request::with_session(delete("k", false), 5, 1);
    let first = a.apply(del()).await;
    assert!(matches!(
        first.result,
        CommandResult::Delete { deleted: 0, .. }
    ));
    let guarded = || {
        let absent = cmp("g", CompareOp::Equal, CompareTarget::Version(0));
        Request::with_session(txn(vec![absent], vec![tput("g", "mine")], vec![]), 6, 1)
    };
    a.cmd(put("g", "theirs")).await;
    let refused = a.apply(guarded()).await;
    assert!(matches!(
        refused.result,
        CommandResult::Txn {
            succeeded: false,
            ..
        }
    ));

    // Another client creates k, and removes g.
    a.cmd(put("k", "v")).await;
    a.cmd(delete("g", false)).await;
    let revision = a.sm.reader().revision();
    // The late copies arrive.
    assert_eq!(a.apply(del()).await, first);
    assert_eq!(a.apply(guarded()).await, refused);
    assert_eq!(a.sm.reader().get(b"k").unwrap().data.unwrap().value, b"v");
    assert!(a.sm.reader().get(b"g").unwrap().data.is_none());
    assert_eq!(a.sm.reader().revision(), revision);

    // A txn of reads only is still run again, and answers what is there now.
    let read = || Request::with_session(txn(vec![], vec![tget("k")], vec![]), 7, 1);
    let before = a.apply(read()).await;
    a.cmd(put("k", "w")).await;
    let again = a.apply(read()).await;
    assert_ne!(again, before);
}

#[tokio::test]
async fn idle_sessions_expire_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StateOptions {
        session_ttl_entries: 100,
        ..Default::default()
    };
    let mut sm = StateMachine::open(dir.path(), opts).await.unwrap();
    // Client 1 is idle since index 1; client 2 wrote at index 4000 (within ttl of 4096).
    sm.apply([entry(1, Request::with_session(put("a", "1"), 1, 1))])
        .await
        .unwrap();
    sm.apply((2..4000).map(blank)).await.unwrap();
    sm.apply([entry(4000, Request::with_session(put("b", "1"), 2, 1))])
        .await
        .unwrap();
    sm.apply((4001..4096).map(blank)).await.unwrap();
    assert_eq!(
        sessions(&sm).len(),
        2,
        "nothing expires before the sweep index"
    );
    sm.apply([blank(4096)]).await.unwrap();
    let left = sessions(&sm);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0[1..], 2u64.to_be_bytes());

    // Client 1 is forgotten: a later seq is refused (it cannot be told from a
    // late retry) and nothing is written; client 2's retry is deduped.
    let out = sm
        .apply([
            entry(4097, Request::with_session(put("a", "2"), 1, 2)),
            entry(4098, Request::with_session(put("b", "2"), 2, 1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        out[0].result,
        CommandResult::Rejected(RejectReason::SessionUnknown {
            client_id: 1,
            seq: 2
        })
    );
    assert_eq!(sm.reader().get(b"a").unwrap().data.unwrap().version, 1);
    assert_eq!(out[1].revision, 3, "deduplicated: the stored response");
    assert_eq!(sm.reader().get(b"b").unwrap().data.unwrap().version, 1);
    // A new id starting at seq 1 is fine.
    let out = sm
        .apply([entry(4099, Request::with_session(put("a", "2"), 11, 1))])
        .await
        .unwrap();
    assert_eq!(out[0].revision, 4);
}

#[tokio::test]
async fn batch_applies_each_request_with_its_own_revision_and_session() {
    use nines_types::Command;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let batch = Command::Batch(vec![
        Request::with_session(put("a", "1"), 9, 1),
        Request::new(put("b", "1")),
        Request::with_session(put("a", "2"), 10, 1),
        // A nested batch is refused without touching anything else.
        Request::new(Command::Batch(vec![Request::new(put("c", "1"))])),
    ]);
    let resp = a.cmd(batch.clone()).await;
    let CommandResult::Batch(responses) = resp.result else {
        panic!("expected a batch result, got {resp:?}");
    };
    let revisions: Vec<i64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, vec![2, 3, 4, 4]);
    assert!(matches!(
        responses[3].result,
        CommandResult::Rejected(RejectReason::InvalidInput(_))
    ));
    assert!(a.sm.reader().get(b"c").unwrap().data.is_none());
    assert_eq!(a.sm.reader().get(b"a").unwrap().data.unwrap().version, 2);

    // Replaying the same batch (a retried proposal) dedups the sessioned
    // writes: they return their first responses and change nothing.
    let again = a.cmd(batch).await;
    let CommandResult::Batch(again) = again.result else {
        panic!("expected a batch result");
    };
    assert_eq!(again[0], responses[0]);
    assert_eq!(again[2], responses[2]);
    assert_eq!(a.sm.reader().get(b"a").unwrap().data.unwrap().version, 2);
    // The unsessioned put is applied again (revision 4).
    assert_eq!(again[1].revision, 5);
}

/// An auth change's proposer picks fresh bytes on every attempt (a salted
/// password hash, the token secret), so a retry's command differs from
/// its first attempt's: under the same session it is still the same
/// request, answered as before, while another user under the seq is not.
#[tokio::test]
async fn auth_changes_retried_with_fresh_salts_apply_once() {
    use nines_types::{AuthCommand, Command};
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    let add = |name: &str, hash: &str| {
        Command::Auth(AuthCommand::UserAdd {
            name: name.into(),
            password_hash: Some(hash.into()),
        })
    };
    let first = a
        .apply(Request::with_session(add("alice", "salt1"), 9, 1))
        .await;
    assert!(
        matches!(first.result, CommandResult::AuthChanged { .. }),
        "{first:?}"
    );
    let retry = a
        .apply(Request::with_session(add("alice", "salt2"), 9, 1))
        .await;
    assert_eq!(retry, first, "a retry is answered as its first attempt");
    let other = a
        .apply(Request::with_session(add("bob", "salt1"), 9, 1))
        .await;
    assert_eq!(
        other.result,
        CommandResult::Rejected(RejectReason::SessionSeqReused {
            client_id: 9,
            seq: 1
        })
    );
    let enable = |secret: u8| {
        Command::Auth(AuthCommand::Enable {
            secret: vec![secret; 32],
        })
    };
    // Enabling needs root; refused either way, but answered the same.
    let on = a.apply(Request::with_session(enable(1), 9, 2)).await;
    let again = a.apply(Request::with_session(enable(2), 9, 2)).await;
    assert_eq!(again, on);
    let users = a.sm.reader().with_auth(|auth| auth.users());
    assert_eq!(users, vec!["alice".to_string()]);
}
