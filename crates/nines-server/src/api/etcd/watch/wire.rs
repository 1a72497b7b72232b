//! The Watch service as it goes on the wire. Its responses are etcd's
//! `WatchResponse` with each event already encoded (`WatchOut`): an
//! embedded message and a byte string are the same on the wire (field
//! number, length, bytes), so clients see etcd's message, while the
//! server encodes a change once for all its watchers (`watch::Shared`)
//! instead of once per watcher. The service is written out here because
//! the generated one is bound to the generated response type; it is the
//! generated one's routing with this codec.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use nines_proto::etcd::{etcdserverpb as epb, mvccpb};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::{EtcdWatch, WatchStream};
use crate::watch::Event;

/// etcd's `WatchResponse`, field for field, with `events` (field 11,
/// `repeated mvccpb.Event`) as their encodings.
#[derive(Clone, PartialEq, Message)]
pub struct WatchOut {
    #[prost(message, optional, tag = "1")]
    pub header: Option<epb::ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(bool, tag = "7")]
    pub fragment: bool,
    #[prost(bytes = "bytes", repeated, tag = "11")]
    pub events: Vec<Bytes>,
}

fn kv(kv: &nines_types::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.clone(),
        lease: kv.lease,
    }
}

/// `e` as an encoded `mvccpb.Event`; without a previous value the
/// encoding is the change's own, made once and shared.
pub fn event(e: &Event) -> Bytes {
    let encode = |prev_kv: Option<mvccpb::KeyValue>| {
        let event = mvccpb::Event {
            r#type: match e.deleted() {
                true => mvccpb::event::EventType::Delete as i32,
                false => mvccpb::event::EventType::Put as i32,
            },
            kv: Some(kv(e.kv())),
            prev_kv,
        };
        Bytes::from(event.encode_to_vec())
    };
    match &e.prev_kv {
        Some(prev) => encode(Some(kv(prev))),
        None => e.change.wire.get_or_init(|| encode(None)).clone(),
    }
}

/// etcd's `Watch` service at etcd's path, answering with [`WatchOut`].
#[derive(Clone)]
pub struct WatchServer {
    inner: Arc<EtcdWatch>,
    max_encoding: usize,
}

impl WatchServer {
    pub fn new(inner: EtcdWatch, max_encoding: usize) -> Self {
        WatchServer {
            inner: Arc::new(inner),
            max_encoding,
        }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

struct Method(Arc<EtcdWatch>);

impl StreamingService<epb::WatchRequest> for Method {
    type Response = WatchOut;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<Response<WatchStream>, Status>;

    fn call(&mut self, request: Request<Streaming<epb::WatchRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.watch(request).await })
    }
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = Method(self.inner.clone());
        let max_encoding = self.max_encoding;
        Box::pin(async move {
            let codec = ProstCodec::<WatchOut, epb::WatchRequest>::default();
            let mut grpc = Grpc::new(codec).apply_max_message_size_config(None, Some(max_encoding));
            Ok(grpc.streaming(method, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Shared;
    use nines_state::Change;
    use nines_types::KeyValue;

    /// The event as the generated types encode it.
    fn proto_event(e: &Event) -> mvccpb::Event {
        mvccpb::Event {
            r#type: if e.deleted() { 1 } else { 0 },
            kv: Some(crate::api::etcd::convert::kv(e.kv().clone())),
            prev_kv: e.prev_kv.clone().map(crate::api::etcd::convert::kv),
        }
    }

    fn change(deleted: bool) -> Change {
        Change {
            deleted,
            kv: KeyValue {
                key: b"k/1".to_vec(),
                value: if deleted { vec![] } else { b"v".repeat(300) },
                create_revision: 4,
                mod_revision: 9,
                version: 3,
                lease: 0x1234,
            },
        }
    }

    /// A client decodes what the server sends as etcd's message: the
    /// bytes are those of `WatchResponse` with the same content.
    #[test]
    fn a_response_encodes_as_etcds_watch_response() {
        let prev = KeyValue {
            key: b"k/1".to_vec(),
            value: b"old".to_vec(),
            create_revision: 4,
            mod_revision: 7,
            version: 2,
            lease: 0,
        };
        let events = vec![
            Event {
                change: Shared::new(change(false)),
                prev_kv: None,
            },
            Event {
                change: Shared::new(change(true)),
                prev_kv: Some(prev),
            },
        ];
        let header = epb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 9,
            raft_term: 3,
        };
        let out = WatchOut {
            header: Some(header),
            watch_id: 5,
            fragment: true,
            events: events.iter().map(event).collect(),
            ..Default::default()
        };
        let theirs = epb::WatchResponse {
            header: Some(header),
            watch_id: 5,
            fragment: true,
            events: events.iter().map(proto_event).collect(),
            ..Default::default()
        };
        assert_eq!(out.encode_to_vec(), theirs.encode_to_vec());
        let decoded = epb::WatchResponse::decode(out.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, theirs);
        assert_eq!(decoded.events[1].prev_kv.as_ref().unwrap().value, b"old");
    }

    /// Every watcher without a previous value sends the one encoding.
    #[test]
    fn a_change_is_encoded_once_for_all_its_watchers() {
        let shared = Shared::new(change(false));
        let a = event(&Event {
            change: shared.clone(),
            prev_kv: None,
        });
        let b = event(&Event {
            change: shared.clone(),
            prev_kv: None,
        });
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert!(shared.wire.get().is_some());
    }
}
