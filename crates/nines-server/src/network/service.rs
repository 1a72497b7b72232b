//! Receiving Raft RPCs from peers.

use std::pin::Pin;

use futures::Stream;
use nines_proto::raft_server::Raft as RaftRpc;
use nines_proto::{RaftReply, RaftRequest};
use nines_types::{NodeId, Raft};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::codec;

#[derive(Clone)]
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

fn encode_reply<T: Serialize>(result: &T) -> Result<RaftReply, Status> {
    let data = codec::encode(result)
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(RaftReply { data })
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    encode_reply(result).map(Response::new)
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode(request.get_ref())?;
        reply(&self.raft.append_entries(rpc).await)
    }

    type AppendEntriesStreamStream = ReplyStream;

    /// Serves appends one at a time, in order, inside the response stream's
    /// own task: no task is spawned per stream or per message.
    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let state = (request.into_inner(), self.clone(), false);
        let replies = futures::stream::unfold(state, |(mut inbound, service, failed)| async move {
            if failed {
                return None;
            }
            let reply = match inbound.message().await {
                Ok(Some(message)) => match service.decode(&message) {
                    Ok(rpc) => encode_reply(&service.raft.append_entries(rpc).await),
                    Err(status) => Err(status),
                },
                Ok(None) => return None,
                Err(status) => Err(status),
            };
            let failed = reply.is_err();
            Some((reply, (inbound, service, failed)))
        });
        Ok(Response::new(Box::pin(replies)))
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
