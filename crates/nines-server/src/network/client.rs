//! Sending Raft RPCs to peers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::SinkExt;
use nines_proto::raft_client::RaftClient;
use nines_proto::{RaftReply, RaftRequest};
use nines_tls::Connector;
use nines_types::{DurableIndex, Node, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::Code;

use super::codec;
use super::guard::LogOnce;
use super::peers::PeerLiveness;
use super::replies::{self, BadReply};

/// Pause between attempts to reach a peer that refused the connection.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(100);

/// Large enough for a full append batch or a 1 MiB-value entry plus a snapshot chunk.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One lazily connected channel per address and port kind, shared by
/// every caller: openraft asks for a new client per replication stream,
/// election and read barrier, so connecting there would open a TCP
/// connection per call. Peer ports and client ports may differ in TLS
/// (see `tls.rs`), so each kind has its own connector.
#[derive(Clone, Default)]
pub struct ChannelPool {
    channels: Arc<Mutex<HashMap<(Port, String), Channel>>>,
    to_peers: Connector,
    to_clients: Connector,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Port {
    Peer,
    Client,
}

impl ChannelPool {
    pub fn new(source_ip: Option<std::net::IpAddr>, tls: &crate::tls::Tls) -> Self {
        Self {
            channels: Arc::default(),
            to_peers: tls.peer_connector(source_ip),
            to_clients: tls.client_connector(source_ip),
        }
    }

    /// A channel to a member's peer port (`Node::raft_addr`).
    pub fn peer(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.get(Port::Peer, addr)
    }

    /// A channel to a member's client port (`Node::api_addr`, --join endpoints).
    pub fn client(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.get(Port::Client, addr)
    }

    /// What opens connections to peer ports (for one-off channels).
    pub fn peer_connector(&self) -> &Connector {
        &self.to_peers
    }

    fn get(&self, port: Port, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let key = (port, addr.to_string());
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let connector = match port {
            Port::Peer => &self.to_peers,
            Port::Client => &self.to_clients,
        };
        // The connector sets TCP_NODELAY and the source address.
        let channel = connector.channel(addr, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(1))
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
        })?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

#[derive(Clone)]
pub struct NetworkFactory {
    pub cluster_id: u64,
    pub pool: ChannelPool,
    /// The local log's durable index: see `Connection::append_entries`.
    pub durable: DurableIndex,
    /// Fed with every RPC's outcome, for membership checks.
    pub peers: PeerLiveness,
    /// The highest commit index sent to a follower (`read_index.rs`).
    pub commit_told: crate::read_index::CommitTold,
}

pub struct Connection {
    target: NodeId,
    cluster_id: u64,
    durable: DurableIndex,
    commit_told: crate::read_index::CommitTold,
    client: Option<RaftClient<Channel>>,
    addr: String,
    peers: PeerLiveness,
    /// The open append stream with no request outstanding, if any; dropped
    /// on any failure or cancellation and opened again by the next append.
    stream: Option<AppendStream>,
    /// The peer has no `AppendStream` (an older version): unary calls.
    unary_only: bool,
    /// Appends sent through this connection so far.
    appends: u64,
    /// Refused replies are said once per kind and interval.
    said: LogOnce,
}

/// One replication target's `AppendStream`: a request, then its reply.
struct AppendStream {
    requests: mpsc::Sender<RaftRequest>,
    replies: tonic::Streaming<RaftReply>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        let client = self.pool.peer(&node.raft_addr).ok().map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        Connection {
            target,
            cluster_id: self.cluster_id,
            durable: self.durable.clone(),
            commit_told: self.commit_told.clone(),
            client,
            addr: node.raft_addr.clone(),
            peers: self.peers.clone(),
            stream: None,
            unary_only: false,
            appends: 0,
            said: LogOnce::new(Duration::from_secs(5)),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Connection {
    async fn call<T, E>(&mut self, rpc: Rpc, data: Vec<u8>, option: &RPCOption) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self.call_peer(rpc, data, option).await;
        // A decoded reply, a Raft-level error included, proves the target is up.
        let answered = matches!(result, Ok(_) | Err(RPCError::RemoteError(_)));
        self.peers.record(self.target, answered);
        result
    }

    async fn call_peer<T, E>(
        &mut self,
        rpc: Rpc,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let message = RaftRequest {
            target: self.target,
            cluster_id: self.cluster_id,
            data,
        };
        let streamed = matches!(rpc, Rpc::Append) && streams(self.appends, self.unary_only);
        if matches!(rpc, Rpc::Append) {
            self.appends += 1;
        }
        let reply = if streamed {
            self.append_streamed(message, option.hard_ttl()).await
        } else {
            let Some(client) = self.client.as_mut() else {
                return Err(unreachable(format!("bad peer address {:?}", self.addr)));
            };
            let mut request = tonic::Request::new(message);
            request.set_timeout(option.hard_ttl());
            match rpc {
                Rpc::Append => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::Snapshot => client.install_snapshot(request).await,
            }
            .map(tonic::Response::into_inner)
        };
        let reply = reply.map_err(status_to_rpc_error)?;
        let result: Result<T, RaftError<NodeId, E>> = codec::decode(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl Connection {
    /// One append over this target's stream, opened first if need be,
    /// within `ttl`. Any failure drops the stream (`exchange` puts it back
    /// only with its reply read): a late reply must never be taken for the
    /// next request's.
    async fn append_streamed(
        &mut self,
        message: RaftRequest,
        ttl: Duration,
    ) -> Result<RaftReply, tonic::Status> {
        let result = tokio::time::timeout(ttl, self.exchange(message)).await;
        let result = result.unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "no append reply in time over the stream",
            ))
        });
        if let Err(status) = &result {
            if status.code() == Code::Unimplemented {
                tracing::info!(
                    peer = self.target,
                    "peer has no append stream: unary appends"
                );
                self.unary_only = true;
            }
        }
        result
    }

    /// The stream is out of `self.stream` while its request is unanswered
    /// and goes back only with the reply read: if the caller drops this
    /// future in between (openraft times each append out itself, with the
    /// same deadline as ours), the stream is dropped with it, never left
    /// holding a reply the next request would take for its own.
    async fn exchange(&mut self, message: RaftRequest) -> Result<RaftReply, tonic::Status> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                let Some(client) = self.client.as_mut() else {
                    return Err(tonic::Status::unavailable(format!(
                        "bad peer address {:?}",
                        self.addr
                    )));
                };
                let (requests, outbound) = mpsc::channel(1);
                let replies = client.append_stream(outbound).await?.into_inner();
                AppendStream { requests, replies }
            }
        };
        stream
            .requests
            .send(message)
            .await
            .map_err(|_| tonic::Status::unavailable("the append stream closed"))?;
        match stream.replies.message().await? {
            Some(reply) => {
                self.stream = Some(stream);
                Ok(reply)
            }
            None => Err(tonic::Status::unavailable(
                "the peer ended the append stream",
            )),
        }
    }
}

