//! Put / Delete / DeleteRange / Range semantics and input validation.

mod common;

use common::*;
use nines_types::{Command, CommandResult, Keep, KeyRange, RangeRequest, RejectReason, TxnOp};
use openraft::storage::RaftStateMachine;

#[tokio::test]
async fn put_tracks_revisions_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    // An empty store is at revision 1 (etcd's): the first write is 2.
    let r = a.cmd(put("a", "1")).await;
    assert_eq!(r.revision, 2);
    assert_eq!(r.result, CommandResult::Put { prev_kv: None });
    a.cmd(put("b", "x")).await;
    let r = a.cmd(put_prev("a", "2")).await;
    assert_eq!(r.revision, 4);
    let CommandResult::Put {
        prev_kv: Some(prev),
    } = r.result
    else {
        panic!("expected prev_kv, got {:?}", r.result);
    };
    assert_eq!(
        (prev.value.as_slice(), prev.version, prev.mod_revision),
        (&b"1"[..], 1, 2)
    );

    let kv = a.sm.reader().get(b"a").unwrap().data.unwrap();
    assert_eq!(kv.value, b"2");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));
    assert_eq!(a.sm.reader().revision(), 4);
    assert_eq!(a.sm.reader().last_applied(), Some(log_id(3)));

    // Without prev_kv requested, none is returned even though the key exists.
    let r = a.cmd(put("a", "3")).await;
    assert_eq!(r.result, CommandResult::Put { prev_kv: None });
    assert_eq!(r.revision, 5);
}

#[tokio::test]
async fn delete_and_delete_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    for k in ["a", "b", "c", "d"] {
        a.cmd(put(k, k)).await;
    }
    // Deleting nothing does not bump the revision.
    let r = a.cmd(delete("zz", true)).await;
    assert_eq!(r.revision, 5);
    assert_eq!(
        r.result,
        CommandResult::Delete {
            deleted: 0,
            prev_kvs: vec![]
        }
    );
    let r = a.cmd(delete("a", true)).await;
    assert_eq!(r.revision, 6);
    let CommandResult::Delete { deleted, prev_kvs } = r.result else {
        panic!("{:?}", r.result)
    };
    assert_eq!((deleted, prev_kvs.len()), (1, 1));
    assert_eq!(prev_kvs[0].value, b"a");
    assert_eq!(a.sm.reader().get(b"a").unwrap().data, None);

    let r = a
        .cmd(Command::DeleteRange {
            range: between("b", "d"),
            prev_kv: false,
        })
        .await;
    assert_eq!(r.revision, 7, "one revision for the whole range");
    assert_eq!(
        r.result,
        CommandResult::Delete {
            deleted: 2,
            prev_kvs: vec![]
        }
    );
    let kvs = all_kvs(&a.sm);
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].key, b"d");

    // Recreated key starts a new life: version 1, new create_revision.
    a.cmd(put("b", "again")).await;
    let kv = a.sm.reader().get(b"b").unwrap().data.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (8, 8, 1));

    let r = a
        .cmd(Command::DeleteRange {
            range: KeyRange::From(b"a".to_vec()),
            prev_kv: true,
        })
        .await;
    let CommandResult::Delete { deleted, prev_kvs } = r.result else {
        panic!()
    };
    assert_eq!(deleted, 2);
    assert_eq!(
        prev_kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        vec![b"b".to_vec(), b"d".to_vec()]
    );
    assert!(all_kvs(&a.sm).is_empty());
}

#[tokio::test]
async fn range_limit_count_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    for k in ["p/1", "p/2", "p/3", "p/4", "q"] {
        a.cmd(put(k, "value")).await;
    }
    let reader = a.sm.reader();
    let mut req = RangeRequest::range(KeyRange::prefix(b"p/"));
    let all = reader.range(&req).unwrap().data;
    assert_eq!((all.kvs.len(), all.count, all.more), (4, 4, false));
    assert_eq!(all.kvs[0].key, b"p/1");
    assert_eq!(all.kvs[3].key, b"p/4");

    req.limit = 2;
    let some = reader.range(&req).unwrap().data;
    assert_eq!((some.kvs.len(), some.count, some.more), (2, 4, true));
    assert_eq!(some.kvs[1].key, b"p/2");

    req.limit = 4;
    let exact = reader.range(&req).unwrap().data;
    assert_eq!((exact.kvs.len(), exact.more), (4, false));

    req.limit = 0;
    req.keys_only = true;
    let keys = reader.range(&req).unwrap().data;
    assert!(keys
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));

    req.keys_only = false;
    req.count_only = true;
    let count = reader.range(&req).unwrap().data;
    assert_eq!((count.kvs.len(), count.count, count.more), (0, 4, false));

    let from = reader
        .range(&RangeRequest::range(KeyRange::From(b"p/3".to_vec())))
        .unwrap()
        .data;
    assert_eq!(from.count, 3);
    let single = reader.range(&get_req("q")).unwrap().data;
    assert_eq!(
        (single.count, single.kvs[0].value.as_slice()),
        (1, &b"value"[..])
    );
    assert_eq!(reader.range(&get_req("nope")).unwrap().data.count, 0);

    // Invalid read input is an error for the reader.
    assert!(reader.range(&get_req("")).is_err());
}

