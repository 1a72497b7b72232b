//! Liveness and readiness, as etcd's `/livez` and `/readyz` report them.
//!
//! Live: RaftCore runs and answers. openraft's metrics channel closes when
//! RaftCore exits (a storage error, a panic: the binary then exits too),
//! and a RaftCore that is blocked (the peer guard deadlock in the README
//! blocked the whole Raft runtime) answers no message: both fail here,
//! within `CORE_ANSWER`. A process that is not scheduled at all (SIGSTOP,
//! a hung host) cannot answer the HTTP request either: the prober's own
//! timeout is what reports it.
//!
//! Ready: this member can serve a linearizable request now. A leader is
//! known and in contact (a leader heard from a quorum, a follower from the
//! leader, within the limit past which writes are refused), this member
//! has applied nearly all the log (`READY_MAX_LAG`), and the store is not
//! over its quota (nines' NOSPACE: etcd raises that alarm there).

use std::sync::atomic::Ordering;
use std::time::Duration;

use nines_proto as pb;
use pb::admin_client::AdminClient;

use super::Counters;
use crate::core::NodeCore;
use crate::election::Election;

/// How long RaftCore (and, for a follower's readiness, the leader) may
/// take to answer a probe.
pub const CORE_ANSWER: Duration = Duration::from_secs(1);

/// Entries applied here may trail the leader's log by this many and the
/// member still counts as ready: enough for a member that keeps up under
/// load (writes are batched, many per entry), far less than what a member
/// restarted after missing minutes of writes, or installing a snapshot,
/// has to catch up on.
pub const READY_MAX_LAG: u64 = 1000;

/// Asks RaftCore for its commit index (kept for the metrics). Err with a
/// reason when it has stopped or does not answer within `CORE_ANSWER`.
pub async fn ask_core(core: &NodeCore) -> Result<Option<u64>, String> {
    // Reads only the channel's closed flag: no lock RaftCore could hold.
    if core.raft.metrics().has_changed().is_err() {
        return Err("the Raft core has stopped".into());
    }
    let asked = core
        .raft
        .with_raft_state(|state| state.committed.map(|l| l.index));
    match tokio::time::timeout(CORE_ANSWER, asked).await {
        Err(_) => Err(format!(
            "the Raft core did not answer within {} ms",
            CORE_ANSWER.as_millis()
        )),
        Ok(Err(fatal)) => Err(format!("the Raft core has stopped: {fatal}")),
        Ok(Ok(committed)) => {
            core.counters
                .commit_index
                .store(committed.unwrap_or(0), Ordering::Relaxed);
            Ok(committed)
        }
    }
}

pub async fn livez(core: &NodeCore) -> Result<(), String> {
    let alive = ask_core(core).await.map(|_| ());
    if alive.is_err() {
        Counters::inc(&core.counters.livez_failures);
    }
    alive
}

pub async fn readyz(core: &NodeCore, election: &Election) -> Result<(), String> {
    let committed = ask_core(core).await?.unwrap_or(0);
    let used = core.reader.data_bytes();
    let quota = core.config.quota_backend_bytes;
    if used > quota {
        return Err(format!(
            "alarm NOSPACE: the store holds {used} bytes, over the quota of {quota}"
        ));
    }
    let m = core.raft.metrics().borrow().clone();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    // Past this, `NodeCore::write` refuses writes on a leader, and a
    // follower's pre-vote starts an election.
    let limit = core.config.raft.election_timeout_max * 2;
    let Some(leader) = m.current_leader else {
        return Err("no leader".into());
    };
    let (target, of) = if leader == core.id {
        let quorum_ms = m.millis_since_quorum_ack;
        if quorum_ms.is_none_or(|ms| ms > limit) {
            return Err(format!(
                "leader without contact with a quorum for {} ms",
                quorum_ms.map_or("-".to_string(), |ms| ms.to_string())
            ));
        }
        (committed, "the commit index")
    } else {
        let since = election.contact.since();
        if since > Duration::from_millis(limit) {
            return Err(format!(
                "no contact with the leader {leader} for {} ms",
                since.as_millis()
            ));
        }
        // The follower's own commit index lags as far as its log does: only
        // the leader knows how far behind this member is.
        let last = leader_last_log(core).await.map_err(|e| {
            Counters::inc(&core.counters.probe_failures);
            format!("the leader {leader} did not answer: {e}")
        })?;
        (last.max(committed), "the leader's last log index")
    };
    caught_up(applied, target, of)
}

/// Ready when `applied` trails `target` (`of` names it) by at most
/// `READY_MAX_LAG` entries.
fn caught_up(applied: u64, target: u64, of: &str) -> Result<(), String> {
    let lag = target.saturating_sub(applied);
    if lag > READY_MAX_LAG {
        return Err(format!(
            "applied index {applied} is {lag} entries behind {of} {target} (ready within {READY_MAX_LAG})"
        ));
    }
    Ok(())
}

/// The leader's last log index, from its `Admin.RaftStatus`.
async fn leader_last_log(core: &NodeCore) -> Result<u64, String> {
    let Some((_, leader)) = core.leader() else {
        return Err("its address is unknown".into());
    };
    let channel = crate::api::forward::channel_to(core, &leader).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(pb::RaftStatusRequest {});
    request.set_timeout(CORE_ANSWER);
    let mut client = AdminClient::new(channel);
    let call = client.raft_status(request);
    match tokio::time::timeout(CORE_ANSWER, call).await {
        Err(_) => Err(format!("no answer within {} ms", CORE_ANSWER.as_millis())),
        Ok(Err(status)) => Err(status.message().to_string()),
        Ok(Ok(answer)) => Ok(answer.into_inner().last_log_index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_within_the_lag() {
        assert!(caught_up(5000, 5000, "x").is_ok());
        assert!(caught_up(4000, 5000, "x").is_ok());
        // A target behind what is applied (a stale answer) is no lag.
        assert!(caught_up(5000, 10, "x").is_ok());
        let err = caught_up(3999, 5000, "the commit index").unwrap_err();
        assert_eq!(
            err,
            "applied index 3999 is 1001 entries behind the commit index 5000 (ready within 1000)"
        );
    }
}
