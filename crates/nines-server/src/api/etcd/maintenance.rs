//! etcd's `Maintenance` service: `Status` (what `etcdctl endpoint status`
//! shows) and `Alarm` (nines raises none: a full disk is answered per
//! request, see the MVCC issue's quota). The rest answers UNIMPLEMENTED.

use std::path::Path;
use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use tonic::{Response, Status};

use super::convert;
use crate::core::NodeCore;
use crate::error::ApiError;

/// The etcd API version nines speaks: clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Directory levels walked when sizing the data dir (it has two).
const MAX_DEPTH: usize = 4;

pub struct EtcdMaintenance {
    pub core: Arc<NodeCore>,
}

/// Bytes of the files under `dir`; unreadable entries count as 0 (a status
/// call must not fail because a snapshot was replaced mid-walk).
fn disk_usage(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => disk_usage(&e.path(), depth - 1),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

#[tonic::async_trait]
impl epb::maintenance_server::Maintenance for EtcdMaintenance {
    async fn status(
        &self,
        _request: tonic::Request<epb::StatusRequest>,
    ) -> Result<Response<epb::StatusResponse>, Status> {
        let m = self.core.raft.metrics().borrow().clone();
        let dir = self.core.config.data_dir.clone();
        let db_size = tokio::task::spawn_blocking(move || disk_usage(&dir, MAX_DEPTH))
            .await
            .map_err(|e| ApiError::Internal(format!("sizing the data dir: {e}")))?;
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
            db_size_in_use: db_size as i64,
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

    async fn alarm(
        &self,
        request: tonic::Request<epb::AlarmRequest>,
    ) -> Result<Response<epb::AlarmResponse>, Status> {
        use epb::alarm_request::AlarmAction;
        let action = AlarmAction::try_from(request.get_ref().action)
            .map_err(|_| ApiError::InvalidRequest("unknown alarm action".into()))?;
        if action != AlarmAction::Get {
            return Err(Status::unimplemented(
                "nines raises no alarms: there is none to activate or disarm",
            ));
        }
        let header = convert::header(self.core.header(self.core.reader.revision()));
        Ok(Response::new(epb::AlarmResponse {
            header: Some(header),
            alarms: Vec::new(),
        }))
    }
}
