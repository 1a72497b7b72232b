//! Prometheus text metrics on `--listen-metrics`: Raft state from openraft's
//! metrics plus request counters. A deliberately tiny HTTP/1.1 responder:
//! every request gets the metrics page, so it needs no web framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::core::NodeCore;

#[derive(Default)]
pub struct Counters {
    pub writes_ok: AtomicU64,
    pub writes_failed: AtomicU64,
    pub writes_forwarded: AtomicU64,
    /// Writes refused over --quota-backend-bytes.
    pub writes_no_space: AtomicU64,
    pub reads_linearizable: AtomicU64,
    pub reads_forwarded: AtomicU64,
    pub proposals: AtomicU64,
    pub proposed_requests: AtomicU64,
    /// Local range/get executions running now (gauge).
    pub reads_executing: AtomicU64,
    /// Bytes of read results held or being sent now (gauge).
    pub read_bytes_in_flight: AtomicU64,
    /// Reads refused RESOURCE_EXHAUSTED by the read limits.
    pub reads_rejected: AtomicU64,
    /// Peer messages refused before reaching openraft (see network::guard).
    pub peer_messages_refused: AtomicU64,
    // What a stalled node says about itself (observe.rs renders these).
    // Raft view, kept by observe::watch_raft.
    pub leader_changes: AtomicU64,
    pub became_leader: AtomicU64,
    pub stepped_down: AtomicU64,
    /// Gauge: observe::state_code.
    pub raft_state: AtomicU64,
    /// Gauge: 1 if a leader is known.
    pub has_leader: AtomicU64,
    pub leaderless_ms: AtomicU64,
    /// Gauge: the current stretch without a leader.
    pub leaderless_stretch: AtomicU64,
    // Proposer.
    /// Gauge: observe::mono_ms when the proposal in flight started, 0 = none.
    pub proposal_started_ms: AtomicU64,
    /// Gauge: writes carried by the proposal in flight.
    pub proposal_requests: AtomicU64,
    /// Gauge: writes queued for the proposer.
    pub proposal_pending: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub proposals_timed_out: AtomicU64,
    pub requests_abandoned: AtomicU64,
    // Read barrier.
    pub read_rounds: AtomicU64,
    pub read_round_failures: AtomicU64,
    pub read_round_timeouts: AtomicU64,
    /// Gauge: observe::mono_ms when the round in flight started, 0 = none.
    pub read_round_started_ms: AtomicU64,
    // Forwarding to the leader.
    pub forward_failures: AtomicU64,
    /// Times the watcher's timer fired over a second late.
    pub runtime_stalls: AtomicU64,
}

impl Counters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn render(core: &NodeCore) -> String {
    let m = core.raft.metrics().borrow().clone();
    let c = &core.counters;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP nines_{name} {help}\n# TYPE nines_{name} gauge\nnines_{name} {value}"
        );
    };
    gauge("raft_term", "Current Raft term.", m.current_term);
    gauge(
        "raft_is_leader",
        "1 if this node is the leader.",
        (m.state == ServerState::Leader) as u64,
    );
    gauge(
        "raft_leader_id",
        "Known leader id, 0 if none.",
        m.current_leader.unwrap_or(0),
    );
    gauge(
        "raft_last_log_index",
        "Last log index.",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        "raft_applied_index",
        "Last applied index.",
        m.last_applied.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        "raft_snapshot_index",
        "Index of the last snapshot.",
        m.snapshot.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        "raft_purged_index",
        "Log purged up to this index.",
        m.purged.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        "store_revision",
        "Store revision.",
        core.reader.revision().max(0) as u64,
    );
    gauge(
        "store_compacted_revision",
        "Reads below this revision fail: history up to it was compacted.",
        core.reader.compacted_revision().max(0) as u64,
    );
    gauge(
        "store_compaction_swept_records",
        "Records compactions dropped that the sweep deleted since start.",
        core.reader.swept_records(),
    );
    gauge(
        "store_data_bytes",
        "Bytes of the records the store holds, every retained revision (what the quota limits).",
        core.reader.data_bytes(),
    );
    gauge(
        "store_quota_bytes",
        "--quota-backend-bytes: over it, writes that add data are refused.",
        core.config.quota_backend_bytes,
    );
    gauge(
        "store_disk_bytes",
        "Bytes on disk of the state dir (engine and snapshots).",
        crate::disk::usage(&crate::disk::state_dir(&core.config.data_dir)),
    );
    gauge(
        "log_disk_bytes",
        "Bytes on disk of the Raft log.",
        crate::disk::usage(&crate::disk::log_dir(&core.config.data_dir)),
    );
    gauge(
        "reads_executing",
        "Local range/get executions running now.",
        c.reads_executing.load(Ordering::Relaxed),
    );
    gauge(
        "read_bytes_in_flight",
        "Bytes of read results held or being sent now.",
        c.read_bytes_in_flight.load(Ordering::Relaxed),
    );
    let mut counter = |name: &str, help: &str, value: &AtomicU64| {
        let _ = writeln!(
            out,
            "# HELP nines_{name} {help}\n# TYPE nines_{name} counter\nnines_{name} {}",
            value.load(Ordering::Relaxed)
        );
    };
    counter(
        "writes_ok_total",
        "Writes applied for clients of this node.",
        &c.writes_ok,
    );
    counter(
        "writes_failed_total",
        "Writes that returned an error.",
        &c.writes_failed,
    );
    counter(
        "writes_forwarded_total",
        "Writes forwarded to the leader.",
        &c.writes_forwarded,
    );
    counter(
        "writes_no_space_total",
        "Writes refused because the store holds more than the quota.",
        &c.writes_no_space,
    );
    counter(
        "reads_linearizable_total",
        "Read barriers passed locally.",
        &c.reads_linearizable,
    );
    counter(
        "reads_forwarded_total",
        "Linearizable reads forwarded to the leader.",
        &c.reads_forwarded,
    );
    counter(
        "reads_rejected_total",
        "Reads refused RESOURCE_EXHAUSTED by the read limits.",
        &c.reads_rejected,
    );
    counter(
        "proposals_total",
        "Raft entries proposed by the write batcher.",
        &c.proposals,
    );
    counter(
        "proposed_requests_total",
        "Client writes carried by those entries.",
        &c.proposed_requests,
    );
    counter(
        "peer_messages_refused_total",
        "Peer messages refused before reaching Raft (non-member, bad term, malformed).",
        &c.peer_messages_refused,
    );
    crate::observe::render(&mut out, c);
    out
}

pub async fn serve(core: Arc<NodeCore>, listener: TcpListener) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            // Whatever was asked, answer with the metrics; a slow or silent
            // peer cannot hold the task for long.
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut request)).await;
            let body = render(&core);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                socket.write_all(response.as_bytes()),
            )
            .await;
        });
    }
}
