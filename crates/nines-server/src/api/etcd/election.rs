//! etcd's `Election` service (`v3electionpb`): thin handlers over
//! `coord::Election`, writing through the lock service's `CoreKv`.

use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_proto::etcd::v3electionpb as vpb;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Response, Status};

use super::convert;
use super::lock::CoreKv;
use crate::coord::{self, LeaderKey};
use crate::core::NodeCore;
use crate::error::ApiError;

/// Leader states queued per Observe stream before its task waits for the
/// client.
const OBSERVE_QUEUE: usize = 4;

pub struct EtcdElection {
    pub core: Arc<NodeCore>,
    pub election: Arc<coord::Election<CoreKv>>,
}

impl EtcdElection {
    pub fn new(core: &Arc<NodeCore>) -> Self {
        let kv = CoreKv { core: core.clone() };
        let local = kv.local();
        EtcdElection {
            core: core.clone(),
            election: Arc::new(coord::Election { kv, local }),
        }
    }

    fn header(&self, revision: i64) -> Option<epb::ResponseHeader> {
        Some(convert::header(self.core.header(revision)))
    }
}

/// etcd's ErrMissingLeaderKey.
fn leader_key(leader: Option<vpb::LeaderKey>) -> Result<LeaderKey, ApiError> {
    let leader = leader
        .ok_or_else(|| ApiError::InvalidRequest("\"leader\" field must be provided".to_string()))?;
    Ok(LeaderKey {
        name: leader.name,
        key: leader.key,
        rev: leader.rev,
        lease: leader.lease,
    })
}

#[tonic::async_trait]
impl vpb::election_server::Election for EtcdElection {
    async fn campaign(
        &self,
        request: tonic::Request<vpb::CampaignRequest>,
    ) -> Result<Response<vpb::CampaignResponse>, Status> {
        super::lock::guard_prefix(
            &self.core,
            request.metadata(),
            &request.get_ref().name,
            true,
        )?;
        let m = request.into_inner();
        let (leader, revision) = self.election.campaign(&m.name, m.lease, &m.value).await?;
        Ok(Response::new(vpb::CampaignResponse {
            header: self.header(revision),
            leader: Some(vpb::LeaderKey {
                name: leader.name,
                key: leader.key,
                rev: leader.rev,
                lease: leader.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: tonic::Request<vpb::ProclaimRequest>,
    ) -> Result<Response<vpb::ProclaimResponse>, Status> {
        let name = request.get_ref().leader.as_ref().map(|l| l.name.clone());
        super::lock::guard_prefix(
            &self.core,
            request.metadata(),
            &name.unwrap_or_default(),
            true,
        )?;
        let caller = self.core.caller(request.metadata())?;
        let m = request.into_inner();
        let leader = leader_key(m.leader)?;
        // The write goes to the key the caller names, which need not be
        // under the election's prefix: as etcd (whose election service
        // writes with the caller's credentials), it needs write there.
        self.core.check_keys(&caller, true, &leader.key, &[])?;
        let revision = self.election.proclaim(&leader, &m.value).await?;
        Ok(Response::new(vpb::ProclaimResponse {
            header: self.header(revision),
        }))
    }

    async fn leader(
        &self,
        request: tonic::Request<vpb::LeaderRequest>,
    ) -> Result<Response<vpb::LeaderResponse>, Status> {
        super::lock::guard_prefix(
            &self.core,
            request.metadata(),
            &request.get_ref().name,
            false,
        )?;
        let observed = self.election.leader(&request.get_ref().name).await?;
        Ok(Response::new(vpb::LeaderResponse {
            header: self.header(observed.revision),
            kv: Some(convert::kv(observed.kv)),
        }))
    }

    async fn observe(
        &self,
        request: tonic::Request<vpb::LeaderRequest>,
    ) -> Result<Response<BoxStream<vpb::LeaderResponse>>, Status> {
        super::lock::guard_prefix(
            &self.core,
            request.metadata(),
            &request.get_ref().name,
            false,
        )?;
        let mut observer = self.election.observe(&request.get_ref().name).await?;
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE);
        let core = self.core.clone();
        // The stream ends when the client goes away (the receiver is
        // dropped) or after an error is sent.
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = observer.next() => next,
                    () = tx.closed() => return,
                };
                let response = next.map_err(Status::from).map(|o| vpb::LeaderResponse {
                    header: Some(convert::header(core.header(o.revision))),
                    kv: Some(convert::kv(o.kv)),
                });
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: tonic::Request<vpb::ResignRequest>,
    ) -> Result<Response<vpb::ResignResponse>, Status> {
        let name = request.get_ref().leader.as_ref().map(|l| l.name.clone());
        super::lock::guard_prefix(
            &self.core,
            request.metadata(),
            &name.unwrap_or_default(),
            true,
        )?;
        let caller = self.core.caller(request.metadata())?;
        let leader = leader_key(request.into_inner().leader)?;
        // Resigning deletes the named key: write there too (see proclaim).
        self.core.check_keys(&caller, true, &leader.key, &[])?;
        let revision = self.election.resign(&leader).await?;
        Ok(Response::new(vpb::ResignResponse {
            header: self.header(revision),
        }))
    }
}
