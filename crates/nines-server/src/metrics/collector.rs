//! The metrics read at scrape time: Raft's state from openraft's metrics,
//! the store's sizes, and the atomics in `Counters`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::ServerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::Counters;
use crate::core::NodeCore;
use crate::observe::age_ms;

/// Every metric of a node, under the `nines_` prefix.
pub fn registry(core: &Arc<NodeCore>) -> Registry {
    let mut registry = Registry::with_prefix("nines");
    let t = &core.counters.timings;
    let histograms = [
        (
            "wal_fsync_duration",
            "fdatasync of appended Raft log entries.",
            &t.wal_fsync,
        ),
        (
            "apply_duration",
            "State machine apply calls (a batch of committed entries).",
            &t.apply,
        ),
        (
            "proposal_commit_duration",
            "Proposals from submission to committed and applied on this leader.",
            &t.proposal_commit,
        ),
        (
            "snapshot_build_duration",
            "Snapshot builds on this member.",
            &t.snapshot_build,
        ),
        (
            "snapshot_install_duration",
            "Installs of snapshots received from the leader.",
            &t.snapshot_install,
        ),
    ];
    for (name, help, histogram) in histograms {
        registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
    }
    registry.register_with_unit(
        "grpc_request_duration",
        "Client gRPC requests by method and status code (the code in the response headers: \
         a streaming call that fails after its first message counts as OK).",
        Unit::Seconds,
        t.requests.clone(),
    );
    registry.register_collector(Box::new(Scraped(core.clone())));
    registry
}

/// Reads the node at scrape time.
struct Scraped(Arc<NodeCore>);

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

