//! The endpoint set: lazily connected channels, the cached leader, and the
//! read-balancing statistics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::client::ReadBalance;
use crate::error::ClientError;

pub struct Endpoint {
    pub addr: String,
    pub channel: Channel,
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
}

fn normalize(addr: &str) -> String {
    let addr = addr.trim();
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Endpoints {
    pub fn new(addrs: &[String], connect_timeout: Duration) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let this = Endpoints {
            list: RwLock::new(Vec::new()),
            leader: AtomicUsize::new(usize::MAX),
            next: AtomicUsize::new(0),
            connect_timeout,
        };
        for addr in addrs {
            this.add(addr)?;
        }
        Ok(this)
    }

    /// Adds an endpoint (a leader hint may name one we were not given).
    pub fn add(&self, addr: &str) -> Result<usize, ClientError> {
        let url = normalize(addr);
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = list.iter().position(|e| e.addr == url) {
            return Ok(i);
        }
        let channel = TonicEndpoint::from_shared(url.clone())
            .map_err(|_| ClientError::InvalidEndpoint(addr.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        list.push(std::sync::Arc::new(Endpoint {
            addr: url,
            channel,
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
