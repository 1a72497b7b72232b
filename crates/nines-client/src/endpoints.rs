//! The endpoint set: lazily connected channels, the cached leader, and the
//! read-balancing statistics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use nines_tls::Connector;
use tonic::transport::Channel;

use crate::auth::{AuthChannel, TokenInterceptor};
use crate::client::ReadBalance;
use crate::error::ClientError;

pub struct Endpoint {
    pub addr: String,
    /// Every call but Authenticate goes here: it carries the token.
    pub channel: AuthChannel,
    /// Without the token, for Authenticate.
    pub raw: Channel,
    pub outstanding: AtomicU64,
    /// Exponentially weighted mean latency, in microseconds (0 = unknown).
    pub latency_us: AtomicU64,
}

impl Endpoint {
    pub fn record_latency(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }
}

pub struct Endpoints {
    list: RwLock<Vec<std::sync::Arc<Endpoint>>>,
    /// Index of the believed leader, or usize::MAX.
    leader: AtomicUsize,
    next: AtomicUsize,
    connect_timeout: Duration,
    /// Opens every connection: TLS for all endpoints or for none.
    connector: Connector,
    interceptor: TokenInterceptor,
}

/// The endpoint as a URL with the scheme the client's TLS setting makes
/// true: `host:port`, `http://` and `https://` name the same endpoint.
/// Without TLS, `https://` is refused: there is no CA to verify it with.
fn normalize(addr: &str, tls: bool) -> Option<String> {
    let addr = addr.trim();
    if addr.starts_with("https://") && !tls {
        return None;
    }
    let bare = nines_tls::strip_scheme(addr);
    if bare.is_empty() || bare.contains("://") {
        return None;
    }
    Some(format!("{}://{bare}", if tls { "https" } else { "http" }))
}

impl Endpoints {
    pub fn new(
        addrs: &[String],
        connect_timeout: Duration,
        connector: Connector,
        interceptor: TokenInterceptor,
    ) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let this = Endpoints {
            list: RwLock::new(Vec::new()),
            leader: AtomicUsize::new(usize::MAX),
            next: AtomicUsize::new(0),
            connect_timeout,
            connector,
            interceptor,
        };
        for addr in addrs {
            this.add(addr)?;
        }
        Ok(this)
    }

    /// Adds an endpoint (a leader hint may name one we were not given).
    pub fn add(&self, addr: &str) -> Result<usize, ClientError> {
        let url = normalize(addr, self.connector.is_tls())
            .ok_or_else(|| ClientError::InvalidEndpoint(addr.to_string()))?;
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = list.iter().position(|e| e.addr == url) {
            return Ok(i);
        }
        let connect_timeout = self.connect_timeout;
        let channel = self
            .connector
            .channel(&url, |endpoint| {
                endpoint
                    .connect_timeout(connect_timeout)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
            })
            .map_err(|_| ClientError::InvalidEndpoint(addr.to_string()))?;
        list.push(std::sync::Arc::new(Endpoint {
            addr: url,
            channel: AuthChannel::new(channel.clone(), self.interceptor.clone()),
            raw: channel,
            outstanding: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
        }));
        Ok(list.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.list.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn get(&self, i: usize) -> std::sync::Arc<Endpoint> {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        list[i % list.len()].clone()
    }

    pub fn all(&self) -> Vec<std::sync::Arc<Endpoint>> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn leader(&self) -> Option<usize> {
        let i = self.leader.load(Ordering::Relaxed);
        (i != usize::MAX).then_some(i)
    }

    pub fn set_leader(&self, i: Option<usize>) {
        self.leader
            .store(i.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    pub fn set_leader_addr(&self, addr: &str) {
        if let Ok(i) = self.add(addr) {
            self.set_leader(Some(i));
        }
    }

    /// The endpoint for attempt `attempt` of a leader-bound request: the
    /// leader when known, else rotate.
    pub fn for_leader(&self, attempt: u32) -> usize {
        match self.leader() {
            Some(i) if attempt == 0 || attempt % 3 != 2 => i,
            _ => self.next.fetch_add(1, Ordering::Relaxed) % self.len(),
        }
    }

    /// The endpoint for a serializable read.
    pub fn for_read(&self, balance: ReadBalance, attempt: u32) -> usize {
        let list = self.all();
        if attempt > 0 || balance == ReadBalance::RoundRobin {
            return self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        }
        let key = |e: &Endpoint| match balance {
            ReadBalance::LeastOutstanding => e.outstanding.load(Ordering::Relaxed),
            _ => e.latency_us.load(Ordering::Relaxed),
        };
        // Ties (e.g. all unknown) rotate so every endpoint gets measured.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..list.len())
            .map(|k| (start + k) % list.len())
            .min_by_key(|&i| key(&list[i]))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn schemes_follow_the_tls_setting() {
        assert_eq!(normalize("h:1", false).as_deref(), Some("http://h:1"));
        assert_eq!(
            normalize("http://h:1/", false).as_deref(),
            Some("http://h:1")
        );
        assert_eq!(normalize("https://h:1", false), None);
        assert_eq!(normalize("h:1", true).as_deref(), Some("https://h:1"));
        assert_eq!(
            normalize("https://h:1", true).as_deref(),
            Some("https://h:1")
        );
        assert_eq!(normalize("unix://x", true), None);
    }
}
