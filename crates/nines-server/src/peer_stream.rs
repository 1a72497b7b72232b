//! Small request-reply exchanges with a peer (a follower's read index
//! asks, a leader's vote checks) go over long-lived streams, a few per
//! peer address, instead of a unary call each: a unary call opens an
//! HTTP/2 stream with headers and trailers on both sides and goes through
//! the server's routing and request metrics, which made a read index ask
//! cost the leader about as much CPU as a heartbeat (`nines bench
//! --workload get --target etcd` over all members, README Benchmarks).
//!
//! A stream is out of the pool while its request is unanswered and goes
//! back only with the reply read, so an exchange dropped mid-flight (its
//! timeout, or the leader moving) takes the stream with it: a late reply
//! is never read as the next request's (the append stream's rule,
//! `network/client.rs` `exchange`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::SinkExt;
use nines_proto::raft_client::RaftClient;
use nines_proto::{ReadIndexReply, ReadIndexRequest, VoteCheckReply, VoteCheckRequest};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Peer addresses remembered at most: a member list's worth, so a cluster
/// whose members came and went cannot grow the pool without bound.
const MAX_ADDRESSES: usize = 16;

/// Idle streams kept per address: exchanges overlap when a round moves on
/// at a quorum's replies while the slowest peer's is still out.
const MAX_IDLE: usize = 4;

/// Exchanges in flight per address, past which more fail at once: a peer
/// that stopped answering (paused, cut off) would otherwise collect one
/// stream per leadership check until each timed out.
const MAX_IN_FLIGHT: usize = 4;

/// How long a peer that refused the stream is called unary before the
/// stream is tried again: it may since have been upgraded at the same
/// address, and a vote check has no unary form (such a voter would never
/// confirm a read again).
const UNARY_FOR: Duration = Duration::from_secs(30);

/// One kind of exchange: how to open its stream, and its unary fallback
/// for a peer without the stream (an older version).
pub trait Exchange: Send + Sync + 'static {
    type Request: Send + 'static;
    type Reply: Send + 'static;
    fn open(
        channel: Channel,
        outbound: mpsc::Receiver<Self::Request>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Reply>, Status>> + Send;
    fn unary(
        channel: Channel,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Reply, Status>> + Send;
}

struct Stream<E: Exchange> {
    requests: mpsc::Sender<E::Request>,
    replies: tonic::Streaming<E::Reply>,
}

struct Slot<E: Exchange> {
    /// The peer had no such stream: unary calls until then.
    unary_until: Option<Instant>,
    idle: Vec<Stream<E>>,
    in_flight: usize,
}

impl<E: Exchange> Default for Slot<E> {
    fn default() -> Self {
        Self {
            unary_until: None,
            idle: Vec::new(),
            in_flight: 0,
        }
    }
}

/// Counts an exchange in flight until dropped (finished or abandoned).
struct InFlight<'a, E: Exchange> {
    pool: &'a StreamPool<E>,
    addr: &'a str,
}

impl<E: Exchange> Drop for InFlight<'_, E> {
    fn drop(&mut self) {
        if let Some(slot) = self.pool.lock().get_mut(self.addr) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }
}

/// Idle streams by peer address.
pub struct StreamPool<E: Exchange> {
    slots: Arc<Mutex<HashMap<String, Slot<E>>>>,
    unary_for: Duration,
}

impl<E: Exchange> Clone for StreamPool<E> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
            unary_for: self.unary_for,
        }
    }
}

impl<E: Exchange> Default for StreamPool<E> {
    fn default() -> Self {
        Self {
            slots: Arc::default(),
            unary_for: UNARY_FOR,
        }
    }
}

/// What an exchange starts from, counted in flight until dropped.
struct Taken<'a, E: Exchange> {
    /// The peer takes unary calls only.
    unary: bool,
    idle: Option<Stream<E>>,
    _in_flight: InFlight<'a, E>,
}