fn gauge<V: EncodeGaugeValue + std::fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// `name` without `_total`: the encoder appends it to counters.
fn counter<V: EncodeCounterValue + std::fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let core = &self.0;
        let c = &core.counters;
        // Cloned, not borrowed: a held borrow of openraft's metrics blocks
        // RaftCore's next update (see the peer guard deadlock in the README).
        let m = core.raft.metrics().borrow().clone();
        let e = &mut enc;
        gauge(e, "raft_term", "Current Raft term.", m.current_term)?;
        gauge(
            e,
            "raft_is_leader",
            "1 if this node is the leader.",
            (m.state == ServerState::Leader) as u64,
        )?;
        gauge(
            e,
            "raft_leader_id",
            "Known leader id, 0 if none.",
            m.current_leader.unwrap_or(0),
        )?;
        gauge(
            e,
            "raft_last_log_index",
            "Last log index.",
            m.last_log_index.unwrap_or(0),
        )?;
        gauge(
            e,
            "raft_commit_index",
            "Commit index (as RaftCore answered the scrape; 0 if it did not within a second).",
            load(&c.commit_index),
        )?;
        gauge(
            e,
            "raft_applied_index",
            "Last applied index.",
            m.last_applied.map(|l| l.index).unwrap_or(0),
        )?;
        gauge(
            e,
            "raft_snapshot_index",
            "Index of the last snapshot.",
            m.snapshot.map(|l| l.index).unwrap_or(0),
        )?;
        gauge(
            e,
            "raft_purged_index",
            "Log purged up to this index.",
            m.purged.map(|l| l.index).unwrap_or(0),
        )?;
        gauge(
            e,
            "raft_state",
            "Raft state: 0 follower, 1 candidate, 2 leader, 3 learner, 4 shutdown.",
            load(&c.raft_state),
        )?;
        gauge(
            e,
            "raft_has_leader",
            "1 if this node has a leader in contact (see leaderless_seconds), 0 otherwise.",
            load(&c.has_leader),
        )?;
        gauge(
            e,
            "store_revision",
            "Store revision.",
            core.reader.revision().max(0) as u64,
        )?;
        gauge(
            e,
            "store_compacted_revision",
            "Reads below this revision fail: history up to it was compacted.",
            core.reader.compacted_revision().max(0) as u64,
        )?;
        gauge(
            e,
            "store_compaction_swept_records",
            "Records compactions dropped that the sweep deleted since start.",
            core.reader.swept_records(),
        )?;
        gauge(
            e,
            "store_data_bytes",
            "Bytes of the records the store holds, every retained revision (what the quota limits).",
            core.reader.data_bytes(),
        )?;
        gauge(
            e,
            "leases",
            "Leases granted (in this member's applied state).",
            core.reader.lease_count() as u64,
        )?;
        gauge(
            e,
            "store_quota_bytes",
            "--quota-backend-bytes: over it, writes that add data are refused.",
            core.config.quota_backend_bytes,
        )?;
        gauge(
            e,
            "store_disk_bytes",
            "Bytes on disk of the state dir (engine and snapshots): etcd's db size.",
            crate::disk::usage(&crate::disk::state_dir(&core.config.data_dir)),
        )?;
        gauge(
            e,
            "log_disk_bytes",
            "Bytes on disk of the Raft log.",
            crate::disk::usage(&crate::disk::log_dir(&core.config.data_dir)),
        )?;
        gauge(
            e,
            "reads_executing",
            "Local range/get executions running now.",
            load(&c.reads_executing),
        )?;
        gauge(
            e,
            "read_bytes_in_flight",
            "Bytes of read results held or being sent now.",
            load(&c.read_bytes_in_flight),
        )?;
        gauge(
            e,
            "proposal_in_flight_seconds",
            "Age of the Raft proposal in flight, 0 if none.",
            seconds(age_ms(&c.proposal_started_ms)),
        )?;
        gauge(
            e,
            "proposal_in_flight_requests",
            "Client writes carried by the proposal in flight.",
            load(&c.proposal_requests),
        )?;
        gauge(
            e,
            "pending_requests",
            "Client writes queued for the next proposal.",
            load(&c.proposal_pending),
        )?;
        gauge(
            e,
            "read_round_in_flight_seconds",
            "Age of the read barrier round in flight, 0 if none.",
            seconds(age_ms(&c.read_round_started_ms)),
        )?;
        gauge(
            e,
            "leaderless_stretch_seconds",
            "How long this node has had no leader in contact, 0 if it has one.",
            seconds(load(&c.leaderless_stretch)),
        )?;
        counter(
            e,
            "leaderless_seconds",
            "Time since start without a leader in contact (a follower heard from it, a leader \
             from a quorum, within 2 x the election timeout).",
            seconds(load(&c.leaderless_ms)),
        )?;
        gauge(e, "watchers", "Watchers on this member.", load(&c.watchers))?;
        gauge(
            e,
            "watch_streams",
            "Open watch streams.",
            load(&c.watch_streams),
        )?;
        gauge(
            e,
            "process_start_time_seconds",
            "When this process started, in seconds since the Unix epoch.",
            c.started.unix_seconds,
        )?;
        counter(
            e,
            "uptime_seconds",
            "Time since this process started.",
            c.started.at.elapsed().as_secs_f64(),
        )?;
        encode_counters(e, c)
    }
}

