//! The lease keeper against fake Lease services: a member that stops
//! answering (as a paused leader does) is left for another before the
//! lease could lapse; TTL 0 ends the keeper as expired; dropping the
//! keeper ends its stream.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_client::proto::lease_server::{Lease, LeaseServer};
use nines_client::proto::{self as pb};
use nines_client::{Client, ClientConfig, ClientError};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// One fake member. Every member shares `ttl` (the lease's state: 0 =
/// gone); each counts the keepalives it answered and its open streams.
struct Member {
    ttl: Arc<AtomicU64>,
    silent: AtomicBool,
    answered: AtomicU64,
    open_streams: Arc<AtomicUsize>,
}

const LEASE: i64 = 7;

/// The service of one member (only keepalives; the rest answer
/// UNIMPLEMENTED by default).
struct Fake(Arc<Member>);

#[tonic::async_trait]
impl Lease for Fake {
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let member = self.0.clone();
        member.open_streams.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                if member.silent.load(Ordering::SeqCst) {
                    continue;
                }
                let ttl = if req.id == LEASE {
                    member.ttl.load(Ordering::SeqCst) as i64
                } else {
                    0
                };
                member.answered.fetch_add(1, Ordering::SeqCst);
                let resp = pb::LeaseKeepAliveResponse {
                    header: None,
                    id: req.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            member.open_streams.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Two members sharing one lease of TTL 3 s, and a client of both.
async fn two_members() -> (Vec<Arc<Member>>, Arc<AtomicU64>, Client) {
    let ttl = Arc::new(AtomicU64::new(3));
    let mut members = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let member = Arc::new(Member {
            ttl: ttl.clone(),
            silent: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            open_streams: Arc::new(AtomicUsize::new(0)),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LeaseServer::new(Fake(member.clone())))
                .serve(addr),
        );
        members.push(member);
        addrs.push(addr.to_string());
    }
    let mut config = ClientConfig::new(addrs);
    config.retry_deadline = Duration::from_secs(10);
    let client = Client::new(config).unwrap();
    // The servers may take a moment to listen.
    for _ in 0..100 {
        if client.lease_keep_alive_once(LEASE).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (members, ttl, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_left_before_the_lease_could_lapse() {
    let (members, _ttl, client) = two_members().await;
    let keeper = client.lease_keep_alive(LEASE).await.expect("keeper");
    assert_eq!(keeper.ttl(), 3);
    // The keeper starts on the first member (no leader is known).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(members[0].answered.load(Ordering::SeqCst) >= 2);
    assert_eq!(members[1].answered.load(Ordering::SeqCst), 0);
    members[0].silent.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let state = keeper.state();
    assert!(
        members[1].answered.load(Ordering::SeqCst) >= 3,
        "the second member took over: {state:?}"
    );
    assert!(state.reconnects >= 1, "{state:?}");
    assert!(
        state.lapses.is_empty(),
        "never a TTL without renewal: {state:?}"
    );
    assert!(!state.expired);
    let until = state.alive_until().expect("renewed");
    assert!(until > tokio::time::Instant::now() + Duration::from_secs(1));

    // Dropping the keeper ends its stream.
    drop(keeper);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(members[1].open_streams.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_ends_the_keeper_as_expired() {
    let (_members, ttl, client) = two_members().await;
    let mut keeper = client.lease_keep_alive(LEASE).await.expect("keeper");
    ttl.store(0, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(3), keeper.expired())
        .await
        .expect("expiry seen within a keepalive interval")
        .expect("expired, not failed");
    assert!(keeper.is_expired());
    assert_eq!(keeper.ttl(), 0);
    assert!(matches!(
        client.lease_keep_alive_once(LEASE).await,
        Err(ClientError::LeaseNotFound { id: LEASE })
    ));
    assert!(matches!(
        client.lease_keep_alive(99).await,
        Err(ClientError::LeaseNotFound { id: 99 })
    ));
}
