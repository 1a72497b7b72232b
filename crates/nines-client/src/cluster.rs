//! Membership and per-member calls: etcd's Cluster and Maintenance, and
//! `nines.v1.Admin` for what etcd lacks.

use std::time::Duration;

use crate::auth::AuthChannel as Channel;
use nines_proto::admin_client::AdminClient;
use tonic::Code;

use crate::client::{timed, Client, Route};
use crate::error::ClientError;
use crate::proto::maintenance_client::MaintenanceClient;
use crate::proto::{self as pb, cluster_client::ClusterClient, v1};

impl Client {
    /// The members, as the leader sees them.
    pub async fn member_list(&self) -> Result<pb::MemberListResponse, ClientError> {
        let request = pb::MemberListRequest { linearizable: true };
        self.call(Route::Leader, request, |ch, req| async move {
            ClusterClient::new(ch).member_list(req).await
        })
        .await
    }

    /// Adds a node as a learner under its own id, once the leader probed
    /// its peer address (etcd's MemberAdd assigns the id itself); answers
    /// with the members after the change.
    pub async fn member_add_learner(
        &self,
        id: u64,
        raft_addr: &str,
        api_addr: &str,
    ) -> Result<pb::MemberListResponse, ClientError> {
        let request = v1::AddLearnerRequest {
            id,
            raft_addr: raft_addr.to_string(),
            api_addr: api_addr.to_string(),
        };
        self.call(Route::Leader, request, |ch, req| async move {
            AdminClient::new(ch).add_learner(req).await
        })
        .await?;
        self.member_list().await
    }

    /// Promotes a learner; answers with the members after the change.
    /// Promoting a voter is done already: a retry after a lost answer (etcd
    /// refuses it, "can only promote a learner member") reads the list.
    pub async fn member_promote(&self, id: u64) -> Result<pb::MemberListResponse, ClientError> {
        let refused = match self
            .call(
                Route::Leader,
                pb::MemberPromoteRequest { id },
                |ch, req| async move { ClusterClient::new(ch).member_promote(req).await },
            )
            .await
        {
            Ok(resp) => {
                return Ok(pb::MemberListResponse {
                    header: resp.header,
                    members: resp.members,
                })
            }
            Err(e) if e.code() == Code::FailedPrecondition => e,
            Err(e) => return Err(e),
        };
        let list = self.member_list().await?;
        if list.members.iter().any(|m| m.id == id && !m.is_learner) {
            Ok(list)
        } else {
            Err(refused)
        }
    }

