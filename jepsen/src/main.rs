//! nines-jepsen: a Jepsen-style chaos harness for nines.
//!
//! Starts real `nines-server` processes on loopback behind a fault-injecting
//! proxy, runs client workloads against them while a nemesis kills, pauses,
//! partitions and re-members nodes, then checks the recorded history
//! (linearizability per register key, set and list-append invariants) and
//! reports availability. Exits non-zero on any anomaly or unknown verdict.

mod checker;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod replicas;
mod report;
mod tls;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::SeedableRng;

use cluster::Cluster;
use history::History;
use nemesis::{Fault, Nemesis};
use proxy::Proxy;
use workloads::{Ctx, Workload};

#[derive(Debug, Parser)]
#[command(
    name = "nines-jepsen",
    about = "Chaos testing for nines against real server processes"
)]
struct Args {
    /// Number of server processes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Client processes per workload.
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Seconds of client load and faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// register, set, append, pairs, watch, lease or all.
    #[arg(long, default_value = "register")]
    workload: String,
    /// Comma list of kill, pause, partition, member, all, none.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seconds a fault lasts, and seconds between faults.
    #[arg(long, default_value_t = 5)]
    nemesis_interval: u64,
    /// Seeds the fault schedule (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// An extra flag for every server (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// TLS everywhere: certificates made for the run (under its run dir),
    /// members with client TLS, client certificate auth and peer mutual
    /// TLS, and every client of the harness with a certificate.
    #[arg(long)]
    tls: bool,
    /// The nines-server binary.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep node data dirs even when the run is valid.
    #[arg(long)]
    keep_data: bool,
    /// Time budget of the linearizability search, per key.
    #[arg(long, default_value_t = 30)]
    check_budget_secs: u64,
}

