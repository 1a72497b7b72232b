//! `nines bench --workload watch`: N watchers on one prefix (each its own
//! watch stream, spread over the connections and so over the members)
//! while one writer puts under it at a steady rate. Reports events
//! delivered per second and the latency from a put's acknowledgment to each
//! watcher receiving its event. An event that arrives before its put's
//! acknowledgment (the server applies, then answers) counts as 1 µs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use super::backend::Backend;
use super::report::{print_table, BenchReport, Latency};
use super::run::BenchArgs;

const PREFIX: &[u8] = b"bench/watch/";

/// When each revision the writer produced was acknowledged.
type Acks = Arc<Mutex<HashMap<i64, Instant>>>;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

pub async fn run(args: BenchArgs, endpoints: Vec<String>, json: bool) -> Result<()> {
    let backend = Arc::new(Backend::connect(&args.target, &endpoints, args.connections).await?);
    let acks: Acks = Arc::default();
    let measuring = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let merged = Arc::new(Mutex::new(histogram()));
    // Watchers first; each reports its revisions through a channel so the
    // stream reading stays cheap.
    eprintln!("starting {} watchers ...", args.watchers);
    let mut watchers = Vec::new();
    let mut streams = Vec::new();
    for w in 0..args.watchers.max(1) {
        let (tx, rx) = mpsc::channel::<(i64, Instant)>(1024);
        streams.push(backend.watch_prefix(w, PREFIX.to_vec(), tx).await?);
        let (acks, measuring, events, merged) = (
            acks.clone(),
            measuring.clone(),
            events.clone(),
            merged.clone(),
        );
        watchers.push(tokio::spawn(record(rx, acks, measuring, events, merged)));
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
    let puts = writer.await??;
    // Ending the streams drops their senders, which ends the recorders.
    for stream in streams {
        stream.abort();
    }
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
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
    eprintln!("writer: {puts} puts acknowledged; events/s below, latency put-ack -> event");
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// One watcher's bookkeeping: latency of each event it got while measuring.
async fn record(
    mut rx: mpsc::Receiver<(i64, Instant)>,
    acks: Acks,
    measuring: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    merged: Arc<Mutex<Histogram<u64>>>,
) {
    let mut local = histogram();
    while let Some((revision, arrived)) = rx.recv().await {
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        let acked = acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&revision)
            .copied();
        let micros = acked.map_or(1, |at| {
            arrived.saturating_duration_since(at).as_micros() as u64
        });
        let _ = local.record(micros.max(1));
        events.fetch_add(1, Ordering::Relaxed);
    }
    let _ = merged.lock().unwrap_or_else(|e| e.into_inner()).add(&local);
}

/// Puts at `--watch-rate` per second (or as fast as acks come), noting
/// when each revision was acknowledged.
async fn write_steadily(
    backend: Arc<Backend>,
    args: BenchArgs,
    acks: Acks,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let value = vec![b'w'; args.value_size];
    let every = Duration::from_secs_f64(1.0 / args.watch_rate.max(1) as f64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(format!("{:06}", n % args.keys.max(1)).as_bytes());
        let revision = backend.put_revision(0, key, value.clone()).await?;
        acks.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(revision, Instant::now());
        n += 1;
    }
    Ok(n)
}
