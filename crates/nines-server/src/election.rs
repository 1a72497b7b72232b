//! Elections with a pre-vote round (Raft thesis §9.6), run above openraft.
//!
//! openraft 0.9 has no pre-vote: a follower whose timer ran out (a SIGSTOP,
//! a brief partition, a stalled disk) campaigns at once at term + 1, and the
//! healthy leader steps down as soon as it sees that term (writes stalled
//! 0.12–0.25 s each time in the chaos runs). Here openraft's own election
//! timer is off (`runtime_config().elect(false)`), and this supervisor
//! decides when to campaign: only after a majority of every voter set
//! (joint included) answered a PreVote saying they too have lost the
//! leader and that our log is at least as up to date as theirs. A node that
//! cannot win never raises the term.
//!
//! Timing: a voter grants a pre-vote only when it has not heard from a
//! leader for the leader lease (openraft refuses real votes within it too,
//! `election_timeout_max`); a candidate tries after the lease plus a random
//! part of `max - min`, so one node usually goes first.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_log::LogStore;
use nines_proto::raft_client::RaftClient;
use nines_proto::RaftRequest;
use nines_types::{codec, LogId, NodeId, Raft};
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::network::guard::LogOnce;
use crate::network::ChannelPool;

/// Asked of every voter before this node may campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term the candidate would campaign at.
    pub term: u64,
    pub last_log_id: Option<LogId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    pub term: u64,
    /// Why not, for the candidate's log.
    pub reason: String,
}

/// When this node last heard from a leader (an append or snapshot chunk
/// openraft accepted), as milliseconds since the node started.
pub struct Contact {
    start: Instant,
    last_ms: AtomicU64,
}

impl Default for Contact {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Contact {
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    pub fn since(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// What a voter knows when a pre-vote arrives.
pub struct Voter<'a> {
    pub state: ServerState,
    pub current_term: u64,
    pub last_log_id: Option<LogId>,
    pub voters: &'a BTreeSet<NodeId>,
    pub since_leader_contact: Duration,
    /// On a leader: time since a quorum acknowledged it.
    pub since_quorum_ack: Option<Duration>,
    /// On a leader: time since it became leader.
    pub leader_for: Option<Duration>,
    pub lease: Duration,
}

/// The pre-vote rule: grant only to a voter whose log is at least ours,
/// whose term would not go backwards, and only when we too have lost the
/// leader (or, as leader, our quorum).
pub fn decide(req: &PreVoteRequest, me: &Voter) -> PreVoteResponse {
    let refuse = |reason: String| PreVoteResponse {
        granted: false,
        term: me.current_term,
        reason,
    };
    if !me.voters.contains(&req.candidate) {
        return refuse(format!("node {} is not a voter", req.candidate));
    }
    if req.term < me.current_term {
        return refuse(format!("term {} is behind {}", req.term, me.current_term));
    }
    if req.last_log_id < me.last_log_id {
        return refuse(format!(
            "log {:?} is behind {:?}",
            req.last_log_id, me.last_log_id
        ));
    }
    match me.state {
        ServerState::Leader if me.since_quorum_ack.is_some_and(|t| t < me.lease) => {
            return refuse("this leader has its quorum".into());
        }
        // A new leader has had no time for a quorum ack yet: granting here
        // let two live nodes (the third one down) depose each other forever.
        ServerState::Leader if me.leader_for.is_some_and(|t| t < me.lease) => {
            return refuse("this leader was just elected".into());
        }
        ServerState::Leader => {}
        _ if me.since_leader_contact < me.lease => {
            return refuse(format!(
                "heard from the leader {} ms ago",
                me.since_leader_contact.as_millis()
            ));
        }
        _ => {}
    }
    PreVoteResponse {
        granted: true,
        term: me.current_term,
        reason: String::new(),
    }
}

/// True when `granted` holds a majority of every voter set.
pub fn has_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
}

/// Everything the supervisor and the PreVote handler share.
pub struct Election {
    pub me: NodeId,
    pub cluster_id: u64,
    pub raft: Raft,
    pub log: LogStore,
    pub pool: ChannelPool,
    /// Last contact with a leader, or the last vote this node granted
    /// (granting a vote restarts the election timer, as in Raft).
    pub contact: Contact,
    /// When this node last became leader (the supervisor keeps it).
    leader_since: std::sync::Mutex<Option<Instant>>,
    /// Held from the supervisor's last look before campaigning until the
    /// campaign is queued to RaftCore, and by the vote and leader-message
    /// handlers around their call into openraft: a vote granted, or a new
    /// leader heard, in between made this node campaign anyway at the next
    /// term and depose the leader it had just elected (a chaos run saw
    /// 795 ms without a leader from that).
    pub turn: tokio::sync::Mutex<()>,
    pub lease: Duration,
    /// Random extra wait before a campaign: `election_timeout_max - min`.
    pub spread: Duration,
    log_once: LogOnce,
}

impl Election {
    pub fn new(
        me: NodeId,
        cluster_id: u64,
        raft: Raft,
        log: LogStore,
        pool: ChannelPool,
        config: &openraft::Config,
    ) -> Self {
        // At once, not when the supervisor first runs: openraft's timer
        // must never start an election of its own, not even at startup.
        raft.runtime_config().elect(false);
        Self {
            me,
            cluster_id,
            raft,
            log,
            pool,
            contact: Contact::default(),
            leader_since: std::sync::Mutex::new(None),
            turn: tokio::sync::Mutex::new(()),
            lease: Duration::from_millis(config.election_timeout_max),
            spread: Duration::from_millis(
                config.election_timeout_max - config.election_timeout_min,
            ),
            log_once: LogOnce::new(Duration::from_secs(5)),
        }
    }

