//! The one way a handler sends a call on to another member: the leader
//! (writes, linearizable reads, membership changes) or the target of a
//! leadership move. `NodeCore` says where a request must go; this marks
//! the call as forwarded (so it is never forwarded twice), bounds it by
//! this member's request timeout, carries the client's exactly-once
//! session, and counts and maps a failure through `ApiError`. A forwarded
//! write is answered once this member has caught up to it (`caught_up`).

use std::future::Future;

use nines_proto::etcd::etcdserverpb as epb;
use nines_types::{Node, Session};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use super::etcd::session;
use crate::core::NodeCore;
use crate::error::ApiError;
use crate::metrics::Counters;

/// Set on a request one node forwards to another, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-nines-forwarded";
/// The forwarding member's id and cluster id, checked on the peer port.
pub const FROM_HEADER: &str = "x-nines-from";
pub const CLUSTER_HEADER: &str = "x-nines-cluster";

pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

/// Sends `message` to the leader `leader` through `call` (one method of a
/// client built on the channel), with `session` when the client gave one.
/// Gives up as soon as this member learns of a different leader: a leader
/// that was paused or cut off never answers, and waiting out the timeout
/// kept clients of this member stalled about a second after a new leader
/// took over. The client retries at once; a write with a session never
/// applies twice.
pub async fn to_leader<Req, Resp, Fut>(
    core: &NodeCore,
    leader: &Node,
    message: Req,
    session: Option<Session>,
    call: impl FnOnce(Channel, tonic::Request<Req>) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let call = call(channel_to(core, leader)?, marked(core, message, session));
    let answer = tokio::select! {
        answer = call => answer,
        moved = leader_moved_status(core, leader) => return Err(moved),
    };
    answer.map_err(|status| failed(core, leader, status))
}

/// Resolves, once this member sees a leader other than `leader`, to what
/// the client of a call forwarded there is told.
pub(crate) async fn leader_moved_status(core: &NodeCore, leader: &Node) -> Status {
    leader_moved(core, leader).await;
    // Counted as a forward that got no answer, like a transport failure.
    let status: Status = ApiError::LeaderChanged {
        leader: core.leader(),
    }
    .into();
    note_failure(core, leader, &status);
    status
}

/// Sends `message` to `member` whoever leads (a leadership move runs on
/// its target, and the leader changes on purpose).
pub async fn to_member<Req, Resp, Fut>(
    core: &NodeCore,
    member: &Node,
    message: Req,
    call: impl FnOnce(Channel, tonic::Request<Req>) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let call = call(channel_to(core, member)?, marked(core, message, None));
    call.await.map_err(|status| failed(core, member, status))
}

/// The message, marked as forwarded by this member of this cluster, with
/// the session, and bounded by this member's own timeout.
pub(crate) fn marked<T>(
    core: &NodeCore,
    message: T,
    session: Option<Session>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    metadata.insert(FROM_HEADER, core.id.into());
    metadata.insert(CLUSTER_HEADER, core.cluster_id.into());
    session::forward(session, metadata);
    // The leader checks the same credentials (see `auth::scope`).
    if let Some(token) = core.forwarding_token() {
        if let Ok(value) = MetadataValue::try_from(token.as_str()) {
            metadata.insert(crate::auth::TOKEN_METADATA, value);
        }
    }
    request.set_timeout(core.timeout());
    request
}

/// Resolves once this member sees a leader other than `leader`. The server
/// metrics change only with the vote, role, leader or membership; the full
/// metrics change with every applied entry and would wake every forwarded
/// request on each.
async fn leader_moved(core: &NodeCore, leader: &Node) {
    let mut server = core.raft.server_metrics();
    loop {
        if server.changed().await.is_err() {
            return std::future::pending().await;
        }
        if core.leader().is_some_and(|(_, now)| now != *leader) {
            return;
        }
    }
}

/// A channel to a member's client API (its peer address serves the
/// forwarded calls too, for a member with no client address). The client
/// port, not the peer port as in etcd: forwarded load then runs on the
/// leader's client runtime, away from Raft's. With TLS each kind of port
/// is reached with its own certificates (see `tls.rs`).
pub(crate) fn channel_to(core: &NodeCore, node: &Node) -> Result<Channel, ApiError> {
    let addr = client_addr(node);
    let channel = if node.api_addr.is_empty() {
        core.pool.peer(addr)
    } else {
        core.pool.client(addr)
    };
    channel.map_err(|e| ApiError::Internal(format!("bad address {addr:?}: {e}")))
}

