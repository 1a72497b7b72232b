//! etcd's `KV` service: each handler converts, calls `NodeCore` and maps
//! errors in one place (`ApiError`), as etcd's v3rpc handlers do.

use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_state::Read;
use nines_types::{CommandResult, Node, RangeResponse, Request, Session};
use tonic::transport::Channel;
use tonic::{Response, Status};

use epb::kv_client::KvClient;

use super::permits::Guarded;
use super::{convert, session};
use crate::api::forward::{self, is_forwarded, Headed};
use crate::api::forward_batch::{Kind, WriteBatcher, MAX_WRITE_BYTES};
use crate::core::{NodeCore, Routed};
use crate::error::ApiError;
use crate::read_limit::{self, ReadLimiter};

pub struct EtcdKv {
    pub core: Arc<NodeCore>,
    /// Bounds local range executions and their bytes in flight.
    pub reads: Arc<ReadLimiter>,
    /// Sends forwarded writes to the leader several per call.
    pub batcher: Arc<WriteBatcher>,
}

/// Bytes a read result holds: what the bytes-in-flight limit counts.
pub(super) fn kv_bytes(kv: &nines_types::KeyValue) -> u64 {
    (kv.key.len() + kv.value.len()) as u64 + 32
}

/// A write applied here, or the leader to send it to with its session.
enum Written<Resp> {
    Here(Resp),
    AtLeader(Node, Option<Session>),
}

/// etcd's KV client to the leader, which may answer with up to what it is
/// allowed to send.
pub(super) fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES)
}

/// Small enough to go in a batch of forwarded writes.
fn batchable(message: &impl prost::Message) -> bool {
    message.encoded_len() <= MAX_WRITE_BYTES
}

/// A txn whose answer is small: no ranges and no previous values, in any
/// branch (a batch's answers share one response's size limit).
fn small_txn_answer(txn: &epb::TxnRequest) -> bool {
    use epb::request_op::Request as Op;
    let small = |op: &epb::RequestOp| match &op.request {
        Some(Op::RequestPut(p)) => !p.prev_kv,
        Some(Op::RequestDeleteRange(d)) => !d.prev_kv,
        Some(Op::RequestRange(_)) | Some(Op::RequestTxn(_)) | None => false,
    };
    txn.success.iter().chain(&txn.failure).all(small)
}

impl EtcdKv {
    /// A write this member does not lead: sent to the leader (in the next
    /// batch when `batch` names its kind and it is small enough, else on
    /// its own), answered once this member has applied it too.
    async fn at_leader<Req, Resp, Fut>(
        &self,
        leader: Node,
        session: Option<Session>,
        message: Req,
        batch: Option<Kind>,
        call: impl FnOnce(Channel, tonic::Request<Req>) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default + Headed,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let answer = match batch.filter(|_| batchable(&message)) {
            Some(kind) => {
                self.batcher
                    .forward(&self.core, &leader, kind, &message, session)
                    .await
            }
            None => forward::to_leader(&self.core, &leader, message, session, call).await,
        };
        forward::caught_up(&self.core, answer).await
    }

    async fn write<Req: Guarded, Resp>(
        &self,
        request: &tonic::Request<Req>,
        to_domain: impl FnOnce(&Req, Option<Session>) -> Result<Request, ApiError>,
        from_domain: impl FnOnce(epb::ResponseHeader, CommandResult) -> Result<Resp, ApiError>,
    ) -> Result<Written<Resp>, Status> {
        let caller = self.core.caller(request.metadata())?;
        request.get_ref().check(&self.core, &caller)?;
        let session = session::from_metadata(request.metadata())?;
        let domain = to_domain(request.get_ref(), session)?;
        match self.core.write(domain, is_forwarded(request)).await? {
            Routed::Local(resp) => {
                let (revision, result) = crate::api::convert::applied(resp)?;
                let header = convert::header(self.core.header(revision));
                Ok(Written::Here(from_domain(header, result)?))
            }
            Routed::Forward(leader) => Ok(Written::AtLeader(leader, session)),
        }
    }
}

