//! Txn compares, branches and revision rules.

mod common;

use common::*;
use nines_types::{
    Command, CommandResult, CompareOp, CompareTarget, KeyValue, RejectReason, TxnOpResponse,
};

fn succeeded(result: &CommandResult) -> bool {
    match result {
        CommandResult::Txn { succeeded, .. } => *succeeded,
        other => panic!("not a txn result: {other:?}"),
    }
}

/// Sets up k (rev 2, then rev 4: version 2, create 2, mod 4), other (rev 3);
/// an empty store is at revision 1.
async fn setup() -> (tempfile::TempDir, Applier) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.cmd(put("k", "b")).await;
    a.cmd(put("other", "x")).await;
    a.cmd(put("k", "m")).await;
    (dir, a)
}

#[tokio::test]
async fn every_compare_target_and_op() {
    let (_dir, mut a) = setup().await;
    use CompareOp::*;
    use CompareTarget::*;
    let cases = vec![
        (Value(b"m".to_vec()), Equal, true),
        (Value(b"a".to_vec()), Equal, false),
        (Value(b"a".to_vec()), NotEqual, true),
        (Value(b"m".to_vec()), NotEqual, false),
        (Value(b"a".to_vec()), Greater, true),
        (Value(b"z".to_vec()), Greater, false),
        (Value(b"z".to_vec()), Less, true),
        (Value(b"a".to_vec()), Less, false),
        (Version(2), Equal, true),
        (Version(1), Equal, false),
        (Version(1), Greater, true),
        (Version(3), Less, true),
        (Version(2), NotEqual, false),
        (CreateRevision(2), Equal, true),
        (CreateRevision(4), Equal, false),
        (CreateRevision(0), Greater, true),
        (CreateRevision(3), Less, true),
        (ModRevision(4), Equal, true),
        (ModRevision(2), Equal, false),
        (ModRevision(3), Greater, true),
        (ModRevision(4), Less, false),
        (ModRevision(5), NotEqual, true),
    ];
    for (target, op, expect) in cases {
        let before = a.sm.reader().revision();
        let r = a
            .cmd(txn(
                vec![cmp("k", op, target.clone())],
                vec![tget("k")],
                vec![],
            ))
            .await;
        assert_eq!(succeeded(&r.result), expect, "{op:?} {target:?}");
        assert_eq!(r.revision, before, "read-only txn must not bump");
    }
}

#[tokio::test]
async fn missing_key_semantics() {
    let (_dir, mut a) = setup().await;
    use CompareOp::*;
    use CompareTarget::*;
    let cases = vec![
        (Value(b"".to_vec()), Equal, false),
        (Value(b"x".to_vec()), NotEqual, false),
        (Value(b"x".to_vec()), Less, false),
        (Value(b"".to_vec()), Greater, false),
        (Version(0), Equal, true),
        (CreateRevision(0), Equal, true),
        (ModRevision(0), Equal, true),
        (ModRevision(1), Less, true),
        (Version(0), Greater, false),
    ];
    for (target, op, expect) in cases {
        let r = a
            .cmd(txn(
                vec![cmp("missing", op, target.clone())],
                vec![],
                vec![],
            ))
            .await;
        assert_eq!(succeeded(&r.result), expect, "{op:?} {target:?}");
    }
}

