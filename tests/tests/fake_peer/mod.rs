//! A fake member on a real port, for tests of what a leader does with its
//! peers' replies: it answers the membership probe as the node the leader
//! expects, then every Raft call with `reply()`.

use nines_client::proto as pb;

pub type RaftResult = Result<tonic::Response<pb::v1::RaftReply>, tonic::Status>;

pub struct FakePeer {
    pub reply: fn() -> RaftResult,
}

/// Serves a `FakePeer` answering with `reply` on a free port; its address.
pub async fn serve(reply: fn() -> RaftResult) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::v1::raft_server::RaftServer::new(FakePeer { reply }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

#[tonic::async_trait]
impl pb::v1::raft_server::Raft for FakePeer {
    async fn append_entries(&self, _: tonic::Request<pb::v1::RaftRequest>) -> RaftResult {
        (self.reply)()
    }
    type AppendStreamStream =
        futures::stream::BoxStream<'static, Result<pb::v1::RaftReply, tonic::Status>>;
    /// The same reply to every append over the stream too.
    async fn append_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::v1::RaftRequest>>,
    ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
        use futures::StreamExt;
        let reply = self.reply;
        let replies = request
            .into_inner()
            .map(move |_| reply().map(tonic::Response::into_inner));
        Ok(tonic::Response::new(replies.boxed()))
    }
    async fn vote(&self, _: tonic::Request<pb::v1::RaftRequest>) -> RaftResult {
        (self.reply)()
    }
    async fn install_snapshot(&self, _: tonic::Request<pb::v1::RaftRequest>) -> RaftResult {
        (self.reply)()
    }
    async fn pre_vote(&self, _: tonic::Request<pb::v1::RaftRequest>) -> RaftResult {
        (self.reply)()
    }
    async fn probe(
        &self,
        request: tonic::Request<pb::v1::ProbeRequest>,
    ) -> Result<tonic::Response<pb::v1::ProbeReply>, tonic::Status> {
        let req = request.into_inner();
        Ok(tonic::Response::new(pb::v1::ProbeReply {
            id: req.target,
            cluster_id: req.cluster_id,
        }))
    }
    async fn read_index(
        &self,
        _: tonic::Request<pb::v1::ReadIndexRequest>,
    ) -> Result<tonic::Response<pb::v1::ReadIndexReply>, tonic::Status> {
        Err(tonic::Status::internal("hostile"))
    }
    type ReadIndexStreamStream =
        futures::stream::BoxStream<'static, Result<pb::v1::ReadIndexReply, tonic::Status>>;
    async fn read_index_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::v1::ReadIndexRequest>>,
    ) -> Result<tonic::Response<Self::ReadIndexStreamStream>, tonic::Status> {
        use futures::StreamExt;
        let replies = request
            .into_inner()
            .map(|_| Err(tonic::Status::internal("hostile")));
        Ok(tonic::Response::new(replies.boxed()))
    }
    type VoteCheckStreamStream =
        futures::stream::Empty<Result<pb::v1::VoteCheckReply, tonic::Status>>;
    async fn vote_check_stream(
        &self,
        _: tonic::Request<tonic::Streaming<pb::v1::VoteCheckRequest>>,
    ) -> Result<tonic::Response<Self::VoteCheckStreamStream>, tonic::Status> {
        Err(tonic::Status::internal("hostile"))
    }
}
