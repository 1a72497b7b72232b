//! The session table stays small and refuses what it cannot answer safely.

mod common;

use common::*;
use nines_state::{StateMachine, StateOptions};
use nines_types::{CommandResult, KeyRange, RangeRequest, RejectReason, Request, TxnOp};
use openraft::storage::RaftStateMachine;

/// Bytes of every record in the tree that is not user data (revision records).
fn non_data_bytes(sm: &StateMachine) -> usize {
    sm.reader()
        .dump_raw()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.first() != Some(&b'r'))
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// ~2 MiB of data under `big/`.
async fn load_big(a: &mut Applier) {
    let value = "x".repeat(10 * 1024);
    for i in 0..200 {
        a.cmd(put(&format!("big/{i:03}"), &value)).await;
    }
}

fn get_all() -> TxnOp {
    TxnOp::Get(RangeRequest::range(KeyRange::prefix(b"big/")))
}

#[tokio::test]
async fn read_only_txns_do_not_grow_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    load_big(&mut a).await;
    let before = non_data_bytes(&a.sm);
    for seq in 1..=3 {
        let resp = a
            .apply(Request::with_session(
                txn(vec![], (0..20).map(|_| get_all()).collect(), vec![]),
                42,
                seq,
            ))
            .await;
        let CommandResult::Txn { responses, .. } = &resp.result else {
            panic!("expected a txn result, got {:?}", resp.result);
        };
        assert_eq!(responses.len(), 20);
    }
    let after = non_data_bytes(&a.sm);
    // Each Get returned ~2 MiB; the table may only hold a small record.
    assert!(
        after <= before + 512,
        "session bytes grew from {before} to {after}"
    );
    // A retry of the last one runs it again and answers in full.
    let retry = a
        .apply(Request::with_session(
            txn(vec![], (0..20).map(|_| get_all()).collect(), vec![]),
            42,
            3,
        ))
        .await;
    let CommandResult::Txn { responses, .. } = retry.result else {
        panic!("expected a txn result");
    };
    assert!(matches!(&responses[0], nines_types::TxnOpResponse::Get(r) if r.kvs.len() == 200));
}

#[tokio::test]
async fn large_write_response_is_not_kept_and_its_retry_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    load_big(&mut a).await;
    let before = non_data_bytes(&a.sm);
    let mixed = txn(vec![], vec![tput("k", "v"), get_all()], vec![]);
    let first = a.apply(Request::with_session(mixed.clone(), 5, 1)).await;
    assert!(matches!(first.result, CommandResult::Txn { .. }));
    assert!(non_data_bytes(&a.sm) <= before + 512);
    let retry = a.apply(Request::with_session(mixed, 5, 1)).await;
    assert_eq!(
        retry.result,
        CommandResult::Rejected(RejectReason::ResponseNotRetained {
            client_id: 5,
            seq: 1,
            revision: first.revision
        })
    );
    // Applied once: the retry wrote nothing.
    assert_eq!(a.sm.reader().get(b"k").unwrap().data.unwrap().version, 1);
    // A small mixed txn is kept whole: its retry gets the same reads.
    let small = txn(vec![], vec![tput("k", "w"), tget("k")], vec![]);
    let first = a.apply(Request::with_session(small.clone(), 5, 2)).await;
    let retry = a.apply(Request::with_session(small, 5, 2)).await;
    assert_eq!(retry, first);
    assert_eq!(a.sm.reader().get(b"k").unwrap().data.unwrap().version, 2);
}

#[tokio::test]
async fn reused_seq_with_another_request_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.apply(Request::with_session(put("j", "x"), 9, 1)).await;
    let first = a
        .apply(Request::with_session(put("k", "first"), 9, 4))
        .await;
    assert_eq!(first.revision, 3);
    // Another client sharing id 9, or one that restarted its seq.
    let clash = a
        .apply(Request::with_session(put("k", "second"), 9, 4))
        .await;
    assert_eq!(
        clash.result,
        CommandResult::Rejected(RejectReason::SessionSeqReused {
            client_id: 9,
            seq: 4
        })
    );
    let restarted = a
        .apply(Request::with_session(put("k", "third"), 9, 1))
        .await;
    assert!(matches!(
        restarted.result,
        CommandResult::Rejected(RejectReason::StaleSequence { last_seq: 4, .. })
    ));
    let kv = a.sm.reader().get(b"k").unwrap().data.unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"first"[..], 1));
    // The genuine retry is still answered.
    let retry = a
        .apply(Request::with_session(put("k", "first"), 9, 4))
        .await;
    assert_eq!(retry, first);
}

#[tokio::test]
async fn session_count_is_capped_by_evicting_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StateOptions {
        max_sessions: 3,
        ..Default::default()
    };
    let mut a = Applier::new(StateMachine::open(dir.path(), opts).await.unwrap());
    for client in 1..=3 {
        a.apply(Request::with_session(put("k", "v"), client, 1))
            .await;
    }
    // Client 1 is used again, so client 2 is now the least recently used.
    a.apply(Request::with_session(put("k", "v"), 1, 2)).await;
    a.apply(Request::with_session(put("k", "v"), 4, 1)).await;
    let left: Vec<u64> = sessions(&a.sm)
        .iter()
        .map(|(k, _)| u64::from_be_bytes(k[1..9].try_into().unwrap()))
        .collect();
    assert_eq!(left, vec![1, 3, 4]);
    let version = a.sm.reader().get(b"k").unwrap().data.unwrap().version;
    let evicted = a.apply(Request::with_session(put("k", "v"), 2, 2)).await;
    assert_eq!(
        evicted.result,
        CommandResult::Rejected(RejectReason::SessionUnknown {
            client_id: 2,
            seq: 2
        })
    );
    assert_eq!(
        a.sm.reader().get(b"k").unwrap().data.unwrap().version,
        version
    );
    // Many new clients never grow the table past the cap.
    for client in 100..200 {
        a.apply(Request::with_session(put("k", "v"), client, 1))
            .await;
    }
    assert_eq!(sessions(&a.sm).len(), 3);
}

#[tokio::test]
async fn expired_sessions_are_swept_with_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StateOptions {
        session_ttl_entries: 10,
        ..Default::default()
    };
    let mut sm = StateMachine::open(dir.path(), opts).await.unwrap();
    let mut entries: Vec<_> = (1..=100)
        .map(|i| entry(i, Request::with_session(put("k", "v"), i, 1)))
        .collect();
    entries.extend((101..=4096).map(blank));
    sm.apply(entries).await.unwrap();
    assert!(sessions(&sm).is_empty(), "every session expired");
    let extra: Vec<_> = sm
        .reader()
        .dump_raw()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.first() == Some(&b't'))
        .collect();
    assert!(extra.is_empty(), "index entries left: {}", extra.len());
}

/// A compaction changes no key, so no revision, but running it again does
/// not answer the same ("required revision has been compacted"): under a
/// session its answer is kept like a write's, so a retry gets it back.
#[tokio::test]
async fn a_retried_compaction_answers_as_the_first_try() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    for i in 0..3 {
        a.cmd(put(&format!("k{i}"), "v")).await;
    }
    let compact = || nines_types::Command::Compact {
        revision: 2,
        physical: false,
    };
    let first = a.apply(Request::with_session(compact(), 7, 1)).await;
    assert!(
        matches!(first.result, CommandResult::Compacted { revision: 2 }),
        "{first:?}"
    );
    let retry = a.apply(Request::with_session(compact(), 7, 1)).await;
    assert_eq!(retry.result, first.result, "the retry's answer");
}