#[tokio::test]
async fn invalid_input_is_rejected_without_state_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.cmd(put("a", "1")).await;
    let before = a.sm.reader().dump_raw().unwrap();
    let bad = [
        put("", "x"),
        // Past what every member applies, whatever its flags.
        Command::Put {
            key: b"k".to_vec(),
            value: vec![0; nines_types::Limits::APPLY.max_value_bytes + 1],
            lease: 0,
            prev_kv: false,
        },
        Command::LeaseGrant { id: 1, ttl: 0 },
        Command::LeaseCheckpoint(vec![
            nines_types::LeaseRemaining {
                id: 1,
                remaining: 1
            };
            nines_types::MAX_CHECKPOINT_LEASES + 1
        ]),
        txn(vec![], vec![tput("a", "1"), tput("a", "2")], vec![]),
    ];
    for command in bad {
        let r = a.cmd(command).await;
        assert_eq!(r.revision, 2);
        assert!(
            matches!(
                r.result,
                CommandResult::Rejected(RejectReason::InvalidInput(_))
            ),
            "{:?}",
            r.result
        );
    }
    let after = a.sm.reader().dump_raw().unwrap();
    // Only the applied index moved.
    let strip = |v: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<_> {
        v.into_iter().filter(|(k, _)| k != b"mapplied").collect()
    };
    assert_eq!(strip(before), strip(after));
    assert_eq!(a.sm.reader().last_applied(), Some(log_id(6)));
    // A lease never granted, negative as etcd allows: not found, no change.
    let r = a
        .cmd(Command::Put {
            key: b"k".to_vec(),
            value: vec![],
            lease: -5,
            prev_kv: false,
        })
        .await;
    assert_eq!(
        (r.revision, r.result),
        (2, CommandResult::Rejected(RejectReason::LeaseNotFound(-5)))
    );
}

#[tokio::test]
async fn blank_and_membership_entries_get_responses() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path()).await;
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, None);
    assert_eq!(membership, Default::default());

    let m = openraft::Membership::new(vec![[1u64].into_iter().collect()], None);
    let entries = vec![
        blank(1),
        entry(2, nines_types::Request::new(put("a", "1"))),
        nines_types::Entry {
            log_id: log_id(3),
            payload: openraft::EntryPayload::Membership(m.clone()),
        },
    ];
    let out = sm.apply(entries).await.unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        (out[0].revision, &out[0].result),
        (1, &CommandResult::Empty)
    );
    assert_eq!(out[1].revision, 2);
    assert_eq!(
        (out[2].revision, &out[2].result),
        (2, &CommandResult::Empty)
    );
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(3)));
    assert_eq!(
        membership,
        openraft::StoredMembership::new(Some(log_id(3)), m)
    );
}

#[tokio::test]
async fn reads_within_a_batch_see_earlier_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path()).await;
    let entries = vec![
        entry(1, nines_types::Request::new(put("a", "1"))),
        entry(2, nines_types::Request::new(put_prev("a", "2"))),
        entry(3, nines_types::Request::new(delete("a", true))),
        entry(4, nines_types::Request::new(delete("a", true))),
    ];
    let out = sm.apply(entries).await.unwrap();
    let CommandResult::Put {
        prev_kv: Some(prev),
    } = &out[1].result
    else {
        panic!("{:?}", out[1])
    };
    assert_eq!(prev.value, b"1");
    let CommandResult::Delete {
        deleted: 1,
        prev_kvs,
    } = &out[2].result
    else {
        panic!("{:?}", out[2])
    };
    assert_eq!(
        (prev_kvs[0].value.as_slice(), prev_kvs[0].version),
        (&b"2"[..], 2)
    );
    assert_eq!(
        out[3].result,
        CommandResult::Delete {
            deleted: 0,
            prev_kvs: vec![]
        }
    );
    assert_eq!(
        out.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![2, 3, 4, 4]
    );
}

