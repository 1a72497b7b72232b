//! Backups: an export taken while applies go on holds exactly the state at
//! its revision; its status hashes as HashKV does; a restore opens a new
//! state at that revision with the new membership.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;
use nines_state::{backup_status, restore_state, verify_backup, BACKUP_ALIGN};
use nines_types::{Command, KeyRange, LogId, Node, RangeRequest, StoredMembership};
use openraft::{CommittedLeaderId, Membership};
use sha2::{Digest, Sha256};

/// Streams an export into a backup file as a member does: data, zero
/// padding, then the sha256.
fn write_backup(mut export: nines_state::Export, out: &Path) {
    let mut file = std::fs::File::create(out).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4096];
    let mut total = 0u64;
    loop {
        let n = export.file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        total += n as u64;
    }
    assert_eq!(total, export.len);
    let padding = vec![0u8; (total.next_multiple_of(BACKUP_ALIGN) - total) as usize];
    hasher.update(&padding);
    file.write_all(&padding).unwrap();
    file.write_all(&hasher.finalize()).unwrap();
}

fn new_membership(at: LogId) -> StoredMembership {
    let nodes: BTreeMap<u64, Node> = [7, 8]
        .into_iter()
        .map(|id| (id, Node::new(format!("h{id}:1"), format!("h{id}:2"))))
        .collect();
    let voters = nodes.keys().copied().collect();
    StoredMembership::new(Some(at), Membership::new(vec![voters], nodes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_under_writes_then_status_and_restore_match_hashkv() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(open(&dir.path().join("src")).await);
    for i in 0..3_000 {
        a.cmd(put(&format!("k{:04}", i % 700), &format!("v{i}")))
            .await;
        if i % 10 == 0 {
            a.cmd(delete(&format!("k{:04}", (i * 7) % 700), false))
                .await;
        }
    }
    a.cmd(Command::Compact {
        revision: 500,
        physical: false,
    })
    .await;
    let reader = a.sm.reader();
    // Slow the scan so applies race the export.
    a.sm.set_snapshot_scan_delay(Duration::from_micros(20));
    let exporting = {
        let reader = reader.clone();
        tokio::spawn(async move { reader.export().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 0..300 {
        a.cmd(put(&format!("k{:04}", i), "later")).await;
    }
    let export = exporting.await.unwrap();
    let at = export.revision;
    assert!(at < reader.revision(), "the writes after the export began");
    let source = reader.hash_kv(at).unwrap();
    let mut all = RangeRequest::range(KeyRange::From(vec![0]));
    all.count_only = true;
    let live_at = reader.range_at(&all, at).unwrap().data.count;

    let file = dir.path().join("backup.db");
    write_backup(export, &file);
    verify_backup(&file).unwrap();
    let status = backup_status(&file, dir.path()).unwrap();
    assert_eq!(status.revision, at);
    assert_eq!(status.hash, source.hash);
    assert_eq!(status.compact_revision, 500);
    assert_eq!(status.total_keys, live_at);
    assert_eq!(status.total_size, std::fs::metadata(&file).unwrap().len());

    let applied = LogId::new(CommittedLeaderId::new(0, 0), status.applied_index);
    let restored_dir = dir.path().join("restored");
    let revision = restore_state(&file, &restored_dir, applied, new_membership(applied))
        .await
        .unwrap();
    assert_eq!(revision, at);
    let restored = open(&restored_dir).await;
    let r = restored.reader();
    assert_eq!(r.hash_kv(at).unwrap(), source);
    assert_eq!(r.last_applied(), Some(applied));
    let mut restored = restored;
    let (last, membership) = openraft::storage::RaftStateMachine::applied_state(&mut restored)
        .await
        .unwrap();
    assert_eq!(last, Some(applied));
    assert_eq!(membership, new_membership(applied));
    // A restore never writes over existing state.
    let err = restore_state(&file, &restored_dir, applied, new_membership(applied))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}
