//! Which peers answered this node's Raft RPCs recently, and the probe a
//! leader sends to a candidate member before adding it.
//!
//! openraft 0.9 reports only when a quorum last acknowledged the leader, not
//! which voters did; membership checks need the latter.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nines_proto::raft_client::RaftClient;
use nines_proto::{ProbeReply, ProbeRequest};
use nines_tls::Connector;
use nines_types::NodeId;
use tonic::transport::Endpoint;

#[derive(Clone, Copy, Default)]
struct PeerState {
    last_ok: Option<Instant>,
    last_err: Option<Instant>,
}

/// Last answer per peer, fed by every Raft RPC this node sends. Keys are
/// node ids openraft replicates to, i.e. members, so it stays small.
#[derive(Clone, Default)]
pub struct PeerLiveness {
    peers: Arc<Mutex<HashMap<NodeId, PeerState>>>,
}

impl PeerLiveness {
    /// `answered`: the peer sent back a decodable Raft reply (a Raft-level
    /// error included): it is up and is the node we meant.
    pub fn record(&self, id: NodeId, answered: bool) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let state = peers.entry(id).or_default();
        if answered {
            state.last_ok = Some(now);
        } else {
            state.last_err = Some(now);
        }
    }

    /// Time since `id` last answered, if it ever did.
    pub fn since_answer(&self, id: NodeId) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&id)?.last_ok.map(|t| t.elapsed())
    }

    /// Peers that answered within `window`.
    pub fn answered_within(&self, window: Duration) -> BTreeSet<NodeId> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .filter(|(_, s)| s.last_ok.is_some_and(|t| t.elapsed() <= window))
            .map(|(id, _)| *id)
            .collect()
    }

    /// True when the last call to `id` failed after its last answer.
    pub fn failing(&self, id: NodeId) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&id)
            .is_some_and(|s| s.last_err.is_some() && s.last_err > s.last_ok)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Asks the node at `addr` who it is, within `timeout`. A refused connection
/// is retried until then: the node may still be starting (an operator runs
/// `member add` right after starting it). Uses its own short-lived
/// connections: the shared pool keeps a channel per address forever, and an
/// address that is being vetted must not stay there if it is refused.
pub async fn probe(
    addr: &str,
    target: NodeId,
    cluster_id: u64,
    connector: &Connector,
    timeout: Duration,
) -> Result<ProbeReply, ProbeError> {
    // Checked once up front: a bad address is not worth retrying.
    Endpoint::from_shared(format!("http://{}", nines_tls::strip_scheme(addr)))
        .map_err(|e| ProbeError::Address(e.to_string()))?;
    let mut last_refusal = None;
    let attempts = async {
        loop {
            match probe_once(connector, addr, timeout, target, cluster_id).await {
                Err(ProbeError::Connect(reason)) => {
                    last_refusal = Some(reason);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                result => return result,
            }
        }
    };
    let result = tokio::time::timeout(timeout, attempts).await;
    // Say why the last attempt failed, not only that time ran out.
    result.unwrap_or_else(|_| {
        Err(last_refusal.map_or(ProbeError::Timeout(timeout), ProbeError::Connect))
    })
}

async fn probe_once(
    connector: &Connector,
    addr: &str,
    timeout: Duration,
    target: NodeId,
    cluster_id: u64,
) -> Result<ProbeReply, ProbeError> {
    // With peer TLS, a refused handshake is a connect error: retried.
    let channel = connector
        .connect(addr, |e| e.connect_timeout(timeout).timeout(timeout))
        .await
        .map_err(|e| ProbeError::Connect(error_chain(&e)))?;
    // The reply is two integers; a peer sending more is not a nines node.
    let mut client = RaftClient::new(channel).max_decoding_message_size(4096);
    client
        .probe(ProbeRequest { target, cluster_id })
        .await
        .map(|r| r.into_inner())
        .map_err(ProbeError::Refused)
}

/// tonic's transport errors say only "transport error" at the top.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_answers_per_peer() {
        let peers = PeerLiveness::default();
        assert_eq!(peers.since_answer(2), None);
        peers.record(2, false);
        assert!(peers.failing(2));
        assert!(peers.answered_within(Duration::from_secs(60)).is_empty());
        peers.record(2, true);
        peers.record(3, true);
        assert!(!peers.failing(2));
        assert!(peers.since_answer(2).unwrap() < Duration::from_secs(60));
        assert_eq!(
            peers.answered_within(Duration::from_secs(60)),
            BTreeSet::from([2, 3])
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(peers.answered_within(Duration::from_millis(1)).is_empty());
    }

    #[tokio::test]
    async fn probe_of_a_closed_port_fails_within_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let started = Instant::now();
        let plain = Connector::default();
        let err = probe(&addr, 4, 1, &plain, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Connect(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = probe("not an address/x", 4, 1, &plain, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Address(_) | ProbeError::Connect(_)),
            "{err}"
        );
    }
}
