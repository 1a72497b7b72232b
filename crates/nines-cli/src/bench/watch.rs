//! `nines bench --workload watch`: N watchers on one prefix (each its own
//! watch stream, spread over the connections and so over the members)
//! while one writer puts under it at a steady rate. Reports events
//! delivered per second and the latency from a put's acknowledgment to each
//! watcher receiving its event. An event that arrives before its put's
//! acknowledgment (the server applies, then answers) counts as 1 µs.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

use super::backend::Backend;
use super::report::{print_table, BenchReport, Latency};
use super::run::BenchArgs;

const PREFIX: &[u8] = b"bench/watch/";

/// When recent revisions were acknowledged, without a lock: slot
/// `revision % SLOTS` holds the revision and its ack time (ns since start).
struct Acks {
    start: Instant,
    revisions: Vec<AtomicI64>,
    nanos: Vec<AtomicU64>,
}

const SLOTS: usize = 1 << 16;

impl Acks {
    fn new() -> Self {
        Acks {
            start: Instant::now(),
            revisions: (0..SLOTS).map(|_| AtomicI64::new(0)).collect(),
            nanos: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn acked(&self, revision: i64) {
        let slot = revision as usize % SLOTS;
        let at = self.start.elapsed().as_nanos() as u64;
        self.nanos[slot].store(at, Ordering::Relaxed);
        self.revisions[slot].store(revision, Ordering::Release);
    }

    /// Since the ack of `revision`, or None if it is not known (yet).
    fn since(&self, revision: i64, now: Instant) -> Option<Duration> {
        let slot = revision as usize % SLOTS;
        if self.revisions[slot].load(Ordering::Acquire) != revision {
            return None;
        }
        let at = self.start + Duration::from_nanos(self.nanos[slot].load(Ordering::Relaxed));
        Some(now.saturating_duration_since(at))
    }
}

/// Two significant figures (1%): every watcher records into its own
/// histogram, and at three figures 1,000 of them are 140 MB (21 MB at
/// two) that events land in all over. At 1,000 watchers the bench's own
/// CPU per run went from 6.0-6.1 s to 5.4-5.9 s (three alternating runs
/// each), on the same machine as the members it measures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("histogram bounds")
}

/// One watcher's tally, merged into the total when its stream ends.
pub struct Recorder {
    acks: Arc<Acks>,
    measuring: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    merged: Arc<Mutex<Histogram<u64>>>,
    local: Histogram<u64>,
    count: u64,
}

impl Recorder {
    /// An event of `revision` arrived at `now`.
    pub fn event(&mut self, revision: i64, now: Instant) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let micros = self
            .acks
            .since(revision, now)
            .map_or(1, |d| d.as_micros() as u64);
        let _ = self.local.record(micros.max(1));
        self.count += 1;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.events.fetch_add(self.count, Ordering::Relaxed);
        let _ = self
            .merged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&self.local);
    }
}

pub async fn run(
    args: BenchArgs,
    endpoints: Vec<String>,
    tls: Option<nines_client::TlsFiles>,
    json: bool,
) -> Result<()> {
    let backend =
        Arc::new(Backend::connect(&args.target, &endpoints, tls, args.connections).await?);
    let acks = Arc::new(Acks::new());
    let measuring = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let merged = Arc::new(Mutex::new(histogram()));
    eprintln!("starting {} watchers ...", args.watchers);
    let mut streams = Vec::new();
    for w in 0..args.watchers.max(1) {
        let recorder = Recorder {
            acks: acks.clone(),
            measuring: measuring.clone(),
            events: events.clone(),
            merged: merged.clone(),
            local: histogram(),
            count: 0,
        };
        let prefix = PREFIX.to_vec();
        streams.push(
            backend
                .watch_prefix(w, prefix, args.watch_prev_kv, recorder)
                .await?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_steadily(
        backend.clone(),
        args.clone(),
        acks.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (puts, put_latency) = writer.await??;
    // Ending the streams drops their recorders, which merge their tallies.
    for stream in &streams {
        stream.abort();
    }
    for stream in streams {
        let _ = tokio::time::timeout(Duration::from_secs(10), stream).await;
    }
    let delivered = events.load(Ordering::Relaxed);
    let histogram = merged.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let report = BenchReport {
        target: args.target.clone(),
        workload: format!("watch-{}", args.watchers),
        clients: args.watchers,
        connections: args.connections,
        value_size: args.value_size,
        duration_s: elapsed,
        ops: delivered,
        errors: 0,
        throughput: delivered as f64 / elapsed,
        latency: Latency::from_histogram(&histogram),
        fsync_floor: None,
    };
    // The writer is serial, so its put latency bounds the event rate: a
    // put slower than the tick costs a tick (`Skip`).
    eprintln!(
        "writer: {puts} puts acknowledged, put p50 {} µs, p99 {} µs; events/s below, latency put-ack -> event",
        put_latency.value_at_quantile(0.5),
        put_latency.value_at_quantile(0.99),
    );
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Puts at `--watch-rate` per second (or as fast as acks come), noting
/// when each revision was acknowledged; returns the puts made and their
/// latencies (µs).
async fn write_steadily(
    backend: Arc<Backend>,
    args: BenchArgs,
    acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
) -> Result<(u64, Histogram<u64>)> {
    let mut latency = histogram();
    let value = vec![b'w'; args.value_size];
    let every = Duration::from_secs_f64(1.0 / args.watch_rate.max(1) as f64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(format!("{:06}", n % args.keys.max(1)).as_bytes());
        let sent = Instant::now();
        let revision = backend.put_revision(0, key, value.clone()).await?;
        acks.acked(revision);
        let _ = latency.record((sent.elapsed().as_micros() as u64).max(1));
        n += 1;
    }
    Ok((n, latency))
}
