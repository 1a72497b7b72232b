use super::*;

type E = openraft::error::Infallible;

#[test]
fn a_connection_streams_from_its_second_append_unless_the_peer_cannot() {
    assert!(!streams(0, false), "a one-call connection stays unary");
    assert!(streams(1, false));
    assert!(streams(500, false));
    assert!(!streams(500, true), "a peer without the stream");
}

#[test]
fn a_timeout_is_not_an_unreachable_peer() {
    let timeout = tonic::Status::cancelled("Timeout expired");
    assert!(matches!(
        status_to_rpc_error::<E>(timeout),
        RPCError::Network(_)
    ));
    let deadline = tonic::Status::deadline_exceeded("deadline");
    assert!(matches!(
        status_to_rpc_error::<E>(deadline),
        RPCError::Network(_)
    ));
    let refused = tonic::Status::unavailable("connection refused");
    assert!(matches!(
        status_to_rpc_error::<E>(refused),
        RPCError::Unreachable(_)
    ));
}

/// A peer whose append stream echoes each request's data after a delay of
/// `data[0]` × 10 ms, in order, one at a time (as the real one answers).
struct SlowEcho;

type Unary = Result<tonic::Response<RaftReply>, tonic::Status>;

#[tonic::async_trait]
impl nines_proto::raft_server::Raft for SlowEcho {
    async fn append_entries(&self, r: tonic::Request<RaftRequest>) -> Unary {
        Ok(tonic::Response::new(RaftReply {
            data: r.into_inner().data,
        }))
    }
    type AppendStreamStream = mpsc::Receiver<Result<RaftReply, tonic::Status>>;
    async fn append_stream(
        &self,
        r: tonic::Request<tonic::Streaming<RaftRequest>>,
    ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
        let mut inbound = r.into_inner();
        let (mut replies, stream) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let delay = u64::from(request.data.first().copied().unwrap_or(0)) * 10;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let reply = RaftReply { data: request.data };
                if replies.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(stream))
    }
    async fn vote(&self, _: tonic::Request<RaftRequest>) -> Unary {
        Err(tonic::Status::unimplemented("test peer"))
    }
    async fn install_snapshot(&self, _: tonic::Request<RaftRequest>) -> Unary {
        Err(tonic::Status::unimplemented("test peer"))
    }
    async fn pre_vote(&self, _: tonic::Request<RaftRequest>) -> Unary {
        Err(tonic::Status::unimplemented("test peer"))
    }
    async fn probe(
        &self,
        _: tonic::Request<nines_proto::ProbeRequest>,
    ) -> Result<tonic::Response<nines_proto::ProbeReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("test peer"))
    }
    async fn read_index(
        &self,
        _: tonic::Request<nines_proto::ReadIndexRequest>,
    ) -> Result<tonic::Response<nines_proto::ReadIndexReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("test peer"))
    }
    type ReadIndexStreamStream = mpsc::Receiver<Result<nines_proto::ReadIndexReply, tonic::Status>>;
    async fn read_index_stream(
        &self,
        _: tonic::Request<tonic::Streaming<nines_proto::ReadIndexRequest>>,
    ) -> Result<tonic::Response<Self::ReadIndexStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("test peer"))
    }
    type VoteCheckStreamStream =
        futures::stream::Empty<Result<nines_proto::VoteCheckReply, tonic::Status>>;
    async fn vote_check_stream(
        &self,
        _: tonic::Request<tonic::Streaming<nines_proto::VoteCheckRequest>>,
    ) -> Result<tonic::Response<Self::VoteCheckStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("test peer"))
    }
}

async fn slow_echo_connection() -> Connection {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(nines_proto::raft_server::RaftServer::new(SlowEcho))
            .serve_with_incoming(incoming),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    Connection {
        target: 2,
        cluster_id: 1,
        durable: nines_types::durable_index(0).1,
        commit_told: Default::default(),
        client: Some(RaftClient::new(channel)),
        addr,
        peers: PeerLiveness::default(),
        stream: None,
        unary_only: false,
        // Past the first append: these go over the stream.
        appends: 1,
        said: crate::network::guard::LogOnce::new(std::time::Duration::from_secs(5)),
    }
}

fn request(delay_tens_of_ms: u8, tag: u8) -> RaftRequest {
    RaftRequest {
        target: 2,
        cluster_id: 1,
        data: vec![delay_tens_of_ms, tag],
    }
}

/// openraft wraps each append in its own timeout of the same length as
/// ours and drops the call when that fires first. The CI chaos run of
/// 2026-12-06 found the stream then kept the dropped call's reply unread,
/// so the next append took it for its own: a stale success acknowledged
/// entries the follower never had, and a deposed leader committed (and
/// applied) an entry at an index its successor filled differently.
#[tokio::test]
async fn a_dropped_append_never_lends_its_reply_to_the_next() {
    let mut conn = slow_echo_connection().await;
    let ttl = Duration::from_secs(5);
    // The stream works: a reply is its own request's.
    let first = conn.append_streamed(request(0, 1), ttl).await.unwrap();
    assert_eq!(first.data, vec![0, 1]);
    // The caller gives up while the peer is still answering (500 ms).
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        conn.append_streamed(request(50, 2), ttl),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the slow append was dropped by the caller"
    );
    // The next append gets its own reply, not the dropped one's.
    let next = conn.append_streamed(request(0, 3), ttl).await.unwrap();
    assert_eq!(next.data, vec![0, 3], "a reply taken for another request");
}
