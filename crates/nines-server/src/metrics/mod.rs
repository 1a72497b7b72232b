//! Metrics and health on `--listen-metrics`, an HTTP/1.1 server
//! (`http.rs`): `GET /metrics` in the OpenMetrics text format through the
//! `prometheus-client` crate, and etcd's `/livez`, `/readyz` and `/health`
//! (`health.rs`).
//!
//! The counters below are plain atomics, bumped all over the server and
//! read at scrape time by one collector (`collector.rs`), which also reads
//! Raft's state from openraft's metrics. Durations are histograms
//! (`Timings`); the log and state crates report theirs through hooks
//! (`nines_log::SyncHook`, `nines_state::StateObserver`) so neither depends
//! on a metrics library.

mod collector;
pub use collector::registry;
pub mod grpc;
pub mod health;
mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

pub use http::serve;

#[derive(Default)]
pub struct Counters {
    pub writes_ok: AtomicU64,
    pub writes_failed: AtomicU64,
    pub writes_forwarded: AtomicU64,
    /// Writes refused over --quota-backend-bytes.
    pub writes_no_space: AtomicU64,
    pub reads_linearizable: AtomicU64,
    pub reads_forwarded: AtomicU64,
    /// Read index requests this follower sent the leader (one per batch).
    pub read_index_asks: AtomicU64,
    /// Of those, the ones that got no index: the batch was forwarded whole.
    pub read_index_ask_failures: AtomicU64,
    /// Read index requests this node answered for followers.
    pub read_index_answered: AtomicU64,
    /// Of those, the ones whose offered vote made a round needless.
    pub read_index_vouched: AtomicU64,
    /// Leadership checks this node ran by asking its voters' saved votes.
    pub read_vote_checks: AtomicU64,
    /// Of those, the ones a quorum confirmed (no openraft round needed).
    pub read_vote_checks_confirmed: AtomicU64,
    /// Gauge: watchers on this member.
    pub watchers: AtomicU64,
    /// Gauge: open watch streams.
    pub watch_streams: AtomicU64,
    pub watch_events_sent: AtomicU64,
    /// Responses that carried them: events per response is how much a
    /// stream's responses batch.
    pub watch_event_responses_sent: AtomicU64,
    /// Reads of history for watchers (the shared feed's, and those of
    /// watchers that fell behind it).
    pub watch_history_reads: AtomicU64,
    /// Store reads of a previous key-value for watchers' `prev_kv` (one
    /// per change while the shared feed holds it, shared by its watchers).
    pub watch_prev_reads: AtomicU64,
    /// Leases this leader revoked because they expired.
    pub leases_expired: AtomicU64,
    /// Keepalives this member answered or forwarded.
    pub lease_keepalives: AtomicU64,
    /// Lease checkpoint commands this member, as leader, saw applied.
    pub lease_checkpoints: AtomicU64,
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
    /// Proposals openraft committed and applied (`client_write` returned).
    pub proposals_committed: AtomicU64,
    /// Gauge: this member's commit index, as RaftCore last reported it to
    /// a scrape or probe (openraft 0.9's metrics do not carry it).
    pub commit_index: AtomicU64,
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
    /// Calls that carried forwarded writes to the leader (several each).
    pub forward_batches: AtomicU64,
    /// Forwarded writes answered before this member reached their revision.
    pub forward_catch_up_timeouts: AtomicU64,
    /// Times the watcher's timer fired over a second late.
    pub runtime_stalls: AtomicU64,
    // Health (health.rs).
    /// Readiness probes of a follower that got no answer from the leader.
    pub probe_failures: AtomicU64,
    /// Liveness probes that RaftCore did not answer within a second.
    pub livez_failures: AtomicU64,
    pub timings: Timings,
    pub started: Started,
}

/// When this node started: its uptime, and with `leaderless_ms` its
/// availability (see the README's "Metrics and health").
pub struct Started {
    pub at: std::time::Instant,
    /// Seconds since the Unix epoch, for `process_start_time_seconds`.
    pub unix_seconds: f64,
}

impl Default for Started {
    fn default() -> Self {
        Started {
            at: std::time::Instant::now(),
            unix_seconds: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

impl Counters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Duration histograms, in seconds. Cheap to clone (the clones share).
#[derive(Clone)]
pub struct Timings {
    /// fdatasync of the Raft log, in an append or the pipelining flusher.
    pub wal_fsync: Histogram,
    /// One `apply` call of the state machine (a batch of entries), after
    /// the entries are durable.
    pub apply: Histogram,
    /// From a proposal's `client_write` to its answer: committed by a
    /// quorum and applied here.
    pub proposal_commit: Histogram,
    pub snapshot_build: Histogram,
    pub snapshot_install: Histogram,
    /// Client gRPC requests by method and status code (`grpc.rs`).
    pub requests: Family<grpc::RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            // 50 µs .. 1.6 s: an fsync on NVMe is tens of µs, on a busy VM
            // disk up to hundreds of ms.
            wal_fsync: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
            // 10 µs .. 1.3 s.
            apply: Histogram::new(exponential_buckets(10e-6, 2.0, 18)),
            proposal_commit: Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
            // 10 ms .. 82 s: a snapshot of a large store takes seconds.
            snapshot_build: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            snapshot_install: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            requests: Family::new_with_constructor(request_histogram),
        }
    }
}

fn request_histogram() -> Histogram {
    // 100 µs .. 3.3 s (the request timeout's order).
    Histogram::new(exponential_buckets(100e-6, 2.0, 16))
}

/// The state machine's timings, reported through `nines_state`'s hook.
#[derive(Clone)]
pub struct StateTimings(pub Timings);

impl std::fmt::Debug for StateTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateTimings")
    }
}

impl nines_state::StateObserver for StateTimings {
    fn applied(&self, took: Duration) {
        self.0.apply.observe(took.as_secs_f64());
    }

    fn snapshot_built(&self, took: Duration) {
        self.0.snapshot_build.observe(took.as_secs_f64());
    }

    fn snapshot_installed(&self, took: Duration) {
        self.0.snapshot_install.observe(took.as_secs_f64());
    }
}

impl Timings {
    /// The hook the Raft log calls after each fdatasync.
    pub fn wal_sync_hook(&self) -> nines_log::SyncHook {
        let histogram = self.wal_fsync.clone();
        std::sync::Arc::new(move |took: Duration| histogram.observe(took.as_secs_f64()))
    }
}
