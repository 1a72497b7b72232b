//! The leader's side of `nines.v1.Forward/Writes` (see
//! `api::forward_batch`): each write is decoded and handed to the KV
//! handler as the etcd call it carries, with the batch's metadata and its
//! own session and token, so it is checked and answered exactly as that
//! call would be. The writes of a batch run concurrently (the proposer
//! batches them into the log as it does clients' calls).

use std::future::Future;
use std::sync::Arc;

use epb::kv_server::Kv;
use futures::future::join_all;
use nines_proto::etcd::etcdserverpb as epb;
use nines_proto::v1 as pb;
use pb::forwarded_write::Kind;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Extensions, Request, Response, Status};

use super::session::SESSION_HEADER;
use super::EtcdKv;
use crate::api::forward::check_forwarded_by_member;
use crate::api::forward_batch::{answer_of, refusal, MAX_WRITES};
use crate::auth::{with_identity, Identity, TOKEN_METADATA};

pub struct EtcdForward {
    pub kv: Arc<EtcdKv>,
}

#[tonic::async_trait]
impl pb::forward_server::Forward for EtcdForward {
    async fn writes(
        &self,
        request: Request<pb::ForwardWritesRequest>,
    ) -> Result<Response<pb::ForwardWritesResponse>, Status> {
        // Only members batch: a client has etcd's KV for its writes.
        check_forwarded_by_member(&self.kv.core, request.metadata())?;
        let (mut metadata, extensions, batch) = request.into_parts();
        if batch.writes.len() > MAX_WRITES {
            return Err(Status::invalid_argument(format!(
                "{} forwarded writes in one call; at most {MAX_WRITES}",
                batch.writes.len()
            )));
        }
        // Each write brings its own.
        metadata.remove(TOKEN_METADATA);
        metadata.remove(SESSION_HEADER);
        let answers = batch
            .writes
            .into_iter()
            .map(|write| self.one(metadata.clone(), extensions.clone(), write));
        let answers = join_all(answers).await;
        Ok(Response::new(pb::ForwardWritesResponse { answers }))
    }
}

impl EtcdForward {
    async fn one(
        &self,
        mut metadata: MetadataMap,
        extensions: Extensions,
        write: pb::ForwardedWrite,
    ) -> pb::ForwardedAnswer {
        for (name, value) in [
            (TOKEN_METADATA, &write.token),
            (SESSION_HEADER, &write.session),
        ] {
            if value.is_empty() {
                continue;
            }
            match MetadataValue::try_from(value.as_str()) {
                Ok(v) => {
                    metadata.insert(name, v);
                }
                Err(_) => return refusal(Status::invalid_argument(format!("a bad {name}"))),
            }
        }
        // What the token scope layer sets for a forwarded call.
        let identity = Identity {
            token: (!write.token.is_empty()).then(|| write.token.clone()),
            cert_user: None,
        };
        let kv = &*self.kv;
        let bytes = write.request.as_slice();
        let call = async move {
            match Kind::try_from(write.kind) {
                Ok(Kind::Put) => {
                    handle("put", bytes, |m| {
                        Kv::put(kv, Request::from_parts(metadata, extensions, m))
                    })
                    .await
                }
                Ok(Kind::DeleteRange) => {
                    handle("delete range", bytes, |m| {
                        Kv::delete_range(kv, Request::from_parts(metadata, extensions, m))
                    })
                    .await
                }
                Ok(Kind::Txn) => {
                    handle("txn", bytes, |m| {
                        Kv::txn(kv, Request::from_parts(metadata, extensions, m))
                    })
                    .await
                }
                Ok(Kind::Unspecified) | Err(_) => refusal(Status::invalid_argument(format!(
                    "unknown forwarded write kind {}",
                    write.kind
                ))),
            }
        };
        with_identity(identity, call).await
    }
}

/// Decodes `bytes` as the request `call` takes, and answers with what it
/// returns (or why the bytes are not such a request).
async fn handle<Req, Resp, Fut>(
    what: &str,
    bytes: &[u8],
    call: impl FnOnce(Req) -> Fut,
) -> pb::ForwardedAnswer
where
    Req: Message + Default,
    Resp: Message,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    match Req::decode(bytes) {
        Ok(message) => answer_of(call(message).await),
        Err(e) => refusal(Status::invalid_argument(format!(
            "a forwarded {what} does not decode: {e}"
        ))),
    }
}
