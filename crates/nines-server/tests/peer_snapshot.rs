//! A snapshot a leader streams in is checked whole before openraft installs
//! it: a corrupt or garbage one is refused to its sender and the node keeps
//! running (openraft's own receiver handed it to the state machine, whose
//! error stopped the node for good), and a good one still installs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use nines_log::{LogOptions, LogStore};
use nines_proto::raft_server::Raft as _;
use nines_proto::RaftRequest;
use nines_server::metrics::Counters;
use nines_server::network::{RaftService, SnapshotReceiver};
use nines_state::{StateMachine, StateOptions};
use nines_types::{codec, Command, Entry, Node, NodeId, Raft, Request, TypeConfig};
use openraft::raft::InstallSnapshotRequest;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, Vote};
use tokio::io::AsyncReadExt;

mod common;
use common::NoNetwork;

fn members() -> BTreeMap<NodeId, Node> {
    (1..=3)
        .map(|id| (id, Node::new(format!("127.0.0.1:{id}"), "")))
        .collect()
}

/// Node 1 of {1, 2, 3}, alone, behind a service that stages snapshots.
async fn node(dir: &std::path::Path) -> (Raft, RaftService) {
    let log = LogStore::open(&dir.join("log"), LogOptions::default()).unwrap();
    let state = StateMachine::open(&dir.join("state"), StateOptions::default())
        .await
        .unwrap();
    let receiver = SnapshotReceiver::new(state.stager());
    let raft = openraft::Raft::new(1, common::raft_config(), NoNetwork, log, state)
        .await
        .unwrap();
    raft.initialize(members()).await.unwrap();
    let service =
        RaftService::new(1, 7, raft.clone(), Arc::new(Counters::default())).with_receiver(receiver);
    (raft, service)
}

/// A real snapshot of node 2's state: a membership entry and 200 puts, all
/// at term 5. Returns its meta and its bytes.
async fn leaders_snapshot(dir: &std::path::Path) -> (SnapshotMeta<NodeId, Node>, Vec<u8>) {
    let mut sm = StateMachine::open(dir, StateOptions::default())
        .await
        .unwrap();
    let id = |index| LogId::new(CommittedLeaderId::new(5, 2), index);
    let voters = BTreeSet::from([1, 2, 3]);
    let mut entries: Vec<Entry> = vec![openraft::Entry {
        log_id: id(1),
        payload: EntryPayload::Membership(Membership::new(vec![voters], members())),
    }];
    for i in 2..=201u64 {
        entries.push(openraft::Entry {
            log_id: id(i),
            payload: EntryPayload::Normal(Request::new(Command::Put {
                key: format!("key-{i}").into_bytes(),
                value: vec![i as u8; 100],
                lease: 0,
                prev_kv: false,
            })),
        });
    }
    sm.apply(entries).await.unwrap();
    let mut snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut bytes = Vec::new();
    snapshot.snapshot.read_to_end(&mut bytes).await.unwrap();
    (snapshot.meta, bytes)
}

/// Streams `bytes` as node 2, leader of term 1000, in 4 KiB chunks; the
/// answer to the first failing chunk or to the last.
async fn send(
    service: &RaftService,
    meta: &SnapshotMeta<NodeId, Node>,
    bytes: &[u8],
) -> Result<(), tonic::Status> {
    let chunks: Vec<&[u8]> = bytes.chunks(4096).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(1000, 2),
            meta: meta.clone(),
            offset: (n * 4096) as u64,
            data: chunk.to_vec(),
            done: n + 1 == chunks.len(),
        };
        let request = tonic::Request::new(RaftRequest {
            target: 1,
            cluster_id: 7,
            data: codec::encode(&rpc).unwrap(),
        });
        service.install_snapshot(request).await?;
    }
    Ok(())
}

fn assert_running(raft: &Raft) {
    let metrics = raft.metrics();
    assert!(metrics.has_changed().is_ok(), "the Raft core is gone");
    let running = metrics.borrow().running_state.clone();
    if let Err(e) = running {
        panic!("the Raft core stopped: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_refused_and_a_good_one_installs() {
    let dir = tempfile::tempdir().unwrap();
    let (raft, service) = node(&dir.path().join("node")).await;
    let (meta, good) = leaders_snapshot(&dir.path().join("leader")).await;
    assert!(good.len() > 3 * 4096, "the snapshot spans several chunks");

    // One flipped byte in a record: the file's checksum no longer matches.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    // Bytes that are no snapshot at all.
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    for (what, bytes) in [("flipped", &flipped), ("garbage", &garbage)] {
        // Resent, as a leader would: every attempt is refused, none stops us.
        for attempt in 0..3 {
            let mut meta = meta.clone();
            meta.snapshot_id = format!("{}-{what}-{attempt}", meta.snapshot_id);
            let refused = send(&service, &meta, bytes).await;
            let status = refused.expect_err(&format!("the {what} snapshot was installed"));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("cannot be installed"),
                "{status:?}"
            );
            assert_running(&raft);
        }
    }
    let applied = raft.metrics().borrow().last_applied;
    assert!(applied.is_none_or(|l| l.index < 201), "{applied:?}");

    // A snapshot id that cannot name a file is refused by the guard.
    let mut long = meta.clone();
    long.snapshot_id = "a".repeat(300);
    let status = send(&service, &long, &good).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_running(&raft);

    // The real one installs, after all those refusals.
    send(&service, &meta, &good)
        .await
        .expect("a good snapshot installs");
    raft.wait(Some(Duration::from_secs(30)))
        .applied_index_at_least(Some(201), "snapshot installed")
        .await
        .expect("applied up to the snapshot");
    assert_running(&raft);
    raft.shutdown().await.unwrap();
}