    /// Removes a member; answers with the members after the change.
    /// Retries are safe: when the attempt that removed a listed member lost
    /// its answer, the retry hears "member not found" (etcd's answer to a
    /// second removal); the member being gone is then the success it is.
    pub async fn member_remove(&self, id: u64) -> Result<pb::MemberListResponse, ClientError> {
        let was_listed = listed(&self.member_list().await?, id);
        let result = self
            .call(
                Route::Leader,
                pb::MemberRemoveRequest { id },
                |ch, req| async move { ClusterClient::new(ch).member_remove(req).await },
            )
            .await;
        // The removed node may have been the leader we cached.
        self.inner.endpoints.set_leader(None);
        match result {
            Ok(resp) => Ok(pb::MemberListResponse {
                header: resp.header,
                members: resp.members,
            }),
            Err(e) if was_listed && e.code() == Code::NotFound => {
                let list = self.member_list().await?;
                if listed(&list, id) {
                    Err(e)
                } else {
                    Ok(list)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the leadership to `target_id` (etcd's MoveLeader).
    pub async fn transfer_leader(
        &self,
        target_id: u64,
    ) -> Result<pb::MoveLeaderResponse, ClientError> {
        let result = self
            .call(
                Route::Leader,
                pb::MoveLeaderRequest { target_id },
                |ch, req| async move { MaintenanceClient::new(ch).move_leader(req).await },
            )
            .await;
        self.inner.endpoints.set_leader(None);
        result
    }

    /// A channel to `endpoint`, added to the set if it is new.
    fn channel_of(&self, endpoint: &str) -> Result<Channel, ClientError> {
        let i = self.inner.endpoints.add(endpoint)?;
        Ok(self.inner.endpoints.get(i).channel.clone())
    }

    /// Status of one endpoint, without retries (that is the point of
    /// asking): etcd's Status and nines' Raft log positions, asked at once.
    pub async fn status_of(&self, endpoint: &str) -> Result<NodeStatus, ClientError> {
        let channel = self.channel_of(endpoint)?;
        let limit = self.inner.config.request_timeout;
        let mut maintenance = MaintenanceClient::new(channel.clone());
        let mut admin = AdminClient::new(channel);
        let (etcd, raft) = tokio::join!(
            maintenance.status(timed(pb::StatusRequest {}, limit)),
            admin.raft_status(timed(v1::RaftStatusRequest {}, limit)),
        );
        let etcd = etcd.map_err(ClientError::Status)?.into_inner();
        let raft = raft.map_err(ClientError::Status)?.into_inner();
        Ok(NodeStatus::of(etcd, raft))
    }

    /// etcd's HashKV on one endpoint, without retries: a checksum of that
    /// member's history at `revision` (0: its current one), equal on every
    /// member at the same revision and compaction. The member reads every
    /// retained record, so `limit` grows with the store, not the request
    /// timeout (600,000 revisions took longer than a 1 s one).
    pub async fn hash_kv_of(
        &self,
        endpoint: &str,
        revision: i64,
        limit: Duration,
    ) -> Result<pb::HashKvResponse, ClientError> {
        let channel = self.channel_of(endpoint)?;
        Ok(MaintenanceClient::new(channel)
            .hash_kv(timed(pb::HashKvRequest { revision }, limit))
            .await
            .map_err(ClientError::Status)?
            .into_inner())
    }

    /// Builds a snapshot on one endpoint.
    pub async fn snapshot_of(&self, endpoint: &str) -> Result<SnapshotBuilt, ClientError> {
        let channel = self.channel_of(endpoint)?;
        let request = timed(v1::SnapshotRequest {}, Duration::from_secs(90));
        let resp = AdminClient::new(channel)
            .snapshot(request)
            .await
            .map_err(ClientError::Status)?
            .into_inner();
        Ok(SnapshotBuilt {
            header: resp.header.map(|h| pb::ResponseHeader {
                cluster_id: h.cluster_id,
                member_id: h.member_id,
                revision: h.revision,
                raft_term: h.raft_term,
            }),
            snapshot_index: resp.snapshot_index,
        })
    }
}

/// A snapshot one member built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotBuilt {
    pub header: Option<pb::ResponseHeader>,
    /// The last log index the snapshot covers.
    pub snapshot_index: u64,
}

/// What one member says of itself: etcd's Status with the Raft log
/// positions etcd does not report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub header: Option<pb::ResponseHeader>,
    /// 0 when no leader is known.
    pub leader_id: u64,
    /// "leader", "follower", "candidate", "learner", "shutdown".
    pub state: String,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// The etcd API version the member speaks.
    pub version: String,
    /// Milliseconds since a quorum last acknowledged this leader; 0 on followers.
    pub millis_since_quorum_ack: u64,
    pub is_learner: bool,
    /// Bytes on disk of the state dir (etcd's DB SIZE).
    pub db_size: i64,
    /// Bytes of the records the store holds (etcd's DB SIZE IN USE).
    pub db_size_in_use: i64,
    /// Since the member's process started.
    pub uptime: Duration,
    /// Leaders the member has seen since start (each new leader id once).
    pub leader_changes: u64,
    /// Time since start without a leader in contact.
    pub leaderless: Duration,
}

impl NodeStatus {
    fn of(etcd: pb::StatusResponse, raft: v1::RaftStatusResponse) -> NodeStatus {
        NodeStatus {
            header: etcd.header,
            leader_id: etcd.leader,
            state: raft.state,
            last_log_index: raft.last_log_index,
            applied_index: etcd.raft_applied_index,
            snapshot_index: raft.snapshot_index,
            purged_index: raft.purged_index,
            version: etcd.version,
            millis_since_quorum_ack: raft.millis_since_quorum_ack,
            uptime: Duration::from_millis(raft.uptime_ms),
            leader_changes: raft.leader_changes,
            leaderless: Duration::from_millis(raft.leaderless_ms),
            is_learner: etcd.is_learner,
            db_size: etcd.db_size,
            db_size_in_use: etcd.db_size_in_use,
        }
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.header.as_ref().map_or(0, |h| h.member_id)
    }
}

fn listed(list: &pb::MemberListResponse, id: u64) -> bool {
    list.members.iter().any(|m| m.id == id)
}