#[tonic::async_trait]
impl epb::kv_server::Kv for EtcdKv {
    async fn range(
        &self,
        request: tonic::Request<epb::RangeRequest>,
    ) -> Result<Response<epb::RangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = self.core.caller(request.metadata())?;
        request.get_ref().check(&self.core, &caller)?;
        let message = request.into_inner();
        let (read, options) = convert::range_request(&message)?;
        self.core
            .config
            .limits
            .check_read(&read)
            .map_err(ApiError::from)?;
        if !message.serializable {
            if let Routed::Forward(leader) = self.core.linearize(forwarded).await? {
                let call = |ch, r| async move { kv(ch).range(r).await };
                return forward::to_leader(&self.core, &leader, message, None, call).await;
            }
            // Again, on the state the barrier waited for (see `txn_read`).
            message.check(&self.core, &caller)?;
        }
        // Scans off the async workers, a few at a time; one key inline. The
        // header carries the revision the read was served at.
        let reader = self.core.reader.clone();
        let at = message.revision;
        let size = |r: &Read<RangeResponse>| r.data.kvs.iter().map(kv_bytes).sum();
        let (served, held) = if message.range_end.is_empty() {
            let serve = || {
                reader
                    .range_with(&read, &options, at)
                    .map_err(ApiError::from)
            };
            self.reads.run_point(serve, size).await?
        } else {
            let serve = move || {
                reader
                    .range_with(&read, &options, at)
                    .map_err(ApiError::from)
            };
            self.reads.run(serve, size).await?
        };
        // etcd's header names the store's current revision, also for a
        // read of a past one (the data are as of `at`).
        let revision = if at > 0 {
            served.revision.max(self.core.reader.revision())
        } else {
            served.revision
        };
        let header = convert::header(self.core.header(revision));
        let mut response = Response::new(convert::range_response(header, served.data));
        read_limit::attach(&mut response, held);
        Ok(response)
    }

    async fn put(
        &self,
        request: tonic::Request<epb::PutRequest>,
    ) -> Result<Response<epb::PutResponse>, Status> {
        match self
            .write(&request, convert::put_request, convert::put_response)
            .await?
        {
            Written::Here(resp) => Ok(Response::new(resp)),
            Written::AtLeader(leader, session) => {
                let message = request.into_inner();
                let batch = (!message.prev_kv).then_some(Kind::Put);
                let call = |ch, r| async move { kv(ch).put(r).await };
                self.at_leader(leader, session, message, batch, call).await
            }
        }
    }

    async fn delete_range(
        &self,
        request: tonic::Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        let to_domain = |m: &epb::DeleteRangeRequest, s| Ok(convert::delete_request(m, s));
        match self
            .write(&request, to_domain, convert::delete_response)
            .await?
        {
            Written::Here(resp) => Ok(Response::new(resp)),
            Written::AtLeader(leader, session) => {
                let message = request.into_inner();
                let batch = (!message.prev_kv).then_some(Kind::DeleteRange);
                let call = |ch, r| async move { kv(ch).delete_range(r).await };
                self.at_leader(leader, session, message, batch, call).await
            }
        }
    }

    /// Like every write, then for `physical` a wait until this member has
    /// deleted the dropped records (bounded by the request timeout).
    async fn compact(
        &self,
        request: tonic::Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        let physical = request.get_ref().physical;
        let to_domain = |m: &epb::CompactionRequest, s| Ok(convert::compact_request(m, s));
        match self
            .write(&request, to_domain, convert::compact_response)
            .await?
        {
            Written::Here((resp, revision)) => {
                if physical {
                    self.core.wait_swept(revision).await?;
                }
                Ok(Response::new(resp))
            }
            Written::AtLeader(leader, session) => {
                let call = |ch, r| async move { kv(ch).compact(r).await };
                self.at_leader(leader, session, request.into_inner(), None, call)
                    .await
            }
        }
    }

    async fn txn(
        &self,
        request: tonic::Request<epb::TxnRequest>,
    ) -> Result<Response<epb::TxnResponse>, Status> {
        // One with a session goes through the log: a session's sequence
        // number is taken when its request is applied, and a lane's first
        // write after an unlogged seq 1 would meet "session unknown".
        if request.get_ref().is_read_only() && session::from_metadata(request.metadata())?.is_none()
        {
            return self.txn_read(request).await;
        }
        match self
            .write(&request, convert::txn_request, convert::txn_response)
            .await?
        {
            Written::Here(resp) => Ok(Response::new(resp)),
            Written::AtLeader(leader, session) => {
                let message = request.into_inner();
                let batch = small_txn_answer(&message).then_some(Kind::Txn);
                let call = |ch, r| async move { kv(ch).txn(r).await };
                self.at_leader(leader, session, message, batch, call).await
            }
        }
    }
}