fn encode_counters(e: &mut DescriptorEncoder, c: &Counters) -> std::fmt::Result {
    let counters: [(&str, &str, &AtomicU64); 39] = [
        (
            "leases_expired",
            "Leases this member revoked as leader because they expired.",
            &c.leases_expired,
        ),
        (
            "lease_keepalives",
            "Lease keepalives this member answered or forwarded.",
            &c.lease_keepalives,
        ),
        (
            "lease_checkpoints",
            "Lease checkpoints (remaining TTLs in the log) this member applied as leader.",
            &c.lease_checkpoints,
        ),
        ("writes_ok", "Writes applied for clients of this node.", &c.writes_ok),
        ("writes_failed", "Writes that returned an error.", &c.writes_failed),
        ("writes_forwarded", "Writes forwarded to the leader.", &c.writes_forwarded),
        (
            "writes_no_space",
            "Writes refused because the store holds more than the quota.",
            &c.writes_no_space,
        ),
        ("reads_linearizable", "Read barriers passed locally.", &c.reads_linearizable),
        ("reads_forwarded", "Linearizable reads forwarded to the leader.", &c.reads_forwarded),
        (
            "read_index_asks",
            "Read index requests sent to the leader (one per batch of reads).",
            &c.read_index_asks,
        ),
        (
            "read_index_ask_failures",
            "Read index requests that got no index (their reads were forwarded).",
            &c.read_index_ask_failures,
        ),
        (
            "read_index_answered",
            "Read index requests answered for followers.",
            &c.read_index_answered,
        ),
        (
            "read_index_vouched",
            "Read index requests answered without a round: the asker's vote confirmed the leader.",
            &c.read_index_vouched,
        ),
        (
            "read_vote_checks",
            "Leadership checks for reads run by asking the voters' saved votes.",
            &c.read_vote_checks,
        ),
        (
            "read_vote_checks_confirmed",
            "Of those, the ones a quorum of saved votes confirmed (no heartbeat round).",
            &c.read_vote_checks_confirmed,
        ),
        ("watch_events_sent", "Watch events sent to clients.", &c.watch_events_sent),
        (
            "watch_event_responses_sent",
            "Watch responses that carried events (events per response: the batching).",
            &c.watch_event_responses_sent,
        ),
        (
            "watch_history_reads",
            "Reads of the store's history for watchers.",
            &c.watch_history_reads,
        ),
        (
            "watch_prev_reads",
            "Store reads of a previous key-value for watchers' prev_kv (shared by the watchers of a change).",
            &c.watch_prev_reads,
        ),
        (
            "reads_rejected",
            "Reads refused RESOURCE_EXHAUSTED by the read limits.",
            &c.reads_rejected,
        ),
        ("proposals", "Raft entries proposed by the write batcher.", &c.proposals),
        ("proposed_requests", "Client writes carried by those entries.", &c.proposed_requests),
        (
            "proposals_committed",
            "Proposals committed and applied (the write batcher's client_write returned).",
            &c.proposals_committed,
        ),
        (
            "proposals_failed",
            "Proposals that failed (not redirects or timeouts).",
            &c.proposals_failed,
        ),
        (
            "proposals_timed_out",
            "Proposals given up after the request timeout.",
            &c.proposals_timed_out,
        ),
        (
            "requests_abandoned",
            "Queued writes dropped unproposed: their caller had timed out.",
            &c.requests_abandoned,
        ),
        (
            "peer_messages_refused",
            "Peer messages refused before reaching Raft (non-member, bad term, malformed).",
            &c.peer_messages_refused,
        ),
        (
            "runtime_stalls",
            "Times a 1 s timer fired over 1 s late: the process was not scheduled.",
            &c.runtime_stalls,
        ),
        (
            "leader_changes",
            "Leaders seen (a new leader id, counted once).",
            &c.leader_changes,
        ),
        ("became_leader", "Times this node became leader.", &c.became_leader),
        ("stepped_down", "Times this node stopped being leader.", &c.stepped_down),
        ("read_rounds", "Read barrier rounds (leadership checks).", &c.read_rounds),
        (
            "read_round_failures",
            "Read barrier rounds that lost quorum or failed.",
            &c.read_round_failures,
        ),
        ("read_round_timeouts", "Read barrier rounds that timed out.", &c.read_round_timeouts),
        (
            "forward_failures",
            "Requests forwarded to the leader that failed in transport or were refused unavailable.",
            &c.forward_failures,
        ),
        (
            "forward_batches",
            "Calls that carried writes forwarded to the leader, several per call under load.",
            &c.forward_batches,
        ),
        (
            "forward_catch_up_timeouts",
            "Forwarded writes answered before this member had applied them (it could not catch up in time).",
            &c.forward_catch_up_timeouts,
        ),
        (
            "probe_failures",
            "Readiness probes that could not reach the leader.",
            &c.probe_failures,
        ),
        (
            "livez_failures",
            "Liveness probes RaftCore did not answer within a second.",
            &c.livez_failures,
        ),
    ];
    for (name, help, value) in counters {
        counter(e, name, help, load(value))?;
    }
    Ok(())
}