/// Whether an append goes over the stream: not the first of a connection.
/// openraft opens a connection per target for every leadership check of a
/// linearizable read and sends one heartbeat on it; a stream opened for
/// that one call cost an extra round trip under the check's short timeout
/// (reads failed under load) and a reset stream per check. Replication
/// keeps its connection, so from its second append on it streams.
fn streams(appends_before: u64, unary_only: bool) -> bool {
    appends_before > 0 && !unary_only
}

impl Connection {
    /// A reply that failed `replies`: said, and a network error to
    /// openraft (which retries) instead of the reply.
    fn bad_reply<E: std::error::Error>(&self, e: BadReply) -> RPCError<NodeId, Node, E> {
        if self.said.should_say("bad_reply") {
            tracing::warn!(peer = self.target, addr = %self.addr, "{e} (said once per 5 s)");
        }
        RPCError::Network(NetworkError::new(&e))
    }
}

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<NodeId, Node, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(msg)))
}

/// A call that timed out (the peer is slow, paused or its disk stalled) is
/// a network error that openraft retries at once; only a peer we cannot
/// connect to is Unreachable, which makes openraft back off (`backoff`).
/// Reporting timeouts as Unreachable put a healthy but briefly slow
/// follower into a back-off longer than the election timeout.
fn status_to_rpc_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, Node, E> {
    let what = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled | Code::DeadlineExceeded if is_timeout(&status) => {
            RPCError::Network(NetworkError::new(&AnyError::error(what)))
        }
        Code::Unavailable | Code::Cancelled | Code::Unknown => unreachable(what),
        _ => RPCError::Network(NetworkError::new(&AnyError::error(what))),
    }
}

/// tonic reports its own request timeout as `Cancelled: Timeout expired`;
/// a server-side deadline is DeadlineExceeded.
fn is_timeout(status: &tonic::Status) -> bool {
    status.code() == Code::DeadlineExceeded || status.message().contains("Timeout expired")
}

fn encode_error<E: std::error::Error>(e: codec::CodecError) -> RPCError<NodeId, Node, E> {
    RPCError::Network(NetworkError::new(&AnyError::new(&e)))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // A pipelining leader counts itself in the commit quorum before its
        // own fdatasync is done: a follower must not learn (and apply) a
        // commit that a crash of this node could still undo. Wait briefly
        // for the sync, else send no commit index this time; followers only
        // ever raise theirs, and the next message carries it.
        if let Some(commit) = rpc.leader_commit {
            let budget = option.soft_ttl() / 4;
            if self.durable.wait_for_within(commit.index, budget).await {
                // Before it can reach the follower: see `CommitTold`.
                self.commit_told.record(commit.index);
            } else {
                rpc.leader_commit = None;
            }
        }
        let entries = rpc.entries.len() as u64;
        let data = codec::encode(&rpc).map_err(encode_error)?;
        if data.len() > MAX_MESSAGE_BYTES && entries > 1 {
            // openraft halves the batch and retries.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        let reply = self.call(Rpc::Append, data, &option).await?;
        replies::check_append(&rpc, &reply).map_err(|e| self.bad_reply(e))?;
        Ok(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let data = codec::encode(&rpc).map_err(encode_error)?;
        let reply = self.call(Rpc::Snapshot, data, &option).await?;
        replies::check_snapshot(&rpc.vote, &reply).map_err(|e| self.bad_reply(e))?;
        Ok(reply)
    }

    /// After an unreachable peer, wait less than the election timeout
    /// before trying again (openraft's default is 500 ms): a restarted
    /// follower is then caught up before it would campaign.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let data = codec::encode(&rpc).map_err(encode_error)?;
        let reply = self.call(Rpc::Vote, data, &option).await?;
        replies::check_vote(&rpc, &reply).map_err(|e| self.bad_reply(e))?;
        Ok(reply)
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
