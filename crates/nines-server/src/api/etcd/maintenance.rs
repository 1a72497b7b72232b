//! etcd's `Maintenance` service: `Status` (what `etcdctl endpoint status`
//! shows), `Alarm` (nines raises none: over the quota, writes that add
//! data answer RESOURCE_EXHAUSTED until compaction frees space, with no
//! alarm to disarm; see `NodeCore::check_quota`), `HashKV`, `MoveLeader`
//! `Defragment` and `Snapshot` (see `snapshot.rs`). The rest (Hash,
//! Downgrade) answers UNIMPLEMENTED.

use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use tonic::{Response, Status};

use epb::maintenance_client::MaintenanceClient;

use super::convert;
use crate::api::forward::{self, is_forwarded};
use crate::core::{NodeCore, Routed};
use crate::error::ApiError;

/// The etcd API version nines speaks: clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct EtcdMaintenance {
    pub core: Arc<NodeCore>,
}

#[tonic::async_trait]
impl epb::maintenance_server::Maintenance for EtcdMaintenance {
    async fn status(
        &self,
        _request: tonic::Request<epb::StatusRequest>,
    ) -> Result<Response<epb::StatusResponse>, Status> {
        // Unchecked, as in etcd: health checks and tools read it.
        let m = self.core.raft.metrics().borrow().clone();
        // etcd's db size is its backend file, WAL excluded: here the
        // state dir. In use: the data the store holds (what the quota limits).
        let db_size = self.core.db_size().await?;
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.core.id);
        let header = convert::header(self.core.header(self.core.reader.revision()));
        Ok(Response::new(epb::StatusResponse {
            header: Some(header),
            version: ETCD_API_VERSION.to_string(),
            db_size: db_size as i64,
            db_size_in_use: self.core.reader.data_bytes() as i64,
            leader: m.current_leader.unwrap_or(0),
            // openraft's metrics carry no commit index; the applied one is
            // at most a batch behind it.
            raft_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            is_learner,
            storage_version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }))
    }

    /// nines raises no alarms, so there is none to list, and activating or
    /// disarming one changes nothing: answered OK, as etcd answers a
    /// disarm of an alarm that is not raised.
    async fn alarm(
        &self,
        request: tonic::Request<epb::AlarmRequest>,
    ) -> Result<Response<epb::AlarmResponse>, Status> {
        self.core.admin(request.metadata())?;
        use epb::alarm_request::AlarmAction;
        AlarmAction::try_from(request.get_ref().action)
            .map_err(|_| ApiError::InvalidRequest("unknown alarm action".into()))?;
        let header = convert::header(self.core.header(self.core.reader.revision()));
        Ok(Response::new(epb::AlarmResponse {
            header: Some(header),
            alarms: Vec::new(),
        }))
    }

    /// etcd's defragment rewrites its bolt file to return freed pages to
    /// the filesystem. nines needs none: sled reuses and frees space itself
    /// and the compaction sweep deletes dropped records. Answered OK so
    /// tools that defragment after compacting keep working.
    async fn defragment(
        &self,
        request: tonic::Request<epb::DefragmentRequest>,
    ) -> Result<Response<epb::DefragmentResponse>, Status> {
        self.core.admin(request.metadata())?;
        let header = convert::header(self.core.header(self.core.reader.revision()));
        Ok(Response::new(epb::DefragmentResponse {
            header: Some(header),
        }))
    }

    async fn hash_kv(
        &self,
        request: tonic::Request<epb::HashKvRequest>,
    ) -> Result<Response<epb::HashKvResponse>, Status> {
        self.core.admin(request.metadata())?;
        let asked = request.get_ref().revision;
        let hashed = self.core.hash_kv(asked).await?;
        // The current revision when hashed: the one hashed if 0 was asked.
        let current = if asked <= 0 {
            hashed.revision
        } else {
            self.core.reader.revision()
        };
        let header = convert::header(self.core.header(current));
        Ok(Response::new(epb::HashKvResponse {
            header: Some(header),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.revision,
        }))
    }

    /// Any member serves it, from its own applied state.
    async fn snapshot(
        &self,
        request: tonic::Request<epb::SnapshotRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<epb::SnapshotResponse>>, Status> {
        self.core.admin(request.metadata())?;
        super::snapshot::stream(&self.core).await.map(Response::new)
    }

    /// etcd requires the call to reach the leader; nines runs it on the
    /// target (which campaigns), so any member forwards it there.
    async fn move_leader(
        &self,
        request: tonic::Request<epb::MoveLeaderRequest>,
    ) -> Result<Response<epb::MoveLeaderResponse>, Status> {
        self.core.admin(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let m = request.into_inner();
        match self.core.transfer_leader(m.target_id, forwarded).await? {
            Routed::Local(()) => {
                let header = convert::header(self.core.header(self.core.reader.revision()));
                Ok(Response::new(epb::MoveLeaderResponse {
                    header: Some(header),
                }))
            }
            Routed::Forward(target) => {
                let call = |ch, r| async move { MaintenanceClient::new(ch).move_leader(r).await };
                forward::to_member(&self.core, &target, m, call).await
            }
        }
    }
}
