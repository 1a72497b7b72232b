//! Receiving Raft RPCs from peers.

use nines_proto::raft_server::Raft as RaftRpc;
use nines_proto::{RaftReply, RaftRequest};
use nines_types::{NodeId, Raft};
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::codec;

pub struct RaftService {
    pub id: NodeId,
    pub cluster_id: u64,
    pub raft: Raft,
}

impl RaftService {
    /// Refuses traffic meant for another node or cluster: a misconfigured
    /// address must never make a leader replicate to itself or mix clusters.
    fn check(&self, req: &RaftRequest) -> Result<(), Status> {
        if req.target != self.id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}",
                self.id, req.target
            )));
        }
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "this node belongs to cluster {:x}, not {:x}",
                self.cluster_id, req.cluster_id
            )));
        }
        Ok(())
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, req: &RaftRequest) -> Result<T, Status> {
        self.check(req)?;
        codec::decode(&req.data)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
    }
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    let data = codec::encode(result)
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(Response::new(RaftReply { data }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode(request.get_ref())?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode(request.get_ref())?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode(request.get_ref())?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}
