//! A crash between an apply's revision records (appended to the tail) and
//! its journaled writes (sled): the records left above the store's revision
//! are cut off at open, and the Raft log's re-apply writes them again.

use nines_types::{Command, Entry, LogId, RangeRequest, Request};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

use crate::mvcc::{encode_record, rev_key, RecordHeader, Rev};
use crate::tail::Tail;
use crate::{StateMachine, StateOptions};

async fn open(dir: &std::path::Path) -> StateMachine {
    StateMachine::open(dir, StateOptions::default())
        .await
        .expect("open")
}

fn put(index: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::new(Command::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease: 0,
            prev_kv: false,
        })),
    }
}

fn value(sm: &StateMachine, key: &str) -> Option<(Vec<u8>, i64)> {
    let read = sm
        .reader()
        .range(&RangeRequest::key(key.as_bytes().to_vec()))
        .expect("range");
    let kv = read.data.kvs.into_iter().next()?;
    Some((kv.value, kv.mod_revision))
}

/// A machine at `dir` that applied `k1..=k5` (revisions 2..=6).
async fn five_puts(dir: &std::path::Path) -> StateMachine {
    let mut sm = open(dir).await;
    for i in 1..=5u64 {
        sm.apply([put(i, &format!("k{i}"), &format!("v{i}"))])
            .await
            .unwrap();
    }
    sm
}

#[tokio::test]
async fn records_of_an_apply_cut_off_before_its_journal_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sm = five_puts(dir.path()).await;
        assert_eq!(sm.reader().revision(), 6);
    }
    // What a crash leaves when entry 6's records reached sled and nothing
    // after them did: an overwrite of k1 and a new key, at revision 7.
    {
        let tail = Tail::open(&dir.path().join("tail/data-0"), 1, 6).unwrap();
        for (sub, key, created) in [(0, "k1", 2), (1, "new", 7)] {
            let header = RecordHeader {
                key: key.as_bytes().to_vec(),
                tombstone: false,
                create_revision: created,
                version: 2,
                lease: 0,
            };
            let raw = encode_record(&header, b"cut off").unwrap();
            tail.append(&[(&rev_key(Rev { main: 7, sub }), &raw)])
                .unwrap();
        }
    }

    let mut sm = open(dir.path()).await;
    assert!(sm.rebuilt_from().is_none(), "opened without a rebuild");
    assert_eq!(sm.reader().revision(), 6);
    assert_eq!(value(&sm, "k1"), Some((b"v1".to_vec(), 2)));
    assert_eq!(value(&sm, "new"), None);
    // The log re-applies entry 6: it lands at revision 7 again.
    sm.apply([put(6, "new", "again")]).await.unwrap();
    assert_eq!(value(&sm, "new"), Some((b"again".to_vec(), 7)));
    assert_eq!(value(&sm, "k1"), Some((b"v1".to_vec(), 2)));
    drop(sm);
    let sm = open(dir.path()).await;
    assert_eq!(value(&sm, "new"), Some((b"again".to_vec(), 7)));
}

/// A data dir from before tails keeps its records in sled: the open
/// rebuilds it from the snapshot (which has them all) and the log.
#[tokio::test]
async fn a_state_with_records_in_sled_is_rebuilt_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = five_puts(dir.path()).await;
        let mut builder = sm.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
    }
    {
        let sled_dir = dir.path().join(crate::store::SLED_DIR);
        let (_db, tree, _) = crate::store::open_db(&sled_dir, &StateOptions::default()).unwrap();
        tree.insert(rev_key(Rev { main: 2, sub: 0 }), b"old layout".as_slice())
            .unwrap();
        tree.flush().unwrap();
    }
    let sm = open(dir.path()).await;
    assert!(sm.rebuilt_from().is_some(), "rebuilt");
    assert_eq!(sm.reader().revision(), 6);
    for i in 1..=5 {
        assert_eq!(
            value(&sm, &format!("k{i}")),
            Some((format!("v{i}").into_bytes(), i as i64 + 1))
        );
    }
}