#[tokio::test]
async fn branches_ops_and_revision() {
    let (_dir, mut a) = setup().await;
    // Create-if-absent: success branch puts two keys and reads one back.
    let r = a
        .cmd(txn(
            vec![cmp("new", CompareOp::Equal, CompareTarget::Version(0))],
            vec![
                tput("new", "1"),
                tput("new2", "2"),
                tget("new"),
                tdel("other"),
            ],
            vec![tget("new")],
        ))
        .await;
    assert_eq!(r.revision, 5, "one revision for the whole txn");
    let CommandResult::Txn {
        succeeded: true,
        responses,
    } = r.result
    else {
        panic!("{:?}", r.result)
    };
    assert_eq!(responses.len(), 4);
    let TxnOpResponse::Get(got) = &responses[2] else {
        panic!()
    };
    assert_eq!(
        got.kvs,
        vec![KeyValue {
            key: b"new".to_vec(),
            value: b"1".to_vec(),
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            lease: 0
        }],
        "get inside txn sees the earlier put"
    );
    assert!(matches!(
        responses[3],
        TxnOpResponse::Delete { deleted: 1, .. }
    ));
    assert_eq!(
        a.sm.reader()
            .get(b"new2")
            .unwrap()
            .data
            .unwrap()
            .mod_revision,
        5
    );
    assert_eq!(a.sm.reader().get(b"other").unwrap().data, None);

    // Same txn again: compare fails, failure branch is a read: no bump.
    let r = a
        .cmd(txn(
            vec![cmp("new", CompareOp::Equal, CompareTarget::Version(0))],
            vec![tput("new", "again")],
            vec![tget("new")],
        ))
        .await;
    assert_eq!(r.revision, 5);
    let CommandResult::Txn {
        succeeded: false,
        responses,
    } = r.result
    else {
        panic!()
    };
    let TxnOpResponse::Get(got) = &responses[0] else {
        panic!()
    };
    assert_eq!(got.kvs[0].value, b"1");
    assert_eq!(a.sm.reader().get(b"new").unwrap().data.unwrap().version, 1);

    // Failure branch that writes bumps once; delete of nothing does not.
    let r = a
        .cmd(txn(
            vec![
                cmp("k", CompareOp::Equal, CompareTarget::Value(b"m".to_vec())),
                cmp("k", CompareOp::Equal, CompareTarget::Version(99)),
            ],
            vec![],
            vec![tput("k", "f"), tdel("nothing-here")],
        ))
        .await;
    assert_eq!(r.revision, 6);
    assert!(!succeeded(&r.result));
    let kv = a.sm.reader().get(b"k").unwrap().data.unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.version,
            kv.mod_revision,
            kv.create_revision
        ),
        (&b"f"[..], 3, 6, 2)
    );

    let r = a.cmd(txn(vec![], vec![tdel("nothing-here")], vec![])).await;
    assert_eq!(r.revision, 6, "a txn that deletes nothing does not bump");

    // A branch may not delete a key it puts (etcd: "duplicate key given in
    // txn request"): refused whole.
    let r = a
        .cmd(txn(
            vec![],
            vec![tdel("k"), tget("k"), tput("k", "z")],
            vec![],
        ))
        .await;
    assert_eq!(r.revision, 6);
    assert!(
        matches!(
            &r.result,
            CommandResult::Rejected(RejectReason::InvalidInput(_))
        ),
        "{:?}",
        r.result
    );

    // Delete then get inside a txn sees the deletion.
    let r = a
        .cmd(txn(
            vec![],
            vec![tdel("k"), tget("k"), tput("k2", "z")],
            vec![],
        ))
        .await;
    assert_eq!(r.revision, 7);
    let CommandResult::Txn { responses, .. } = r.result else {
        panic!()
    };
    let TxnOpResponse::Get(got) = &responses[1] else {
        panic!()
    };
    assert_eq!(got.count, 0);
    assert!(a.sm.reader().get(b"k").unwrap().data.is_none());
    let kv = a.sm.reader().get(b"k2").unwrap().data.unwrap();
    assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (1, 7, 7));
    assert_eq!(a.sm.reader().revision(), 7);
}

#[tokio::test]
async fn txn_put_returns_prev_kv() {
    let (_dir, mut a) = setup().await;
    let r = a
        .cmd(txn(
            vec![],
            vec![nines_types::TxnOp::Put {
                key: b"k".to_vec(),
                value: b"n".to_vec(),
                prev_kv: true,
            }],
            vec![],
        ))
        .await;
    let CommandResult::Txn { responses, .. } = r.result else {
        panic!()
    };
    let TxnOpResponse::Put {
        prev_kv: Some(prev),
    } = &responses[0]
    else {
        panic!("{:?}", responses[0])
    };
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"m"[..], 4));
}

