//! What the gRPC stack alone costs watch delivery: a stand-in for a
//! three-member cluster that speaks etcd's KV.Put and Watch and does
//! nothing else (no Raft, no disk, no history). Three listeners, each on a
//! runtime of its own with two workers (as three members' client runtimes);
//! a put on any of them takes the next revision and wakes every watcher on
//! all three, then answers. Each stream sends one response per wake with
//! every revision since its last (one event each).
//!
//!   cargo run --release -p nines-server --example watch_floor -- 127.0.0.1:6379 ...
//!   nines --endpoints <the three> bench --target etcd --workload watch --watchers 1000
//!
//! Measures a floor, not a product: what serving 1,000 watch streams over
//! tonic costs on this machine when nothing else does. Connections go
//! through the client port's own transport (`Incoming`: gathered writes,
//! TCP_NODELAY), as nines' do. `FLOOR_LINGER_US=N` makes every stream wait
//! N µs after each wake before it builds its response (a fixed linger);
//! `FLOOR_ACK_FIRST=1` answers the put before the watchers are woken.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use nines_proto::etcd::mvccpb;
use nines_server::transport::Incoming;
use tonic::codegen::tokio_stream::wrappers::WatchStream;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

struct Shared {
    revision: AtomicI64,
    feeds: Vec<tokio::sync::watch::Sender<i64>>,
    key: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
    linger: std::time::Duration,
    ack_first: bool,
}

#[derive(Clone)]
struct Member {
    shared: Arc<Shared>,
    index: usize,
}

type Out = Pin<Box<dyn Stream<Item = Result<epb::WatchResponse, Status>> + Send>>;

fn header(revision: i64) -> Option<epb::ResponseHeader> {
    Some(epb::ResponseHeader {
        cluster_id: 1,
        member_id: 1,
        revision,
        raft_term: 2,
    })
}

#[tonic::async_trait]
impl epb::kv_server::Kv for Member {
    async fn range(
        &self,
        _: Request<epb::RangeRequest>,
    ) -> Result<Response<epb::RangeResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn put(
        &self,
        request: Request<epb::PutRequest>,
    ) -> Result<Response<epb::PutResponse>, Status> {
        let put = request.into_inner();
        *self.shared.key.lock().unwrap() = (put.key, put.value);
        let revision = self.shared.revision.fetch_add(1, Ordering::SeqCst) + 1;
        if self.shared.ack_first {
            // Queued behind the put's own answer: the connection task that
            // writes it is woken first (tokio's LIFO slot).
            let shared = self.shared.clone();
            tokio::spawn(async move {
                for feed in &shared.feeds {
                    feed.send_replace(revision);
                }
            });
        } else {
            for feed in &self.shared.feeds {
                feed.send_replace(revision);
            }
        }
        Ok(Response::new(epb::PutResponse {
            header: header(revision),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        _: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn txn(&self, _: Request<epb::TxnRequest>) -> Result<Response<epb::TxnResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn compact(
        &self,
        _: Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

#[tonic::async_trait]
impl epb::watch_server::Watch for Member {
    async fn watch(
        &self,
        request: Request<Streaming<epb::WatchRequest>>,
    ) -> Result<Response<Out>, Status> {
        let mut inbound = request.into_inner();
        // The create; the stream then only sends.
        inbound.message().await?;
        let shared = self.shared.clone();
        let feed = shared.feeds[self.index].subscribe();
        let mut next = *feed.borrow() + 1;
        let created = epb::WatchResponse {
            header: header(next - 1),
            watch_id: 0,
            created: true,
            ..Default::default()
        };
        let linger = shared.linger;
        let events = WatchStream::from_changes(feed).then(move |through| {
            let shared = shared.clone();
            let from = next;
            next = next.max(through + 1);
            async move {
                if !linger.is_zero() {
                    tokio::time::sleep(linger).await;
                }
                let (key, value) = shared.key.lock().unwrap().clone();
                let events = (from..=through)
                    .map(|revision| mvccpb::Event {
                        r#type: mvccpb::event::EventType::Put as i32,
                        kv: Some(mvccpb::KeyValue {
                            key: key.clone(),
                            create_revision: revision,
                            mod_revision: revision,
                            version: 1,
                            value: value.clone(),
                            lease: 0,
                        }),
                        prev_kv: None,
                    })
                    .collect();
                Ok(epb::WatchResponse {
                    header: header(through),
                    watch_id: 0,
                    events,
                    ..Default::default()
                })
            }
        });
        // Kept alive with the response: a dropped request stream resets it.
        let keep = tonic::codegen::tokio_stream::iter(vec![Ok(created)]).chain(events);
        let out = KeepInbound {
            out: Box::pin(keep),
            _inbound: inbound,
        };
        Ok(Response::new(Box::pin(out)))
    }
}

struct KeepInbound {
    out: Out,
    _inbound: Streaming<epb::WatchRequest>,
}

impl Stream for KeepInbound {
    type Item = Result<epb::WatchResponse, Status>;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.out.as_mut().poll_next(cx)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let linger = std::time::Duration::from_micros(
        std::env::var("FLOOR_LINGER_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let feeds = addrs
        .iter()
        .map(|_| tokio::sync::watch::channel(0).0)
        .collect();
    let shared = Arc::new(Shared {
        revision: AtomicI64::new(1),
        feeds,
        key: Default::default(),
        linger,
        ack_first: std::env::var("FLOOR_ACK_FIRST").is_ok_and(|v| v == "1"),
    });
    let mut threads = Vec::new();
    for (index, addr) in addrs.into_iter().enumerate() {
        let member = Member {
            shared: shared.clone(),
            index,
        };
        threads.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                let incoming = Incoming::new(listener, "client", 4096, None);
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(epb::kv_server::KvServer::new(member.clone()))
                    .add_service(epb::watch_server::WatchServer::new(member))
                    .serve_with_incoming(incoming)
                    .await
                    .expect("serve");
            });
        }));
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}
