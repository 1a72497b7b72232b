//! `nines bench --workload lease-keepalive`: grants `--leases` leases,
//! then keeps them alive as fast as the server answers over a few
//! LeaseKeepAlive streams (`--connections`, spread over the endpoints, or
//! all on the leader with `--leader-only`),
//! each with `--clients / --connections` keepalives in flight, cycling
//! through its share of the leases. Reports keepalives answered per second
//! and the latency from sending one to its answer; a keepalive answered
//! TTL 0 (a lease lost) is an error.
//!
//! Both targets are driven through nines-client's raw keepalive streams:
//! they speak etcd's API on the wire, while etcd-client opens one stream
//! per lease and sends one keepalive at a time, which would measure the
//! client instead of the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use nines_client::{Client, ClientConfig};

use super::report::{print_table, BenchReport, Latency};
use super::run::BenchArgs;

/// Long enough that no lease expires between two of its keepalives
/// whatever the load; revoked at the end.
const LEASE_TTL: i64 = 60;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    answered: AtomicU64,
    errors: AtomicU64,
    merged: Mutex<Histogram<u64>>,
}

pub async fn run(args: BenchArgs, endpoints: Vec<String>, json: bool) -> Result<()> {
    if !matches!(args.target.as_str(), "nines" | "etcd") {
        return Err(anyhow!("unknown target {:?} (nines, etcd)", args.target));
    }
    let mut config = ClientConfig::new(endpoints);
    config.request_timeout = Duration::from_secs(10);
    let client = Client::new(config)?;
    let leader = client.discover_leader().await;
    // Streams go to endpoint (first + s): spread from 0, or all on the
    // leader (its index, with `endpoints.len()` added per stream).
    let (first, step) = match (args.leader_only, leader) {
        (false, _) => (0, 1),
        (true, Some(addr)) => {
            let all = client.endpoints();
            let at = all
                .iter()
                .position(|e| e == &addr || e.strip_prefix("http://") == Some(addr.as_str()))
                .ok_or_else(|| anyhow!("the leader {addr} is not among the endpoints"))?;
            (at, all.len())
        }
        (true, None) => return Err(anyhow!("no leader found for --leader-only")),
    };
    eprintln!("granting {} leases ...", args.leases);
    let ids = grant_all(&client, args.leases.max(1)).await?;
    let streams = args.connections.max(1);
    let window = (args.clients / streams).max(1);
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        answered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        merged: Mutex::new(histogram()),
    });
    let mut tasks = Vec::new();
    for s in 0..streams {
        let owned: Vec<i64> = ids.iter().copied().skip(s).step_by(streams).collect();
        if owned.is_empty() {
            continue;
        }
        let (client, shared) = (client.clone(), shared.clone());
        let endpoint = first + s * step;
        tasks.push(tokio::spawn(keep_stream(
            client, endpoint, owned, window, shared,
        )));
    }
    tokio::time::sleep(args.warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    revoke_all(&client, &ids).await;
    let answered = shared.answered.load(Ordering::Relaxed);
    let histogram = shared
        .merged
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let report = BenchReport {
        target: args.target.clone(),
        workload: format!(
            "lease-keepalive-{}{}",
            ids.len(),
            if args.leader_only { "-leader" } else { "" }
        ),
        clients: window * streams,
        connections: streams,
        value_size: 0,
        duration_s: elapsed,
        ops: answered,
        errors: shared.errors.load(Ordering::Relaxed),
        throughput: answered as f64 / elapsed,
        latency: Latency::from_histogram(&histogram),
        fsync_floor: None,
    };
    eprintln!("keepalives/s below, latency send -> answer");
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Grants `n` leases, 64 at a time.
async fn grant_all(client: &Client, n: usize) -> Result<Vec<i64>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n.min(64) {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                ids.push(client.lease_grant(LEASE_TTL, 0).await?.id);
            }
            Ok::<_, nines_client::ClientError>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok(ids)
}

/// Best effort: the leases would expire on their own a TTL later, into
/// the next run's measurement.
async fn revoke_all(client: &Client, ids: &[i64]) {
    let mut tasks = Vec::new();
    for chunk in ids.chunks(ids.len().div_ceil(64).max(1)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let _ = client.lease_revoke(id).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One stream on endpoint `s` (modulo their number), keeping `window` keepalives of `owned`
/// in flight until told to stop.
async fn keep_stream(
    client: Client,
    s: usize,
    owned: Vec<i64>,
    window: usize,
    shared: Arc<Shared>,
) -> Result<()> {
    let window = window.min(owned.len());
    let mut sent: HashMap<i64, Instant> = HashMap::with_capacity(window);
    let now = Instant::now();
    for &id in &owned[..window] {
        sent.insert(id, now);
    }
    let mut stream = client.lease_keep_alive_stream(s, &owned[..window]).await?;
    let mut cursor = window % owned.len();
    let mut local = histogram();
    let (mut answered, mut errors) = (0u64, 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .map_err(|_| anyhow!("no keepalive answered for 10 s"))??
            .ok_or_else(|| anyhow!("the server ended a keepalive stream"))?;
        let Some(at) = sent.remove(&resp.id) else {
            continue;
        };
        if shared.measuring.load(Ordering::Relaxed) {
            if resp.ttl > 0 {
                let _ = local.record(at.elapsed().as_micros().max(1) as u64);
                answered += 1;
            } else {
                errors += 1;
            }
        }
        // The next lease not already in flight.
        while sent.contains_key(&owned[cursor]) {
            cursor = (cursor + 1) % owned.len();
        }
        let id = owned[cursor];
        cursor = (cursor + 1) % owned.len();
        sent.insert(id, Instant::now());
        stream.send(id).await?;
    }
    shared.answered.fetch_add(answered, Ordering::Relaxed);
    shared.errors.fetch_add(errors, Ordering::Relaxed);
    let _ = shared
        .merged
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add(&local);
    Ok(())
}