pub(crate) fn client_addr(node: &Node) -> &str {
    if node.api_addr.is_empty() {
        &node.raft_addr
    } else {
        &node.api_addr
    }
}

/// The failure of a forwarded call as the client sees it, counted and
/// logged (once per interval per kind: every request on a follower can
/// fail the same way at once) when it is a failure to get an answer rather
/// than the other member's answer to the request itself.
pub(crate) fn failed(core: &NodeCore, target: &Node, status: Status) -> Status {
    note_failure(core, target, &status);
    ApiError::Forward(status).into()
}

fn note_failure(core: &NodeCore, target: &Node, status: &Status) {
    let kind = match status.code() {
        Code::Unavailable => Some("forward_unavailable"),
        Code::DeadlineExceeded => Some("forward_deadline"),
        Code::Cancelled => Some("forward_cancelled"),
        Code::Unknown => Some("forward_unknown"),
        Code::Internal => Some("forward_internal"),
        _ => None,
    };
    if let Some(kind) = kind {
        Counters::inc(&core.counters.forward_failures);
        if let Some(suppressed) = crate::observe::say(kind) {
            tracing::warn!(
                view = %crate::observe::View::of_raft(&core.raft),
                leader_addr = %client_addr(target),
                code = ?status.code(),
                suppressed,
                "forwarding to the leader failed: {}",
                status.message()
            );
        }
    }
}

/// The peer port serves client calls only when a member of this cluster
/// forwarded them: a firewalled client port must not be bypassed there.
pub fn check_forwarded_by_member(core: &NodeCore, metadata: &MetadataMap) -> Result<u64, ApiError> {
    let number = |name: &str| -> Option<u64> { metadata.get(name)?.to_str().ok()?.parse().ok() };
    let denied = |why: &str| Err(ApiError::NotForwarded(why.to_string()));
    if !metadata.contains_key(FORWARDED_HEADER) {
        return denied("the peer port serves only members; use the client port");
    }
    if number(CLUSTER_HEADER) != Some(core.cluster_id) {
        return denied("forwarded from another cluster");
    }
    let Some(from) = number(FROM_HEADER) else {
        return denied("forwarded call without a sender");
    };
    if !core.is_member(from) {
        return denied(&format!("node {from} is not a member of this cluster"));
    }
    Ok(from)
}

/// Set on a call that arrived on the peer port from member `.0` (checked
/// by [`check_forwarded_by_member`]); never on a client-port call.
#[derive(Debug, Clone, Copy)]
pub struct PeerMember(pub u64);

/// Sends `message` to `member`'s peer port, marked as this member's.
pub async fn to_peer_port<Req, Resp, Fut>(
    core: &NodeCore,
    member: &Node,
    message: Req,
    call: impl FnOnce(Channel, tonic::Request<Req>) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let channel = core
        .pool
        .peer(&member.raft_addr)
        .map_err(|e| ApiError::Internal(format!("bad address {:?}: {e}", member.raft_addr)))?;
    call(channel, marked(core, message, None)).await
}

/// A write's response, by the revision its header names.
pub trait Headed {
    fn revision(&self) -> Option<i64>;
}

macro_rules! headed {
    ($($t:ty),*) => {$(
        impl Headed for $t {
            fn revision(&self) -> Option<i64> {
                self.header.as_ref().map(|h| h.revision)
            }
        }
    )*};
}
headed!(
    epb::PutResponse,
    epb::DeleteRangeResponse,
    epb::TxnResponse,
    epb::CompactionResponse,
    epb::LeaseRevokeResponse
);

/// The leader's answer to a forwarded write, passed on once this member's
/// store has reached the revision it names: etcd answers from the member
/// that was called after that member applied the write, so a serializable
/// read there sees it.
pub async fn caught_up<Resp: Headed>(
    core: &NodeCore,
    answer: Result<Response<Resp>, Status>,
) -> Result<Response<Resp>, Status> {
    let answer = answer?;
    if let Some(revision) = answer.get_ref().revision() {
        core.reach_revision(revision).await;
    }
    Ok(answer)
}