    /// Answers a peer's pre-vote from this node's current state.
    pub fn answer(&self, req: &PreVoteRequest) -> PreVoteResponse {
        let m = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let last_log_id = self.log.last_log_id().ok().flatten();
        let me = Voter {
            state: m.state,
            current_term: m.current_term,
            last_log_id,
            voters: &voters,
            since_leader_contact: self.contact.since(),
            since_quorum_ack: m.millis_since_quorum_ack.map(Duration::from_millis),
            leader_for: self.leader_since().map(|t| t.elapsed()),
            lease: self.lease,
        };
        decide(req, &me)
    }

    fn leader_since(&self) -> Option<Instant> {
        *self.leader_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_leadership(&self, leader: bool) {
        let mut since = self.leader_since.lock().unwrap_or_else(|e| e.into_inner());
        match (leader, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => *since = None,
            _ => {}
        }
    }

    /// Takes over from openraft's election timer; runs until the node stops.
    pub async fn run(self: Arc<Self>) {
        self.raft.runtime_config().elect(false);
        let mut last_attempt: Option<Instant> = None;
        let draw = || self.lease + self.spread.mul_f64(rand_unit());
        let mut wait = draw();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Drawn while the leader is heard from and then kept: drawing on
            // every tick would make the wait the minimum of many draws, and
            // the voters would all campaign at the lease and split the vote.
            if self.contact.since() < self.lease {
                wait = draw();
            }
            let m = self.raft.metrics().borrow().clone();
            if m.state == ServerState::Shutdown {
                return;
            }
            if m.running_state.is_err() {
                return;
            }
            self.note_leadership(m.state == ServerState::Leader);
            if m.state == ServerState::Leader {
                // A leader hears from itself: nothing is leaderless here
                // (the peer guard admits unknown leaders only on nodes
                // that have heard from none for a while).
                self.contact.touch();
            }
            let membership = m.membership_config.membership();
            if m.state == ServerState::Leader || !membership.voter_ids().any(|v| v == self.me) {
                continue;
            }
            if self.contact.since() < wait || last_attempt.is_some_and(|t| t.elapsed() < wait) {
                continue;
            }
            let round_start = Instant::now();
            last_attempt = Some(round_start);
            wait = draw();
            let configs = membership.get_joint_config().clone();
            let (granted, refusals) = self.round(&m, &configs).await;
            // While we asked, another candidate may have won our vote or a
            // leader may have reached us: campaigning now would depose it.
            // Neither can happen from here on until the campaign is queued.
            let _turn = self.turn.lock().await;
            let now = self.raft.metrics().borrow().clone();
            let moved_on =
                now.current_term != m.current_term || self.contact.since() < round_start.elapsed();
            if moved_on {
                continue;
            }
            if has_quorum(&configs, &granted) {
                tracing::info!(
                    node = self.me,
                    term = m.current_term,
                    leader = ?m.current_leader,
                    last_log = ?m.last_log_index,
                    applied = ?m.last_applied.map(|l| l.index),
                    ?granted,
                    "pre-vote won; campaigning for term {}",
                    m.current_term + 1
                );
                if self.raft.trigger().elect().await.is_err() {
                    return;
                }
                // If this campaign splits the vote, no leader will reach us:
                // try again sooner than a leader's silence is waited for (a
                // pre-vote round still guards a leader that did win).
                wait = self.spread.mul_f64(rand_unit()) + RETRY_FLOOR;
            } else if self.log_once.should_say("pre_vote_lost") {
                tracing::info!(
                    node = self.me,
                    term = m.current_term,
                    leader = ?m.current_leader,
                    ?granted,
                    "pre-vote lost, not campaigning: {} (said once per 5 s)",
                    refusals.join("; ")
                );
            }
        }
    }

