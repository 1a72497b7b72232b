//! The closed-loop driver: C tasks, each issuing its next op as soon as the
//! previous one returns, over a fixed number of connections.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use super::backend::Backend;
use super::fsync_probe;
use super::report::{print_table, BenchReport, Latency};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// put, get, get-serializable, mixed, txn-cas, range, watch, lease-keepalive
    #[arg(long, default_value = "put")]
    pub workload: String,
    /// Leases of the `lease-keepalive` workload (kept alive over
    /// `--connections` streams, `--clients` keepalives in flight).
    #[arg(long, default_value_t = 1000)]
    pub leases: usize,
    /// `lease-keepalive`: every stream on the leader (default: spread
    /// over the endpoints, so followers forward).
    #[arg(long)]
    pub leader_only: bool,
    /// Watchers of the `watch` workload (each its own stream).
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Puts per second of the `watch` workload's one writer.
    #[arg(long, default_value_t = 500)]
    pub watch_rate: u64,
    /// The `watch` workload's watchers ask for each event's previous
    /// key-value (as Kubernetes' watch cache does).
    #[arg(long)]
    pub watch_prev_kv: bool,
    /// nines or etcd (etcd needs a build with `--features etcd`).
    #[arg(long, default_value = "nines")]
    pub target: String,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// TCP connections shared by the clients: client objects of nines'
    /// client (each to the leader), or for `--target etcd` etcd-client
    /// objects enough for that many (each connects to every endpoint:
    /// 3 objects for 8 over 3 endpoints). Watch: client objects of either,
    /// each of which spreads its streams over the members.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Distinct keys; reads and CAS pick among them, puts cycle through them.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Measured duration, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    pub warmup: Duration,
    /// Fraction of reads in `mixed`.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Keys per `range` request.
    #[arg(long, default_value_t = 100)]
    pub range_limit: i64,
    /// Skip loading the keys before read workloads.
    #[arg(long)]
    pub no_preload: bool,
    /// Also measure the fsync floor of this directory's disk.
    #[arg(long)]
    pub fsync_dir: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn key(args: &BenchArgs, n: u64) -> Vec<u8> {
    let mut k = format!("bench/{n:010}").into_bytes();
    k.resize(args.key_size.max(16), b'_');
    k
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get { serializable: bool },
    Cas,
    Range,
}

fn choose(args: &BenchArgs, rng: &mut impl Rng) -> Result<Op> {
    Ok(match args.workload.as_str() {
        "put" => Op::Put,
        "get" => Op::Get {
            serializable: false,
        },
        "get-serializable" => Op::Get { serializable: true },
        "mixed" if rng.gen_bool(args.read_ratio.clamp(0.0, 1.0)) => Op::Get {
            serializable: false,
        },
        "mixed" => Op::Put,
        "txn-cas" => Op::Cas,
        "range" => Op::Range,
        other => return Err(anyhow!("unknown workload {other:?}")),
    })
}

async fn execute(
    backend: &Backend,
    args: &BenchArgs,
    conn: usize,
    op: Op,
    rng: &mut impl Rng,
    value: &[u8],
) -> Result<()> {
    let n = rng.gen_range(0..args.keys.max(1));
    match op {
        Op::Put => backend.put(conn, key(args, n), value.to_vec()).await,
        Op::Get { serializable } => backend.get(conn, key(args, n), serializable).await,
        Op::Cas => backend
            .cas(conn, key(args, n), value.to_vec())
            .await
            .map(|_| ()),
        Op::Range => {
            backend
                .range(
                    conn,
                    key(args, n),
                    key(args, u64::MAX / 2),
                    args.range_limit,
                )
                .await
        }
    }
}

async fn preload(backend: &Arc<Backend>, args: &BenchArgs) -> Result<()> {
    let value = vec![b'v'; args.value_size];
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..args.clients.clamp(1, 64) {
        let (backend, args, next, value) =
            (backend.clone(), args.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.keys {
                    return Ok::<(), anyhow::Error>(());
                }
                backend.put(t, key(&args, n), value.clone()).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

impl BenchArgs {
    pub async fn run(self, ctx: &crate::global::Context) -> Result<()> {
        let json = ctx.format == crate::output::Format::Json;
        // TLS as the global --cacert/--cert/--key say.
        run(self, ctx.endpoints.clone(), ctx.config.tls.clone(), json).await
    }
}

pub async fn run(
    args: BenchArgs,
    endpoints: Vec<String>,
    tls: Option<nines_client::TlsFiles>,
    json: bool,
) -> Result<()> {
    if args.workload == "watch" {
        return super::watch::run(args, endpoints, tls, json).await;
    }
    if args.workload == "lease-keepalive" {
        return super::lease::run(args, endpoints, json).await;
    }
    choose(&args, &mut rand::thread_rng())?;
    let objects = match args.target.as_str() {
        "etcd" => super::backend::etcd_objects(args.connections, endpoints.len()),
        _ => args.connections,
    };
    let backend = Arc::new(Backend::connect(&args.target, &endpoints, tls, objects).await?);
    if args.workload != "put" && !args.no_preload {
        eprintln!("loading {} keys ...", args.keys);
        preload(&backend, &args).await?;
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let mut tasks = Vec::new();
    for client in 0..args.clients.max(1) {
        let (backend, args) = (backend.clone(), args.clone());
        let (measuring, stop, ops, errors, histogram) = (
            measuring.clone(),
            stop.clone(),
            ops.clone(),
            errors.clone(),
            histogram.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64);
            let value = vec![b'x'; args.value_size];
            let mut local =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            while !stop.load(Ordering::Relaxed) {
                let op = choose(&args, &mut rng).expect("workload checked");
                let started = Instant::now();
                let result = execute(&backend, &args, client, op, &mut rng, &value).await;
                if measuring.load(Ordering::Relaxed) {
                    match result {
                        Ok(()) => {
                            let _ = local.record(started.elapsed().as_micros().max(1) as u64);
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            histogram
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&local)
                .ok();
        }));
    }
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut last = 0;
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1).min(args.duration)).await;
        if !args.quiet {
            let now = ops.load(Ordering::Relaxed);
            eprint!(
                "\r[{:>4.0}s] {:>9} ops/s  total {:>10}  errors {:>6}",
                started.elapsed().as_secs_f64(),
                now - last,
                now,
                errors.load(Ordering::Relaxed)
            );
            let _ = std::io::stderr().flush();
            last = now;
        }
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    if !args.quiet {
        eprintln!();
    }
    let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ops = ops.load(Ordering::Relaxed);
    let fsync_floor = match &args.fsync_dir {
        Some(dir) => Some(fsync_probe::probe(dir, 500)?),
        None => None,
    };
    let report = BenchReport {
        target: args.target.clone(),
        workload: args.workload.clone(),
        clients: args.clients,
        connections: backend.connections(endpoints.len()),
        value_size: args.value_size,
        duration_s: elapsed,
        ops,
        errors: errors.load(Ordering::Relaxed),
        throughput: ops as f64 / elapsed,
        latency: Latency::from_histogram(&histogram),
        fsync_floor,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_secs("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_secs("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_secs("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_secs("3").unwrap(), Duration::from_secs(3));
        assert!(parse_secs("3h").is_err());
        assert!(parse_secs("x").is_err());
    }

    #[test]
    fn fsync_probe_measures_something() {
        let dir = tempfile::tempdir().unwrap();
        let p = fsync_probe::probe(dir.path(), 20).unwrap();
        assert!(p.p50_us > 0.0 && p.p99_us >= p.p50_us);
    }
}
