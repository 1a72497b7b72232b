//! History as changes (what watchers read): windows in revision order,
//! deletes as key-only events, byte bounds that never split a revision,
//! `before` for prev_kv, and compaction.

use nines_types::Command;

use super::tests::{kv, put, Store};
use super::*;

fn del(key: &str) -> Command {
    Command::Delete {
        key: key.into(),
        prev_kv: false,
    }
}

fn summary(changes: &Changes) -> Vec<(bool, String, i64)> {
    changes
        .changes
        .iter()
        .map(|c| {
            let kv = &c.kv;
            let text = format!(
                "{}={}",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            );
            (c.deleted, text, kv.mod_revision)
        })
        .collect()
}

#[test]
fn changes_replay_puts_and_deletes_in_revision_order() {
    let mut s = Store::new();
    s.apply(put("a", "1")); // 1
    s.apply(put("b", "2")); // 2
    s.apply(put("a", "3")); // 3
    s.apply(del("b")); // 4
    let all = s.mvcc.changes(1, 10, usize::MAX).unwrap();
    assert_eq!(all.through, 4, "capped at the published revision");
    assert_eq!(
        summary(&all),
        vec![
            (false, "a=1".into(), 1),
            (false, "b=2".into(), 2),
            (false, "a=3".into(), 3),
            (true, "b=".into(), 4),
        ]
    );
    assert_eq!(all.changes[2].kv, kv("a", "3", 1, 3, 2));
    let window = s.mvcc.changes(2, 3, usize::MAX).unwrap();
    assert_eq!(summary(&window).len(), 2);
    assert_eq!(window.through, 3);
    // Nothing past the end.
    let empty = s.mvcc.changes(5, 9, usize::MAX).unwrap();
    assert!(empty.changes.is_empty());
    assert_eq!(empty.through, 4);
    // The key as it was before a change: prev_kv.
    assert_eq!(s.mvcc.before(b"a", 3).unwrap(), Some(kv("a", "1", 1, 1, 1)));
    assert_eq!(s.mvcc.before(b"b", 4).unwrap(), Some(kv("b", "2", 2, 2, 1)));
    assert_eq!(s.mvcc.before(b"a", 1).unwrap(), None);
}

#[test]
fn a_byte_bound_stops_after_a_whole_revision() {
    let mut s = Store::new();
    s.apply(put("a", "xxxxxxxxxx")); // 1
    let txn = Command::Txn(nines_types::Txn {
        compares: vec![],
        success: vec![
            nines_types::TxnOp::Put {
                key: b"b".to_vec(),
                value: b"yyyyyyyyyy".to_vec(),
                prev_kv: false,
            },
            nines_types::TxnOp::Put {
                key: b"c".to_vec(),
                value: b"zzzzzzzzzz".to_vec(),
                prev_kv: false,
            },
        ],
        failure: vec![],
    });
    s.apply(txn); // 2, two changes
    s.apply(put("d", "w")); // 3
                            // A bound smaller than one change still returns the first revision
                            // whole, then the second whole (never half of revision 2).
    let first = s.mvcc.changes(1, 3, 1).unwrap();
    assert_eq!(first.through, 1);
    assert_eq!(first.changes.len(), 1);
    let second = s.mvcc.changes(2, 3, 1).unwrap();
    assert_eq!(second.through, 2);
    assert_eq!(
        summary(&second).iter().map(|c| c.2).collect::<Vec<_>>(),
        vec![2, 2]
    );
    let rest = s.mvcc.changes(3, 3, 1).unwrap();
    assert_eq!((rest.through, rest.changes.len()), (3, 1));
}

#[test]
fn history_at_or_below_the_compaction_is_refused() {
    let mut s = Store::new();
    for i in 0..4 {
        s.apply(put("a", &i.to_string())); // 1..=4
    }
    s.apply(del("a")); // 5
    s.apply(Command::Compact {
        revision: 5,
        physical: false,
    }); // no new revision
    for from in [1, 5] {
        assert!(
            matches!(
                s.mvcc.changes(from, 9, usize::MAX),
                Err(StateError::Compacted { compacted: 5, .. })
            ),
            "from {from}"
        );
    }
    s.apply(put("a", "again")); // 6
    let after = s.mvcc.changes(6, 9, usize::MAX).unwrap();
    assert_eq!(summary(&after), vec![(false, "a=again".into(), 6)]);
    assert_eq!(s.mvcc.before(b"a", 6).unwrap(), None);
}
