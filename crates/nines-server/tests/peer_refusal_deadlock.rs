//! A refused peer message must not freeze the Raft runtime.
//!
//! Found in a 10-minute chaos run (seed 271828): after "isolate leader 2"
//! healed, the old leader's stale appends reached the new leader, whose
//! guard refused them; the node then went silent for good (its Raft core,
//! heartbeats and replication all stopped while the process ran on). The
//! handler read the Raft metrics channel (a read lock) and, while still
//! holding it, logged the refusal with a second read of the same channel.
//! A metrics update by RaftCore queued between the two reads makes the
//! second wait for the writer and the writer wait for the first: both
//! threads block forever (tokio's watch is a writer-preferring RwLock).
//!
//! Here a single-member node takes writes as fast as it can (every write
//! updates the metrics) while another thread sends refused appends through
//! fresh handlers (each logs its first refusal, the path that re-read the
//! metrics). Before the fix this deadlocked within seconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_log::{LogOptions, LogStore};
use nines_proto::raft_server::Raft as _;
use nines_proto::RaftRequest;
use nines_server::metrics::Counters;
use nines_server::network::RaftService;
use nines_state::{StateMachine, StateOptions};
use nines_types::{codec, Command, Node, NodeId, Request, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, Vote};

/// How long the refusals run alongside the writes.
const RUN: Duration = Duration::from_secs(8);
/// Far longer than any pause on a loaded 2-core machine.
const STUCK: Duration = Duration::from_secs(30);

struct NoNetwork;

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;
    async fn new_client(&mut self, _target: NodeId, _node: &Node) -> NoNetwork {
        NoNetwork
    }
}

fn down<E: std::error::Error>() -> RPCError<NodeId, Node, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error("test: no peers")))
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(down())
    }
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(down())
    }
    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(down())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_peer_message_during_metrics_updates_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(&dir.path().join("log"), LogOptions::default()).unwrap();
    let state = StateMachine::open(&dir.path().join("state"), StateOptions::default())
        .await
        .unwrap();
    let config = openraft::Config::default().validate().unwrap();
    let raft = openraft::Raft::new(1, Arc::new(config), NoNetwork, log, state)
        .await
        .unwrap();
    let members: BTreeMap<NodeId, Node> = [(1, Node::new("127.0.0.1:1", ""))].into();
    raft.initialize(members).await.unwrap();
    raft.wait(Some(Duration::from_secs(30)))
        .current_leader(1, "single member leads")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (raft, stop, writes) = (raft.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let put = Command::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 0,
                    prev_kv: false,
                };
                raft.client_write(Request::new(put)).await.unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // An append from node 99, not a member: the guard refuses it.
    let forged = codec::encode(&AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 99),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    })
    .unwrap();
    // A plain thread: if the handler deadlocks, the test can still report it.
    let refusals = Arc::new(AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    {
        let (raft, stop, refusals) = (raft.clone(), stop.clone(), refusals.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A fresh handler logs its first refusal of each kind.
                let service = RaftService::new(1, 7, raft.clone(), Arc::new(Counters::default()));
                let request = tonic::Request::new(RaftRequest {
                    target: 1,
                    cluster_id: 7,
                    data: forged.clone(),
                });
                let err = handle
                    .block_on(service.append_entries(request))
                    .unwrap_err();
                assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
                refusals.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let (w, r) = (
        writes.load(Ordering::Relaxed),
        refusals.load(Ordering::Relaxed),
    );
    // A deadlocked Raft core never finishes the write in flight. Its thread
    // cannot be joined, so end the process with the verdict instead.
    match tokio::time::timeout(STUCK, writer).await {
        Ok(joined) => joined.unwrap(),
        Err(_) => {
            eprintln!(
                "deadlock: the write in flight did not finish in {STUCK:?} \
                 ({w} writes, {r} refusals)"
            );
            std::process::exit(101);
        }
    }
    let (w, r) = (
        writes.load(Ordering::Relaxed),
        refusals.load(Ordering::Relaxed),
    );
    eprintln!("{w} writes, {r} refusals");
    assert!(
        w > 100 && r > 100,
        "both sides ran: {w} writes, {r} refusals"
    );
    raft.shutdown().await.unwrap();
}