/// etcd's concurrency Mutex finds the lock holder with a txn read of the
/// first key of a prefix by create revision; in the same txn as its own put.
#[tokio::test]
async fn a_txn_range_sorts_and_filters_like_a_plain_one() {
    use nines_types::{KeyRange, RangeOptions, RangeRequest, SortOrder, SortTarget, TxnOp};
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    // Created in the order c, a, b: key order and create order differ.
    for key in ["lock/c", "lock/a", "lock/b"] {
        a.cmd(put(key, "x")).await;
    }
    let first_created = RangeOptions {
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..Default::default()
    };
    let mut read = RangeRequest::range(KeyRange::prefix(b"lock/"));
    read.limit = 1;
    let last_created = RangeOptions {
        sort_order: SortOrder::Descend,
        ..first_created
    };
    let r = a
        .cmd(txn(
            vec![],
            vec![
                tput("lock/d", "x"),
                TxnOp::GetWith(read.clone(), first_created),
                TxnOp::GetWith(read.clone(), last_created),
                TxnOp::GetWith(
                    RangeRequest::range(KeyRange::prefix(b"lock/")),
                    RangeOptions {
                        max_create_revision: 3,
                        ..Default::default()
                    },
                ),
            ],
            vec![],
        ))
        .await;
    let CommandResult::Txn { responses, .. } = r.result else {
        panic!("{r:?}")
    };
    let keys = |i: usize| match &responses[i] {
        TxnOpResponse::Get(g) => (
            g.kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect::<Vec<_>>(),
            g.count,
            g.more,
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(keys(1), (vec!["lock/c".to_string()], 4, true));
    assert_eq!(
        keys(2),
        (vec!["lock/d".to_string()], 4, true),
        "sees the txn's own put"
    );
    assert_eq!(keys(3).0, vec!["lock/a".to_string(), "lock/c".to_string()]);
}

/// A txn of reads only, served from the published state without the log
/// (`StateReader::txn_read`), must answer exactly what applying it does:
/// every compare target and op, on a live key, a deleted one and one never
/// written, with plain, limited, counted and sorted ranges in both branches.
#[tokio::test]
async fn a_read_only_txn_answers_as_applying_it_would() {
    use nines_types::{KeyRange, RangeOptions, RangeRequest, SortOrder, SortTarget, Txn, TxnOp};
    use CompareOp::*;
    use CompareTarget::*;
    let (_dir, mut a) = setup().await;
    a.cmd(put("gone", "g")).await;
    a.cmd(delete("gone", false)).await;
    let everything = RangeRequest::range(KeyRange::Between {
        start: vec![0],
        end: vec![0xff],
    });
    let limited = RangeRequest {
        limit: 1,
        ..everything.clone()
    };
    let counted = RangeRequest {
        count_only: true,
        ..everything.clone()
    };
    let by_value = RangeOptions {
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Value,
        ..Default::default()
    };
    let branches = [
        vec![tget("k"), TxnOp::Get(limited), TxnOp::Get(counted)],
        vec![TxnOp::GetWith(everything.clone(), by_value), tget("gone")],
    ];
    let targets = [
        Value(b"m".to_vec()),
        Value(b"".to_vec()),
        Version(2),
        Version(0),
        CreateRevision(2),
        ModRevision(4),
        ModRevision(0),
    ];
    let mut cases = 0;
    for key in ["k", "gone", "never"] {
        for target in &targets {
            for op in [Equal, NotEqual, Greater, Less] {
                let t = Txn {
                    compares: vec![cmp(key, op, target.clone())],
                    success: branches[0].clone(),
                    failure: branches[1].clone(),
                };
                let read =
                    a.sm.reader()
                        .txn_read(&t, usize::MAX)
                        .expect("read-only txn");
                let applied = a.cmd(Command::Txn(t)).await;
                let CommandResult::Txn {
                    succeeded,
                    responses,
                } = applied.result
                else {
                    panic!("not a txn result: {:?}", applied.result);
                };
                assert_eq!(read.data, (succeeded, responses), "{key} {op:?} {target:?}");
                assert_eq!(read.revision, applied.revision, "{key} {op:?} {target:?}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 3 * 7 * 4);
}

#[tokio::test]
async fn a_txn_that_writes_is_not_served_as_a_read() {
    let (_dir, a) = setup().await;
    let writes = nines_types::Txn {
        compares: vec![],
        success: vec![tget("k")],
        failure: vec![tput("k", "v")],
    };
    let refused = a.sm.reader().txn_read(&writes, usize::MAX);
    assert!(
        matches!(refused, Err(nines_state::StateError::NotReadOnly)),
        "{refused:?}"
    );
}

/// The ranges of one read-only txn stop at the byte bound the server
/// passes (what a response may hold), not after building all of them.
#[tokio::test]
async fn a_read_only_txn_stops_at_its_byte_bound() {
    let (_dir, a) = setup().await;
    // k = "m" and other = "x": 1 + 1 and 5 + 1 bytes of keys and values.
    let t = nines_types::Txn {
        compares: vec![],
        success: vec![tget("k"), tget("other")],
        failure: vec![],
    };
    let reader = a.sm.reader();
    assert!(reader.txn_read(&t, 8).is_ok(), "exactly at the bound");
    let refused = reader.txn_read(&t, 7);
    assert!(
        matches!(
            refused,
            Err(nines_state::StateError::ResultTooLarge { max: 7 })
        ),
        "{refused:?}"
    );
}
