//! NodeCore's membership operations, shared by `nines.v1.Admin` and
//! etcd's Cluster and Maintenance services: each runs on the leader (or
//! says where the leader is, for the handler to forward), checks the rules
//! in `membership`, then asks openraft for the change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nines_types::{Node, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership};

use crate::core::{NodeCore, Routed};
use crate::error::ApiError;
use crate::membership::{self, AddLearner, MembershipError, Removal};
use crate::network::peers;

/// Upper bound on a probe of a candidate member. A live node answers in
/// milliseconds; refused connections are retried until then, because an
/// operator may add a node right after starting it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a promotion waits for a learner to get in sync before it is
/// refused: a learner added a moment ago has matched nothing yet.
const PROMOTE_SYNC_WAIT: Duration = Duration::from_secs(3);

/// A membership check and the change it allowed must not interleave with
/// another change on this node, or both could pass against the same view.
static CHANGE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Change = ChangeMembers<NodeId, Node>;

impl NodeCore {
    /// The effective (latest, maybe uncommitted) membership.
    pub fn membership(&self) -> Membership<NodeId, Node> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().clone()
    }

    /// The membership as of everything this member has applied. openraft
    /// publishes its metrics (the membership among them) between rounds of
    /// its core loop, while the state machine applies on its own task: a
    /// reader woken by an apply could read the membership from before a
    /// change it had just applied (a linearizable member list on a member
    /// catching up missed a learner added before the call, once in ten
    /// test-suite runs). So wait until the metrics have caught up with the
    /// store's applied index first.
    pub async fn applied_membership(&self) -> Result<Membership<NodeId, Node>, ApiError> {
        let applied = self.reader.last_applied().map(|l| l.index);
        let metrics = self
            .raft
            .wait(Some(self.timeout()))
            .applied_index_at_least(applied, "membership of the applied index")
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::ShuttingDown => ApiError::ShuttingDown,
                _ => ApiError::Timeout(self.timeout()),
            })?;
        Ok(metrics.membership_config.membership().clone())
    }

    /// Adds `id` at `node` as a learner once it proved to be that node
    /// (nines' own add and `--join`). Idempotent; a member already at that
    /// peer address gets the client address it reports.
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: Node,
        forwarded: bool,
    ) -> Result<Routed<()>, ApiError> {
        membership::validate_member(id, &node.raft_addr, &node.api_addr)?;
        if let Some(leader) = self.leader_elsewhere(forwarded)? {
            return Ok(Routed::Forward(leader));
        }
        let _guard = self.change_lock().await?;
        let kind = membership::check_add_learner(&self.membership(), id, &node)?;
        if kind == AddLearner::AlreadyPresent {
            return Ok(Routed::Local(()));
        }
        // Never replicate to an address until it proved to be that node.
        self.probe(id, &node.raft_addr).await?;
        if kind == AddLearner::SetClientAddr {
            return self
                .change(Change::SetNodes(BTreeMap::from([(id, node)])), forwarded)
                .await;
        }
        let timeout = self.timeout() * 6;
        let added = tokio::time::timeout(timeout, self.raft.add_learner(id, node, true))
            .await
            .map_err(|_| ApiError::Timeout(timeout))?;
        self.membership_result(added, forwarded)
    }

    /// etcd's MemberAdd: a member known only by its peer URL, with an id
    /// this leader assigns. Returns the new id.
    ///
    /// Unlike `add_learner` there is no probe: as in etcd, a member is added
    /// before it starts (it then starts with `--join`). A wrong address
    /// costs nothing: the peer port refuses messages meant for another id.
    ///
    /// Its client address stays empty until the member starts and reports
    /// it (`--join` calls `add_learner`, which sets it), as an etcd member
    /// publishes its client URLs once started: only the member knows where
    /// it serves clients, and the operator gave nothing but the peer URL.
    pub async fn add_member(
        &self,
        peer_urls: &[String],
        is_learner: bool,
        forwarded: bool,
    ) -> Result<Routed<NodeId>, ApiError> {
        let raft_addr =
            membership::peer_addr_of(peer_urls, self.config.tls.peer_scheme() == "https")?;
        if let Some(leader) = self.leader_elsewhere(forwarded)? {
            return Ok(Routed::Forward(leader));
        }
        let _guard = self.change_lock().await?;
        let current = self.membership();
        membership::check_room(&current)?;
        membership::check_peer_addr_free(&current, &raft_addr, 0)?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = membership::new_member_id(&current, &raft_addr, self.cluster_id, seed);
        let mut goal = membership::last_config(&current);
        goal.insert(id);
        if !is_learner {
            // etcd adds a voter at once if the started members stay a quorum.
            membership::check_live_quorum(&current, &goal, &self.live_nodes())?;
        }
        let timeout = self.timeout() * 6;
        let added = tokio::time::timeout(
            timeout,
            self.raft.add_learner(id, Node::new(raft_addr, ""), false),
        )
        .await
        .map_err(|_| ApiError::Timeout(timeout))?;
        // Not forwarded on a leader change from here on: a second leader
        // would add a second member.
        self.here(self.membership_result(added, true)?)?;
        if !is_learner {
            let changed = self.change(Change::ReplaceAllVoters(goal), true).await?;
            self.here(changed)?;
        }
        Ok(Routed::Local(id))
    }

    /// Promotes learner `id` once it is in sync (etcd's rule); a voter is
    /// refused with `MembershipError::NotLearner`.
    pub async fn promote(&self, id: NodeId, forwarded: bool) -> Result<Routed<()>, ApiError> {
        if let Some(leader) = self.leader_elsewhere(forwarded)? {
            return Ok(Routed::Forward(leader));
        }
        let _guard = self.change_lock().await?;
        let change = self.await_promotable(id).await?;
        self.change(change, forwarded).await
    }

    pub async fn remove_member(&self, id: NodeId, forwarded: bool) -> Result<Routed<()>, ApiError> {
        if let Some(leader) = self.leader_elsewhere(forwarded)? {
            return Ok(Routed::Forward(leader));
        }
        let _guard = self.change_lock().await?;
        let current = self.membership();
        let change = match membership::removal(&current, id)? {
            Removal::Voter(goal) => {
                membership::check_live_quorum(&current, &goal, &self.live_nodes())?;
                Change::ReplaceAllVoters(goal)
            }
            Removal::Learner => Change::RemoveNodes(BTreeSet::from([id])),
        };
        self.change(change, forwarded).await
    }

    /// Member `id`'s client address as that member reports it (see
    /// `api::admin::publish`). The leader only: the member retries.
    pub async fn publish_client_addr(
        &self,
        id: NodeId,
        api_addr: &str,
        forwarded: bool,
    ) -> Result<Routed<()>, ApiError> {
        if let Some(leader) = self.leader_elsewhere(forwarded)? {
            return Ok(Routed::Forward(leader));
        }
        let _guard = self.change_lock().await?;
        let current = self.membership();
        let existing = current
            .get_node(&id)
            .ok_or(MembershipError::NotMember(id))?;
        if existing.api_addr == api_addr {
            return Ok(Routed::Local(()));
        }
        membership::validate_member(id, &existing.raft_addr, api_addr)?;
        let node = Node::new(existing.raft_addr.clone(), api_addr);
        self.change(Change::SetNodes(BTreeMap::from([(id, node)])), forwarded)
            .await
    }

    /// etcd's MemberUpdate: moves member `id` to another peer address (its
    /// client address stays). Not probed, as in etcd: the member is usually
    /// restarted on the new address after the update.
    pub async fn update_peer_addr(
        &self,
        id: NodeId,
        peer_urls: &[String],
        forwarded: bool,
    ) -> Result<Routed<()>, ApiError> {
        let raft_addr =
            membership::peer_addr_of(peer_urls, self.config.tls.peer_scheme() == "https")?;
        if let Some(leader) = self.leader_elsewhere(forwarded)? {
            return Ok(Routed::Forward(leader));
        }
        let _guard = self.change_lock().await?;
        let current = self.membership();
        let node = membership::updated_node(&current, id, &raft_addr)?;
        if current.get_node(&id) == Some(&node) {
            return Ok(Routed::Local(()));
        }
        self.change(Change::SetNodes(BTreeMap::from([(id, node)])), forwarded)
            .await
    }

    /// Makes voter `target` the leader. Runs on the target (the handler
    /// forwards there): openraft 0.9 has no leader transfer, but a voter
    /// that campaigns with an up-to-date log wins the next term and the old
    /// leader steps down.
    pub async fn transfer_leader(
        &self,
        target: NodeId,
        forwarded: bool,
    ) -> Result<Routed<()>, ApiError> {
        let current = self.membership();
        if !current.voter_ids().any(|v| v == target) {
            return Err(ApiError::Precondition(format!(
                "etcdserver: bad leader transferee: node {target} is not a voter"
            )));
        }
        if target != self.id {
            let node = current.get_node(&target).cloned();
            return match node {
                Some(node) if !forwarded => Ok(Routed::Forward(node)),
                _ => Err(ApiError::Precondition(
                    "the transfer was forwarded to the wrong node".into(),
                )),
            };
        }
        let (term, leader) = {
            let m = self.raft.metrics().borrow().clone();
            (m.current_term, m.current_leader)
        };
        if leader == Some(self.id) {
            return Ok(Routed::Local(()));
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        let wait = Duration::from_millis(self.config.raft.election_timeout_max * 10);
        let m = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_term > term && m.current_leader.is_some(),
                "leader after transfer",
            )
            .await
            .map_err(|_| ApiError::Timeout(wait))?;
        match m.current_leader {
            Some(id) if id == self.id => Ok(Routed::Local(())),
            Some(other) => Err(ApiError::Precondition(format!(
                "node {target} campaigned but node {other} won the election; retry"
            ))),
            None => Err(ApiError::Precondition(format!(
                "node {target} campaigned but no leader is known yet; retry"
            ))),
        }
    }

    /// Membership changes are decided on the leader's view: a follower's
    /// may lag behind a change that was just committed. None here.
    fn leader_elsewhere(&self, forwarded: bool) -> Result<Option<Node>, ApiError> {
        let leader_id = self.raft.metrics().borrow().current_leader;
        if leader_id == Some(self.id) {
            return Ok(None);
        }
        let (id, node) = match self.leader() {
            Some((id, node)) => (Some(id), Some(node)),
            None => (None, None),
        };
        match self.redirect::<()>(id, node, forwarded)? {
            Routed::Forward(node) => Ok(Some(node)),
            Routed::Local(()) => Ok(None),
        }
    }

    /// A step that must run on this node: a leader change is an error.
    fn here(&self, routed: Routed<()>) -> Result<(), ApiError> {
        match routed {
            Routed::Local(()) => Ok(()),
            Routed::Forward(_) => Err(ApiError::Precondition(
                "the leader changed during the membership change; check the member list".into(),
            )),
        }
    }

    async fn change(&self, change: Change, forwarded: bool) -> Result<Routed<()>, ApiError> {
        let timeout = self.timeout() * 6;
        let result = tokio::time::timeout(timeout, self.raft.change_membership(change, false))
            .await
            .map_err(|_| ApiError::Timeout(timeout))?;
        self.membership_result(result, forwarded)
    }

    fn membership_result<T>(
        &self,
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, Node>>>,
        forwarded: bool,
    ) -> Result<Routed<()>, ApiError> {
        match result {
            Ok(_) => Ok(Routed::Local(())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.redirect(f.leader_id, f.leader_node, forwarded)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ApiError::Precondition(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(ApiError::ShuttingDown),
        }
    }

    async fn change_lock(&self) -> Result<tokio::sync::MutexGuard<'static, ()>, ApiError> {
        tokio::time::timeout(self.timeout(), CHANGE_LOCK.lock())
            .await
            .map_err(|_| {
                ApiError::Precondition("another membership change is still running".into())
            })
    }

    fn live_window(&self) -> Duration {
        membership::live_window(self.config.raft.election_timeout_max)
    }

    /// This node (the leader) and the peers that answered it recently.
    fn live_nodes(&self) -> BTreeSet<NodeId> {
        let mut live = self.peers.answered_within(self.live_window());
        live.insert(self.id);
        live
    }

    /// Proves that node `id` of this cluster listens at `addr`.
    async fn probe(&self, id: NodeId, addr: &str) -> Result<(), MembershipError> {
        // Leave the caller's deadline room for the change itself.
        let timeout = PROBE_TIMEOUT.min(self.timeout() * 3 / 4);
        let connector = self.pool.peer_connector();
        let reply = peers::probe(addr, id, self.cluster_id, connector, timeout)
            .await
            .map_err(|e| MembershipError::ProbeFailed {
                id,
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        membership::check_probe_reply(id, addr, self.cluster_id, reply.id, reply.cluster_id)
    }

    fn check_promote(&self, id: NodeId) -> Result<Change, MembershipError> {
        let metrics = self.raft.metrics().borrow().clone();
        let current = metrics.membership_config.membership();
        let goal = membership::promote_goal(current, id)?;
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten());
        membership::check_in_sync(
            id,
            matched,
            metrics.last_log_index,
            self.peers.since_answer(id),
            self.live_window(),
        )?;
        membership::check_live_quorum(current, &goal, &self.live_nodes())?;
        Ok(Change::ReplaceAllVoters(goal))
    }

    /// `check_promote`, retried for a while when only the learner's progress
    /// is missing.
    async fn await_promotable(&self, id: NodeId) -> Result<Change, MembershipError> {
        let deadline = tokio::time::Instant::now() + PROMOTE_SYNC_WAIT.min(self.timeout() / 2);
        loop {
            match self.check_promote(id) {
                Err(MembershipError::NotInSync { .. } | MembershipError::Silent { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                result => return result,
            }
        }
    }
}