/// etcd reads a range end at or below its start as an empty interval: a
/// range of it finds nothing and a delete of it deletes nothing.
#[tokio::test]
async fn an_empty_interval_matches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    for k in ["a", "b", "c"] {
        a.cmd(put(k, k)).await;
    }
    let revision = a.sm.reader().revision();
    for (start, end) in [("c", "a"), ("b", "b"), ("b", "a")] {
        let range = KeyRange::Between {
            start: start.into(),
            end: end.into(),
        };
        let read = RangeRequest::range(range.clone());
        let got = a.sm.reader().range(&read).unwrap().data;
        assert_eq!((got.count, got.kvs.len()), (0, 0), "{start}..{end}");
        let r = a
            .cmd(Command::DeleteRange {
                range,
                prev_kv: true,
            })
            .await;
        assert_eq!(r.revision, revision, "{start}..{end}: nothing changed");
        assert_eq!(
            r.result,
            CommandResult::Delete {
                deleted: 0,
                prev_kvs: vec![]
            }
        );
    }
    let all = RangeRequest::range(KeyRange::From(b"\0".to_vec()));
    assert_eq!(a.sm.reader().range(&all).unwrap().data.count, 3);
}

fn keeping(key: &str, value: &str, keep_value: bool) -> Command {
    Command::PutKeeping {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
        prev_kv: true,
        keep: Keep {
            value: keep_value,
            lease: !keep_value,
        },
    }
}

fn tkeeping(key: &str) -> TxnOp {
    TxnOp::PutKeeping {
        key: key.as_bytes().to_vec(),
        value: Vec::new(),
        lease: 0,
        prev_kv: false,
        keep: Keep {
            value: true,
            lease: false,
        },
    }
}

/// etcd's ignore_value / ignore_lease: the kept part comes from the current
/// version, a missing key refuses the write ("key not found") and a txn is
/// refused whole, even when an earlier op of its own deleted the key.
#[tokio::test]
async fn put_keeping_the_value_needs_the_key_and_refuses_whole_txns() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(dir.path()).await);
    a.cmd(put("a", "1")).await;
    let missing = a.cmd(keeping("nope", "", true)).await;
    assert_eq!(missing.revision, 2);
    assert_eq!(
        missing.result,
        CommandResult::Rejected(RejectReason::KeyNotFound(b"nope".to_vec()))
    );

    // Keeping the value bumps version and mod_revision, as etcd does.
    let r = a.cmd(keeping("a", "", true)).await;
    assert_eq!(r.revision, 3);
    let kv = a.sm.reader().get(b"a").unwrap().data.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.mod_revision),
        (&b"1"[..], 2, 3)
    );
    // Keeping only the lease writes the new value.
    a.cmd(keeping("a", "2", false)).await;
    let kv = a.sm.reader().get(b"a").unwrap().data.unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"2"[..], 3));

    let before = all_kvs(&a.sm);
    let r = a
        .cmd(txn(vec![], vec![tput("b", "x"), tkeeping("nope")], vec![]))
        .await;
    assert_eq!(r.revision, 4, "a refused txn leaves the revision");
    assert_eq!(
        r.result,
        CommandResult::Rejected(RejectReason::KeyNotFound(b"nope".to_vec()))
    );
    // A branch that deletes the key it puts is refused whole (etcd:
    // "duplicate key given in txn request").
    for ops in [
        vec![tdel("a"), tkeeping("a")],
        vec![
            TxnOp::Delete {
                range: KeyRange::From(b"a".to_vec()),
                prev_kv: false,
            },
            tkeeping("a"),
        ],
    ] {
        let r = a.cmd(txn(vec![], ops, vec![])).await;
        assert_eq!(r.revision, 4, "a refused txn leaves the revision");
        assert!(
            matches!(&r.result, CommandResult::Rejected(RejectReason::InvalidInput(m)) if m.contains("more than once")),
            "{:?}",
            r.result
        );
    }
    assert_eq!(
        all_kvs(&a.sm),
        before,
        "nothing of a refused txn is applied"
    );

    // Put again after the delete: the kept put sees the txn's own put.
    let r = a
        .cmd(txn(
            vec![],
            vec![tdel("a"), tput("c", "3"), tkeeping("c")],
            vec![],
        ))
        .await;
    assert!(
        matches!(
            r.result,
            CommandResult::Rejected(RejectReason::InvalidInput(_))
        ),
        "two puts of one key in a txn are refused first: {:?}",
        r.result
    );
    let r = a
        .cmd(txn(vec![], vec![tput("d", "4"), tkeeping("a")], vec![]))
        .await;
    assert!(
        matches!(
            r.result,
            CommandResult::Txn {
                succeeded: true,
                ..
            }
        ),
        "{:?}",
        r.result
    );
    assert_eq!(r.revision, 5);
    let kv = a.sm.reader().get(b"a").unwrap().data.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.mod_revision),
        (&b"2"[..], 4, 5)
    );
}
