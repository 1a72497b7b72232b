//! A damaged sled dir is moved aside and rebuilt from the newest snapshot.

mod common;

use std::path::Path;

use common::*;
use nines_state::StateError;
use nines_types::Request;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

/// Overwrites a run of bytes in the middle of every file of sled's dir.
fn corrupt_sled(state_dir: &Path) {
    let mut damaged = 0;
    let mut stack = vec![state_dir.join("sm")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let mid = bytes.len() / 2;
            let end = (mid + 4096).min(bytes.len());
            for b in &mut bytes[mid.saturating_sub(8)..end] {
                *b ^= 0x5a;
            }
            std::fs::write(&path, &bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no sled files found");
}

fn moved_aside(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sm.corrupt-"))
        .collect()
}

#[tokio::test]
async fn damaged_sled_is_rebuilt_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snap_id;
    {
        let mut a = Applier::new(open(dir.path()).await);
        for i in 0..300 {
            a.cmd(put(&format!("k{i:04}"), &"v".repeat(200))).await;
        }
        let snap =
            a.sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        snap_id = snap.meta.last_log_id;
        // Applied after the snapshot: the log re-applies these.
        for i in 300..310 {
            a.cmd(put(&format!("k{i:04}"), "late")).await;
        }
    }
    corrupt_sled(dir.path());

    let sm = open(dir.path()).await;
    let aside = sm.rebuilt_from().expect("the open rebuilt the state");
    assert!(
        aside.exists(),
        "the damaged dir is kept: {}",
        aside.display()
    );
    assert_eq!(moved_aside(dir.path()).len(), 1);
    assert_eq!(sm.reader().last_applied(), snap_id);
    let kvs = all_kvs(&sm);
    assert_eq!(kvs.len(), 300, "exactly the snapshot's keys");
    assert!(kvs.iter().all(|kv| kv.value.len() == 200));
    // The log has everything after the snapshot: it may rebuild.
    sm.check_rebuildable(snap_id).unwrap();
    sm.check_rebuildable(None).unwrap();
    drop(sm);

    // A clean reopen does not rebuild again.
    let sm = open(dir.path()).await;
    assert!(sm.rebuilt_from().is_none());
    assert_eq!(sm.reader().last_applied(), snap_id);
}

#[tokio::test]
async fn no_snapshot_and_a_purged_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = open(dir.path()).await;
        let entries: Vec<_> = (1..=300)
            .map(|i| entry(i, Request::new(put(&format!("k{i:04}"), &"v".repeat(200)))))
            .collect();
        sm.apply(entries).await.unwrap();
    }
    corrupt_sled(dir.path());
    let sm = open(dir.path()).await;
    assert!(sm.rebuilt_from().is_some());
    assert_eq!(sm.reader().last_applied(), None);
    assert!(all_kvs(&sm).is_empty());
    // An unpurged log re-applies from index 1; a purged one cannot.
    sm.check_rebuildable(None).unwrap();
    let err = sm.check_rebuildable(Some(log_id(100))).unwrap_err();
    assert!(matches!(err, StateError::CannotRebuild { .. }));
    let msg = err.to_string();
    assert!(msg.contains("remove this member"), "{msg}");
}
