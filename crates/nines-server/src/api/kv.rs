//! The `nines.v1.KV` service.

use std::sync::Arc;

use nines_proto as pb;
use nines_proto::kv_client::KvClient;
use nines_state::Read;
use nines_types::{CommandResult, Node, RangeResponse, Request};
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::convert;
use crate::core::{is_forwarded, NodeCore, Routed};
use crate::error::ApiError;
use crate::read_limit::{self, ReadLimiter};

pub struct KvService {
    pub core: Arc<NodeCore>,
    /// Bounds local range/get executions and their bytes in flight.
    pub reads: Arc<ReadLimiter>,
}

/// Bytes a read result holds: what the bytes-in-flight limit counts.
fn kv_bytes(kv: &nines_types::KeyValue) -> u64 {
    (kv.key.len() + kv.value.len()) as u64 + 32
}

enum Outcome<Req, Resp> {
    Done(Resp),
    Forward(KvClient<Channel>, Box<tonic::Request<Req>>, Box<Node>),
}

impl KvService {
    async fn write<Req, Resp>(
        &self,
        request: tonic::Request<Req>,
        to_domain: impl FnOnce(&Req) -> Result<Request, ApiError>,
        from_domain: impl FnOnce(pb::ResponseHeader, CommandResult) -> Result<Resp, ApiError>,
    ) -> Result<Outcome<Req, Resp>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let domain = to_domain(&message)?;
        match self.core.write(domain, forwarded).await? {
            Routed::Local(resp) => {
                let (revision, result) = convert::applied(resp)?;
                Ok(Outcome::Done(from_domain(
                    self.core.header(revision),
                    result,
                )?))
            }
            Routed::Forward(leader) => Ok(Outcome::Forward(
                self.client(&leader)?,
                Box::new(self.core.forward_request(message)),
                Box::new(leader),
            )),
        }
    }

    fn client(&self, leader: &nines_types::Node) -> Result<KvClient<Channel>, ApiError> {
        // The leader may answer with up to what it is allowed to send.
        Ok(KvClient::new(self.core.channel_to(leader)?)
            .max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES))
    }

    /// Passes the read barrier unless serializable; Some(client) means forward.
    async fn read_route(
        &self,
        serializable: bool,
        forwarded: bool,
    ) -> Result<Option<(KvClient<Channel>, Node)>, Status> {
        if serializable {
            return Ok(None);
        }
        match self.core.linearize(forwarded).await? {
            Routed::Local(()) => Ok(None),
            Routed::Forward(leader) => Ok(Some((self.client(&leader)?, leader))),
        }
    }

    fn forward_failed(&self, leader: &Node, status: Status) -> Status {
        self.core.note_forward_failure(leader, &status);
        forward_status(status)
    }
}

