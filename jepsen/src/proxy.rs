//! A fault-injecting TCP proxy in front of every node's peer port.
//!
//! Nodes advertise the proxy's address as their peer address, so all Raft
//! traffic and follower→leader forwarding crosses it. Each node opens its
//! peer connections from its own loopback IP (`--peer-source-ip
//! 127.0.0.{10+id}`), so the proxy knows who is calling from the accepted
//! socket's peer address and which node is called from the listener. A
//! partition is a set of blocked (from, to) pairs: new connections across a
//! blocked pair are refused and live ones are cut, which is real packet loss
//! from the servers' point of view (not a simulated error).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub type Blocked = BTreeSet<(u64, u64)>;

/// The loopback address node `id` connects to its peers from.
pub fn source_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, (10 + id) as u8)
}

/// The node behind a source address; `None` for clients and tools.
pub fn node_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 127 && o[1] == 0 && o[2] == 0 && o[3] > 10 && o[3] < 100)
                .then(|| (o[3] - 10) as u64)
        }
        IpAddr::V6(_) => None,
    }
}

#[derive(Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub cut: AtomicU64,
}

pub struct Proxy {
    blocked: watch::Sender<Blocked>,
    pub stats: Arc<Stats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    pub fn new() -> Proxy {
        Proxy {
            blocked: watch::Sender::new(Blocked::new()),
            stats: Arc::default(),
            tasks: Vec::new(),
        }
    }

    /// Listens on a fresh loopback port on behalf of node `to`, forwarding to
    /// `target`; returns the listening address.
    pub async fn add_route(&mut self, to: u64, target: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind proxy")?;
        let addr = listener.local_addr()?;
        let blocked = self.blocked.subscribe();
        let stats = self.stats.clone();
        self.tasks.push(tokio::spawn(accept_loop(
            listener, to, target, blocked, stats,
        )));
        Ok(addr)
    }

    /// Replaces the partition: refuses new connections across `blocked` and
    /// cuts the live ones.
    pub fn set_blocked(&self, blocked: Blocked) {
        self.blocked.send_replace(blocked);
    }

    pub fn heal(&self) {
        self.set_blocked(Blocked::new());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    to: u64,
    target: SocketAddr,
    blocked: watch::Receiver<Blocked>,
    stats: Arc<Stats>,
) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            // Out of file descriptors or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let from = node_of(peer.ip());
        let pair = from.map(|f| (f, to));
        if pair.is_some_and(|p| blocked.borrow().contains(&p)) {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(relay(inbound, target, pair, blocked.clone(), stats.clone()));
    }
}

/// Copies bytes both ways until either side closes or the pair gets blocked.
async fn relay(
    mut inbound: TcpStream,
    target: SocketAddr,
    pair: Option<(u64, u64)>,
    mut blocked: watch::Receiver<Blocked>,
    stats: Arc<Stats>,
) {
    let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await;
    let Ok(Ok(mut outbound)) = connect else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let Some(pair) = pair else {
        // Clients are never partitioned.
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        return;
    };
    let cut = async {
        loop {
            if blocked.borrow_and_update().contains(&pair) {
                return;
            }
            if blocked.changed().await.is_err() {
                // The proxy is gone: never cut.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut => {
            stats.cut.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Dropping both sockets closes them; with SO_LINGER unset the peer sees
    // an orderly close or a reset, either way the connection is gone.
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn maps_source_ips_to_nodes() {
        assert_eq!(node_of(IpAddr::V4(source_ip(3))), Some(3));
        assert_eq!(node_of("127.0.0.1".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn forwards_refuses_and_cuts() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut proxy = Proxy::new();
        let addr = proxy.add_route(2, echo_addr).await.unwrap();
        let connect_from = |id: u64| async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(IpAddr::V4(source_ip(id)), 0))
                .unwrap();
            sock.connect(addr).await.unwrap()
        };
        let roundtrip = |mut s: TcpStream| async move {
            s.write_all(b"hi").await.ok()?;
            let mut buf = [0u8; 2];
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(s)
        };
        let live = roundtrip(connect_from(1).await).await.expect("forwarded");
        proxy.set_blocked(Blocked::from([(1, 2)]));
        // Live connection cut: the next read sees EOF or an error.
        let mut live = live;
        let mut buf = [0u8; 2];
        let read = tokio::time::timeout(Duration::from_secs(2), live.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // New connections from 1 are refused; from 3 they pass.
        assert!(roundtrip(connect_from(1).await).await.is_none());
        assert!(roundtrip(connect_from(3).await).await.is_some());
        proxy.heal();
        assert!(roundtrip(connect_from(1).await).await.is_some());
    }
}