impl<E: Exchange> StreamPool<E> {
    /// One exchange with the peer at `addr` over `channel`, streamed when
    /// it can be. The caller bounds the time.
    pub async fn exchange(
        &self,
        addr: &str,
        channel: Channel,
        request: E::Request,
    ) -> Result<E::Reply, Status> {
        let taken = self.take(addr)?;
        if taken.unary {
            return E::unary(channel, request).await;
        }
        let mut stream = match taken.idle {
            Some(stream) => stream,
            None => {
                let (requests, outbound) = mpsc::channel(1);
                match E::open(channel.clone(), outbound).await {
                    Ok(replies) => Stream { requests, replies },
                    Err(status) if status.code() == Code::Unimplemented => {
                        let until = Instant::now() + self.unary_for;
                        self.lock().entry(addr.to_string()).or_default().unary_until = Some(until);
                        return E::unary(channel, request).await;
                    }
                    Err(status) => return Err(status),
                }
            }
        };
        stream
            .requests
            .send(request)
            .await
            .map_err(|_| Status::unavailable("the peer stream closed"))?;
        match stream.replies.message().await? {
            Some(reply) => {
                self.put(addr, stream);
                Ok(reply)
            }
            None => Err(Status::unavailable("the peer ended the stream")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot<E>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle stream for `addr` if there is one, or the word to call
    /// unary; refused while `MAX_IN_FLIGHT` are out.
    fn take<'a>(&'a self, addr: &'a str) -> Result<Taken<'a, E>, Status> {
        let mut map = self.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(addr) {
            // Forget the peers with nothing out: a slot with exchanges in
            // flight stays, or their guards would count down its successor
            // and let more than `MAX_IN_FLIGHT` out.
            map.retain(|_, slot| slot.in_flight > 0);
            if map.len() >= MAX_ADDRESSES {
                return Err(Status::unavailable(format!(
                    "exchanges with {MAX_ADDRESSES} other peers unanswered"
                )));
            }
        }
        let slot = map.entry(addr.to_string()).or_default();
        if slot.in_flight >= MAX_IN_FLIGHT {
            return Err(Status::unavailable(format!(
                "{MAX_IN_FLIGHT} exchanges with {addr} unanswered"
            )));
        }
        slot.in_flight += 1;
        let unary = slot.unary_until.is_some_and(|until| Instant::now() < until);
        Ok(Taken {
            unary,
            idle: if unary { None } else { slot.idle.pop() },
            _in_flight: InFlight { pool: self, addr },
        })
    }

    fn put(&self, addr: &str, stream: Stream<E>) {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(addr) {
            if slot.idle.len() < MAX_IDLE {
                slot.idle.push(stream);
            }
        }
    }

    #[cfg(test)]
    fn with_unary_for(unary_for: Duration) -> Self {
        Self {
            slots: Arc::default(),
            unary_for,
        }
    }

    #[cfg(test)]
    fn idle(&self, addr: &str) -> usize {
        self.lock().get(addr).map_or(0, |slot| slot.idle.len())
    }
}

/// A follower's read index ask (`read_index.rs`).
pub struct Ask;

impl Exchange for Ask {
    type Request = ReadIndexRequest;
    type Reply = ReadIndexReply;
    async fn open(
        channel: Channel,
        outbound: mpsc::Receiver<ReadIndexRequest>,
    ) -> Result<tonic::Streaming<ReadIndexReply>, Status> {
        let replies = RaftClient::new(channel).read_index_stream(outbound).await?;
        Ok(replies.into_inner())
    }
    async fn unary(channel: Channel, request: ReadIndexRequest) -> Result<ReadIndexReply, Status> {
        let reply = RaftClient::new(channel).read_index(request).await?;
        Ok(reply.into_inner())
    }
}

/// A leader's vote check (`vote_check.rs`).
pub struct Check;

impl Exchange for Check {
    type Request = VoteCheckRequest;
    type Reply = VoteCheckReply;
    async fn open(
        channel: Channel,
        outbound: mpsc::Receiver<VoteCheckRequest>,
    ) -> Result<tonic::Streaming<VoteCheckReply>, Status> {
        let replies = RaftClient::new(channel).vote_check_stream(outbound).await?;
        Ok(replies.into_inner())
    }
    /// No unary form: a peer without the stream gets openraft's round.
    async fn unary(_: Channel, _: VoteCheckRequest) -> Result<VoteCheckReply, Status> {
        Err(Status::unimplemented("the peer has no vote check stream"))
    }
}

#[cfg(test)]
#[path = "peer_stream_tests.rs"]
mod tests;