/// The running cluster, reachable from `main` for teardown on every exit path.
static CLUSTER: OnceLock<Arc<Mutex<Cluster>>> = OnceLock::new();

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JEPSEN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let code = tokio::select! {
        result = run(args) => match result {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("nines-jepsen: error: {e:#}");
                2
            }
        },
        _ = tokio::signal::ctrl_c() => {
            // Dropping `run` drops the cluster, whose guard kills every server.
            eprintln!("nines-jepsen: interrupted; servers killed, run dir kept");
            130
        }
    };
    // Tasks still holding the cluster would keep its Drop guard from running
    // (and process::exit runs no destructors), so kill the servers here.
    if let Some(cluster) = CLUSTER.get() {
        cluster.lock().unwrap_or_else(|e| e.into_inner()).kill_all();
    }
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!((1..=9).contains(&args.nodes), "--nodes must be 1..=9");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    let workload_list = Workload::parse_list(&args.workload)?;
    let faults = Fault::parse_list(&args.nemesis)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let bin = cluster::find_server_binary(args.server_bin.clone())?;
    let run_dir = std::env::temp_dir().join(format!(
        "nines-jepsen-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        std::process::id()
    ));
    std::fs::create_dir_all(&run_dir)?;
    eprintln!(
        "nines-jepsen: seed {seed}, run dir {}, server {}{}",
        run_dir.display(),
        bin.display(),
        if args.tls { ", TLS on" } else { "" }
    );
    let mut server_args = args.server_args.clone();
    if args.tls {
        server_args.extend(tls::enable(&run_dir.join("tls")).context("TLS certificates")?);
    }

    let mut proxy = Proxy::new();
    let cluster = Cluster::new(bin, args.nodes, &run_dir, &mut proxy, server_args).await?;
    let proxy = Arc::new(proxy);
    let cluster = Arc::new(Mutex::new(cluster));
    let _ = CLUSTER.set(cluster.clone());
    let lock = || cluster.lock().unwrap_or_else(|e| e.into_inner());
    // (Bound first: a guard in a `for` head would live through the loop.)
    let ids = lock().ids();
    for &id in &ids {
        lock().spawn(id)?;
    }
    let addrs = lock().client_addrs();
    let candidates: Vec<(u64, String)> = (1..=args.nodes).zip(addrs.iter().cloned()).collect();
    let admin = cluster::admin_client(addrs.clone(), Duration::from_millis(800))?;
    wait_for_leader(&admin, &candidates, Duration::from_secs(30))
        .await
        .context("cluster did not elect a leader")?;

    let history = Arc::new(History::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.time_limit);
    let ctx = Ctx {
        history: history.clone(),
        deadline,
    };
    // Final reads (and the watch sentinel) run as the process after every
    // workload's; the watchers after that.
    let final_process = (workload_list.len() * args.concurrency) as i64;
    let watchers = if workload_list.contains(&Workload::Watch) {
        Some(workloads::watch::Watchers::start(
            history.clone(),
            &addrs,
            final_process + 1,
        )?)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for (i, w) in workload_list.iter().enumerate() {
        tasks.extend(workloads::spawn(
            *w,
            &ctx,
            &addrs,
            i * args.concurrency,
            args.concurrency,
        )?);
    }
    let nemesis = Nemesis {
        cluster: cluster.clone(),
        proxy: proxy.clone(),
        history: history.clone(),
        admin: admin.clone(),
        member_admin: cluster::admin_client(addrs.clone(), Duration::from_secs(5))?,
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        faults: faults.clone(),
        interval: Duration::from_secs(args.nemesis_interval),
    };
    let nemesis_task = tokio::spawn(nemesis.run(deadline));
    for t in tasks {
        t.await?;
    }
    nemesis_task.await?;
    let load_ns = history.now();

    // Everything is healed now; let the cluster settle, then read back.
    let mut crashes: Vec<String> = lock()
        .exited()
        .into_iter()
        .map(|(id, status)| format!("node {id}: {status}"))
        .collect();
    for &id in &ids {
        let mut c = lock();
        if !c.is_running(id) {
            c.spawn(id)?;
        }
    }
    if wait_for_leader(&admin, &candidates, Duration::from_secs(30))
        .await
        .is_err()
    {
        crashes.push("no leader after healing".into());
    }
    for w in &workload_list {
        workloads::final_read(*w, &history, &addrs, final_process).await;
    }
    if let Some(watchers) = watchers {
        watchers.drain(&history, &addrs, final_process).await;
    }
    let replicas = replicas::check(&admin, &candidates).await;
    history.write_jsonl(&run_dir.join("history.jsonl"))?;
    crashes.extend(
        lock()
            .exited()
            .into_iter()
            .map(|(id, status)| format!("node {id}: {status}")),
    );

    let ops = history::pair(&history.events());
    let mut verdicts = BTreeMap::new();
    let refused = report::unimplemented(&ops);
    if !refused.is_empty() {
        crashes.push(format!("calls answered UNIMPLEMENTED: {refused:?}"));
    }
    let mut valid = crashes.is_empty();
    valid &= replicas.identical();
    verdicts.insert("replicas".to_string(), replicas.verdict());
    let budget = Duration::from_secs(args.check_budget_secs);
    let register = workload_list.contains(&Workload::Register).then(|| {
        let r = checker::check_register(&ops, budget);
        let verdict = if !r.anomalies.is_empty() {
            format!(
                "NOT LINEARIZABLE ({} of {} keys)",
                r.anomalies.len(),
                r.keys
            )
        } else if !r.unknown_keys.is_empty() {
            format!("UNKNOWN ({} keys out of budget)", r.unknown_keys.len())
        } else {
            format!(
                "linearizable ({} keys, at most {} info ops per key, {} ms)",
                r.keys, r.max_info_per_key, r.check_millis
            )
        };
        valid &= r.anomalies.is_empty() && r.unknown_keys.is_empty();
        verdicts.insert("register".to_string(), verdict);
        r
    });
    let set = workload_list.contains(&Workload::Set).then(|| {
        let s = checker::check_set(&ops);
        valid &= s.valid();
        let verdict = if s.valid() { "valid" } else { "INVALID" };
        verdicts.insert(
            "set".to_string(),
            format!(
                "{verdict} ({} attempted, {} acknowledged, {} info recovered, {} lost, {} unexpected)",
                s.attempted,
                s.acknowledged,
                s.recovered,
                s.lost.len(),
                s.unexpected.len()
            ),
        );
        s
    });
    let append = workload_list.contains(&Workload::Append).then(|| {
        let a = checker::check_append(&ops);
        valid &= a.valid();
        let verdict = if a.valid() { "valid" } else { "INVALID" };
        verdicts.insert(
            "append".to_string(),
            format!(
                "{verdict} ({} keys, {} ok appends, {} reads)",
                a.keys, a.appends_ok, a.reads_checked
            ),
        );
        a
    });
    let pairs = workload_list.contains(&Workload::Pairs).then(|| {
        let p = checker::check_pairs(&ops);
        valid &= p.valid();
        let verdict = if p.valid() { "valid" } else { "INVALID" };
        verdicts.insert(
            "pairs".to_string(),
            format!(
                "{verdict} ({} reads, {} ok txn writes, {} torn, {} header behind)",
                p.reads_checked, p.writes_ok, p.torn_count, p.header_behind_count
            ),
        );
        p
    });
    let watch = workload_list.contains(&Workload::Watch).then(|| {
        let w = checker::check_watch(&ops);
        valid &= w.valid();
        let verdict = if w.valid() { "VALID" } else { "INVALID" };
        let kinds: Vec<String> = w
            .anomaly_counts
            .iter()
            .map(|(k, n)| format!("{} {n}", serde_json::to_value(k).unwrap_or_default().as_str().unwrap_or("?")))
            .collect();
        verdicts.insert(
            "watch".to_string(),
            format!(
                "{verdict} (events per watcher {:?}, reconnects per watcher {:?}, {} compaction restarts, {} writes, {} acknowledged, final revision {}, {} anomalies{})",
                w.events_per_watcher,
                w.reconnects_per_watcher,
                w.restarts_per_watcher.iter().sum::<usize>(),
                w.writes_attempted,
                w.acked_writes,
                w.final_revision.map_or("none".to_string(), |r| r.to_string()),
                w.anomaly_total(),
                if kinds.is_empty() { String::new() } else { format!(": {}", kinds.join(", ")) }
            ),
        );
        w
    });
    let lease = workload_list.contains(&Workload::Lease).then(|| {
        let l = checker::check_lease(&ops);
        valid &= l.valid();
        let verdict = if l.valid() { "VALID" } else { "INVALID" };
        let late = match (l.lateness_low(), l.lateness()) {
            (Some((lo_med, lo_max)), Some((med, max))) => format!(
                "median {med:.0} ms (last seen {lo_med:.0} ms), max {max:.0} ms (last seen {lo_max:.0} ms) over {}",
                l.late_ms.len()
            ),
            _ => "none measured".to_string(),
        };
        verdicts.insert(
            "lease".to_string(),
            format!(
                "{verdict} ({} leases: {} kept to the end, {} abandoned, {} without an acknowledged key; {} reads of kept keys; {} keeper lapses, {} expired after one; {} reconnects; first read without the key after abandon + TTL: {late}, {} seen gone only by the final read; {} anomalies)",
                l.leases,
                l.kept_to_end,
                l.abandoned,
                l.unattached,
                l.reads_checked,
                l.lapses,
                l.expired_after_lapse,
                l.reconnects,
                l.gone_by_final_read,
                l.anomalies.len()
            ),
        );
        l
    });
    let lock_verdict = |l: &checker::lock::LockResult| {
        format!(
            "{} ({} writes: {} ok, {} refused by the fence, {} info; final value {}; {} lost updates, {} fences out of order{})",
            if l.valid() { "valid" } else { "INVALID" },
            l.writes_attempted,
            l.writes_ok,
            l.writes_refused,
            l.writes_info,
            l.final_value.map_or("none".to_string(), |v| v.to_string()),
            l.lost_updates.len(),
            l.fences_out_of_order.len(),
            l.final_anomaly.as_ref().map_or(String::new(), |a| format!("; {a}"))
        )
    };
    let lock_result = workload_list.contains(&Workload::Lock).then(|| {
        let l = checker::check_lock(&ops, checker::LOCK_PREFIX, true);
        valid &= l.valid();
        verdicts.insert("lock".to_string(), lock_verdict(&l));
        l
    });
    // Unfenced writes under a lock are unsafe by design: what this finds
    // is reported, not failed.
    let lock_unfenced = workload_list.contains(&Workload::LockUnfenced).then(|| {
        let l = checker::check_lock(&ops, checker::UNFENCED_PREFIX, false);
        verdicts.insert(
            "lock-unfenced (reported only)".to_string(),
            lock_verdict(&l),
        );
        l
    });
    let (counts, total_ops, ok_rate) = report::count_ops(&ops);
    let (windows, availability) = report::windows(&ops, load_ns);
    let (max_recovery_ms, median_recovery_ms) = report::recovery_stats(&windows);
    let recovery_by_fault = report::recovery_by_fault(&windows);
    let proxy_stats = BTreeMap::from([
        (
            "accepted".to_string(),
            proxy.stats.accepted.load(Ordering::Relaxed),
        ),
        (
            "refused".to_string(),
            proxy.stats.refused.load(Ordering::Relaxed),
        ),
        ("cut".to_string(), proxy.stats.cut.load(Ordering::Relaxed)),
    ]);
    let report = report::Report {
        run_dir: run_dir.display().to_string(),
        seed,
        nodes: args.nodes,
        concurrency: args.concurrency,
        tls: args.tls,
        workloads: workload_list
            .iter()
            .map(|w| format!("{w:?}").to_lowercase())
            .collect(),
        nemeses: faults
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect(),
        duration_secs: load_ns as f64 / 1e9,
        ops: counts,
        total_ops,
        ok_rate,
        verdicts,
        register,
        set,
        append,
        pairs,
        watch,
        lease,
        lock: lock_result,
        lock_unfenced,
        windows,
        recovery_by_fault,
        max_recovery_ms,
        median_recovery_ms,
        availability,
        crashes,
        proxy: proxy_stats,
        valid,
    };
    report.write(&run_dir.join("report.json"))?;
    report.print();
    let mut c = lock();
    c.kill_all();
    if valid && !args.keep_data {
        c.remove_data();
    }
    Ok(valid)
}

async fn wait_for_leader(
    admin: &nines_client::Client,
    candidates: &[(u64, String)],
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(id) = cluster::find_leader(admin, candidates).await {
            return Ok(id);
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