pub(crate) fn forward_status(status: Status) -> Status {
    // Statuses from the leader pass through unchanged; transport failures
    // become UNAVAILABLE so clients retry elsewhere.
    match status.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled => {
            ApiError::Forward(Status::unavailable(status.message().to_string())).into()
        }
        _ => status,
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: tonic::Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let read = convert::range_request(&message)?;
        let opts = convert::range_options(&message)?;
        self.core
            .config
            .limits
            .check_read(&read)
            .map_err(ApiError::from)?;
        if let Some((mut leader, node)) = self.read_route(message.serializable, forwarded).await? {
            return self
                .core
                .forward_to(&node, leader.range(self.core.forward_request(message)))
                .await
                .map_err(|s| self.forward_failed(&node, s));
        }
        // Off the async workers, a few at a time: a scan of megabytes holds
        // its thread for milliseconds. The header carries the revision the
        // read was served at, never one read separately.
        let reader = self.core.reader.clone();
        let at = message.revision;
        let size = |r: &Read<RangeResponse>| r.data.kvs.iter().map(kv_bytes).sum();
        let (served, held) = if message.range_end.is_empty() {
            let serve = || reader.range_with(&read, &opts, at).map_err(ApiError::from);
            self.reads.run_point(serve, size).await?
        } else {
            let serve = move || reader.range_with(&read, &opts, at).map_err(ApiError::from);
            self.reads.run(serve, size).await?
        };
        let mut response = Response::new(convert::range_response(
            self.core.header(served.revision),
            served.data,
        ));
        read_limit::attach(&mut response, held);
        Ok(response)
    }

    async fn get(
        &self,
        request: tonic::Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.core
            .config
            .limits
            .check_key(&message.key)
            .map_err(ApiError::from)?;
        if let Some((mut leader, node)) = self.read_route(message.serializable, forwarded).await? {
            return self
                .core
                .forward_to(&node, leader.get(self.core.forward_request(message)))
                .await
                .map_err(|s| self.forward_failed(&node, s));
        }
        let reader = &self.core.reader;
        let key = message.key;
        let (served, held) = self
            .reads
            .run_point(
                || reader.get(&key).map_err(ApiError::from),
                |r| r.data.as_ref().map(kv_bytes).unwrap_or(0),
            )
            .await?;
        let mut response = Response::new(pb::GetResponse {
            header: Some(self.core.header(served.revision)),
            kv: served.data.map(convert::kv),
        });
        read_limit::attach(&mut response, held);
        Ok(response)
    }

    async fn put(
        &self,
        request: tonic::Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        match self
            .write(
                request,
                |m| Ok(convert::put_request(m)),
                convert::put_response,
            )
            .await?
        {
            Outcome::Done(resp) => Ok(Response::new(resp)),
            Outcome::Forward(mut leader, req, node) => self
                .core
                .forward_to(&node, leader.put(*req))
                .await
                .map_err(|s| self.forward_failed(&node, s)),
        }
    }

    async fn delete(
        &self,
        request: tonic::Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        match self
            .write(
                request,
                |m| Ok(convert::delete_request(m)),
                convert::delete_response,
            )
            .await?
        {
            Outcome::Done(resp) => Ok(Response::new(resp)),
            Outcome::Forward(mut leader, req, node) => self
                .core
                .forward_to(&node, leader.delete(*req))
                .await
                .map_err(|s| self.forward_failed(&node, s)),
        }
    }

    async fn delete_range(
        &self,
        request: tonic::Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        match self
            .write(
                request,
                |m| Ok(convert::delete_range_request(m)),
                convert::delete_response,
            )
            .await?
        {
            Outcome::Done(resp) => Ok(Response::new(resp)),
            Outcome::Forward(mut leader, req, node) => self
                .core
                .forward_to(&node, leader.delete_range(*req))
                .await
                .map_err(|s| self.forward_failed(&node, s)),
        }
    }

    /// Like every write, then for `physical` a wait until this member has
    /// deleted the dropped records (bounded by the request timeout).
    async fn compact(
        &self,
        request: tonic::Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let physical = request.get_ref().physical;
        match self
            .write(
                request,
                |m| Ok(convert::compact_request(m)),
                convert::compact_response,
            )
            .await?
        {
            Outcome::Done((resp, revision)) => {
                if physical {
                    self.core.wait_swept(revision).await?;
                }
                Ok(Response::new(resp))
            }
            Outcome::Forward(mut leader, req, node) => self
                .core
                .forward_to(&node, leader.compact(*req))
                .await
                .map_err(|s| self.forward_failed(&node, s)),
        }
    }

    async fn txn(
        &self,
        request: tonic::Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        match self
            .write(request, convert::txn_request, convert::txn_response)
            .await?
        {
            Outcome::Done(resp) => Ok(Response::new(resp)),
            Outcome::Forward(mut leader, req, node) => self
                .core
                .forward_to(&node, leader.txn(*req))
                .await
                .map_err(|s| self.forward_failed(&node, s)),
        }
    }
}