    /// Asks every other voter at once; returns who granted (this node
    /// included) and why the others did not.
    async fn round(
        self: &Arc<Self>,
        m: &openraft::RaftMetrics<NodeId, nines_types::Node>,
        configs: &[BTreeSet<NodeId>],
    ) -> (BTreeSet<NodeId>, Vec<String>) {
        let req = PreVoteRequest {
            candidate: self.me,
            term: m.current_term + 1,
            last_log_id: self.log.last_log_id().ok().flatten(),
        };
        let Ok(data) = codec::encode(&req) else {
            return (BTreeSet::new(), vec!["cannot encode".into()]);
        };
        let peers: BTreeSet<NodeId> = configs.iter().flatten().copied().collect();
        let membership = m.membership_config.membership();
        let mut asks = tokio::task::JoinSet::new();
        for id in peers.into_iter().filter(|id| *id != self.me) {
            let addr = membership.get_node(&id).map(|n| n.raft_addr.clone());
            let (this, data) = (self.clone(), data.clone());
            asks.spawn(async move { (id, this.ask(id, addr, data).await) });
        }
        let mut granted = BTreeSet::from([self.me]);
        let mut refusals = Vec::new();
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok((id, Ok(resp))) if resp.granted => {
                    granted.insert(id);
                    // Done as soon as a quorum agrees: a paused voter's
                    // answer (or timeout) must not delay the campaign.
                    if has_quorum(configs, &granted) {
                        break;
                    }
                }
                Ok((id, Ok(resp))) => refusals.push(format!("node {id}: {}", resp.reason)),
                Ok((id, Err(e))) => refusals.push(format!("node {id}: {e}")),
                Err(e) => refusals.push(format!("pre-vote task: {e}")),
            }
        }
        (granted, refusals)
    }

    async fn ask(
        &self,
        target: NodeId,
        addr: Option<String>,
        data: Vec<u8>,
    ) -> Result<PreVoteResponse, String> {
        let addr = addr.ok_or("no address")?;
        let channel = self.pool.peer(&addr).map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(RaftRequest {
            target,
            cluster_id: self.cluster_id,
            data,
        });
        request.set_timeout(self.lease);
        let reply = RaftClient::new(channel)
            .pre_vote(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        codec::decode(&reply.into_inner().data).map_err(|e| e.to_string())
    }
}

/// The least wait before campaigning again after a campaign of our own.
const RETRY_FLOOR: Duration = Duration::from_millis(30);

/// A uniform number in [0, 1) from the clock's low bits: good enough to
/// spread candidates, and needs no generator state.
fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    mixed as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(voters: &BTreeSet<NodeId>, since_contact_ms: u64) -> Voter<'_> {
        Voter {
            state: ServerState::Follower,
            current_term: 5,
            last_log_id: log(5, 100),
            voters,
            since_leader_contact: Duration::from_millis(since_contact_ms),
            since_quorum_ack: None,
            leader_for: None,
            lease: Duration::from_millis(300),
        }
    }

    fn req(candidate: NodeId, term: u64, last: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest {
            candidate,
            term,
            last_log_id: last,
        }
    }

    #[test]
    fn a_follower_with_a_live_leader_refuses() {
        let voters = BTreeSet::from([1, 2, 3]);
        assert!(!decide(&req(2, 6, log(5, 100)), &follower(&voters, 50)).granted);
        assert!(decide(&req(2, 6, log(5, 100)), &follower(&voters, 400)).granted);
    }

    #[test]
    fn a_healthy_leader_refuses_and_a_cut_off_one_grants() {
        let voters = BTreeSet::from([1, 2, 3]);
        let mut leader = follower(&voters, 10_000);
        leader.state = ServerState::Leader;
        leader.since_quorum_ack = Some(Duration::from_millis(40));
        assert!(!decide(&req(2, 6, log(5, 100)), &leader).granted);
        leader.since_quorum_ack = Some(Duration::from_millis(900));
        assert!(decide(&req(2, 6, log(5, 100)), &leader).granted);
        // Just elected, no quorum ack yet: refuse.
        leader.since_quorum_ack = None;
        leader.leader_for = Some(Duration::from_millis(20));
        assert!(!decide(&req(2, 6, log(5, 100)), &leader).granted);
    }

    #[test]
    fn behind_logs_terms_and_non_voters_are_refused() {
        let voters = BTreeSet::from([1, 2, 3]);
        let me = follower(&voters, 10_000);
        assert!(!decide(&req(2, 6, log(5, 99)), &me).granted);
        assert!(!decide(&req(2, 6, log(4, 200)), &me).granted);
        assert!(!decide(&req(2, 4, log(5, 100)), &me).granted);
        assert!(!decide(&req(9, 6, log(5, 100)), &me).granted);
        assert!(decide(&req(2, 6, log(6, 1)), &me).granted);
    }

    #[test]
    fn quorum_needs_a_majority_of_every_config() {
        let a = BTreeSet::from([1, 2, 3]);
        let b = BTreeSet::from([3, 4, 5]);
        assert!(has_quorum(
            std::slice::from_ref(&a),
            &BTreeSet::from([1, 2])
        ));
        assert!(!has_quorum(std::slice::from_ref(&a), &BTreeSet::from([1])));
        assert!(!has_quorum(
            &[a.clone(), b.clone()],
            &BTreeSet::from([1, 2, 3])
        ));
        assert!(has_quorum(&[a, b], &BTreeSet::from([1, 3, 4])));
        assert!(!has_quorum(&[], &BTreeSet::from([1])));
    }
}
