//! Node configuration: the clap flags (each with a `NINES_*` env fallback)
//! and the validated `ServerConfig` the node is built from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nines_types::{Limits, Node, NodeId};

use crate::auto_compact::AutoCompaction;
use crate::error::ServerError;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "nines-server",
    version,
    about = "A nines node: Raft-replicated key-value store"
)]
pub struct ServerArgs {
    /// This node's id: a stable non-zero integer, unique in the cluster.
    #[arg(long, env = "NINES_ID")]
    pub id: NodeId,
    /// Address for client gRPC (KV, Cluster, health).
    #[arg(long, env = "NINES_LISTEN_CLIENT", default_value = "127.0.0.1:2379")]
    pub listen_client: SocketAddr,
    /// Address for Raft traffic between nodes (also serves forwarded client calls).
    #[arg(long, env = "NINES_LISTEN_PEER", default_value = "127.0.0.1:2380")]
    pub listen_peer: SocketAddr,
    /// Serve Prometheus metrics over HTTP on this address (off when absent).
    #[arg(long, env = "NINES_LISTEN_METRICS")]
    pub listen_metrics: Option<SocketAddr>,
    /// Client address others should use; defaults to --listen-client.
    #[arg(long, env = "NINES_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Peer address others should use; defaults to --listen-peer.
    #[arg(long, env = "NINES_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    #[arg(long, env = "NINES_DATA_DIR", default_value = "nines-data")]
    pub data_dir: PathBuf,
    /// Static bootstrap: `ID=PEER_ADDR[/CLIENT_ADDR],...`. Starting every member with
    /// the same list forms the cluster; ignored when the data dir already holds state.
    #[arg(long, env = "NINES_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Joins a running cluster through these client endpoints (comma separated):
    /// the node adds itself as a learner, then promotes itself once caught up.
    #[arg(long, env = "NINES_JOIN", conflicts_with = "initial_cluster")]
    pub join: Option<String>,
    /// With --join: stay a learner instead of becoming a voter.
    #[arg(long, env = "NINES_JOIN_AS_LEARNER")]
    pub join_as_learner: bool,
    /// With --join on a cluster with auth on: `NAME:PASSWORD` of a root
    /// user, for adding and promoting this member. Prefer the environment
    /// variable: a flag's value shows in the process list.
    #[arg(
        long,
        env = "NINES_JOIN_USER",
        requires = "join",
        hide_env_values = true
    )]
    pub join_user: Option<String>,
    /// Disaster recovery (etcd's flag): on a member with existing data,
    /// rewrite the membership to this node alone and serve, committing
    /// every entry in its log; add members back afterwards. Refused on a
    /// fresh data dir, and once members were added back while it stays on:
    /// remove it after the first start (README, "Disaster recovery").
    #[arg(long, env = "NINES_FORCE_NEW_CLUSTER", conflicts_with = "join")]
    pub force_new_cluster: bool,
    /// Cluster name; nodes of different clusters refuse each other's traffic.
    #[arg(long, env = "NINES_CLUSTER_TOKEN", default_value = "nines")]
    pub cluster_token: String,
    #[arg(long, env = "NINES_HEARTBEAT_MS", default_value_t = 75)]
    pub heartbeat_ms: u64,
    #[arg(long, env = "NINES_ELECTION_MIN_MS", default_value_t = 150)]
    pub election_min_ms: u64,
    #[arg(long, env = "NINES_ELECTION_MAX_MS", default_value_t = 300)]
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one,
    /// and once the bytes written since reach half the data held.
    #[arg(long, env = "NINES_SNAPSHOT_ENTRIES", default_value_t = 20_000)]
    pub snapshot_entries: u64,
    /// Log entries kept behind a snapshot, at most, so a follower that was
    /// partitioned or down catches up from the log. Installing a snapshot
    /// instead holds the follower's Raft core for the whole transfer, when
    /// it cannot vote: with 2,000 kept, a 10-minute chaos run (seed 6062026)
    /// saw a follower 4,500 entries behind start an install just before the
    /// leader was paused, and writes stopped for 3 s. etcd keeps 5,000
    /// entries of one request each; ours are batches.
    #[arg(long, env = "NINES_SNAPSHOT_KEEP_ENTRIES", default_value_t = 50_000)]
    pub snapshot_keep_entries: u64,
    /// ... and at most this many MiB of them, so large values do not keep
    /// the log large (the log is purged a 64 MiB segment at a time).
    #[arg(long, env = "NINES_SNAPSHOT_KEEP_MB", default_value_t = 64)]
    pub snapshot_keep_mb: u64,
    /// Server-side bound on a write or linearizable read, forwarding included.
    #[arg(long, env = "NINES_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    #[arg(long, env = "NINES_MAX_KEY_BYTES", default_value_t = 4096)]
    pub max_key_bytes: usize,
    #[arg(long, env = "NINES_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    #[arg(long, env = "NINES_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Largest write, as the log holds it (etcd's flag; "request is too
    /// large" past it). Default: etcd's 1.5 MiB, or the value limit plus
    /// 512 KiB when `--max-value-bytes` is larger. A larger entry takes
    /// longer than a heartbeat interval to replicate, which openraft
    /// treats as a failed append.
    #[arg(long, env = "NINES_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// sled page cache for the state machine, in MiB (default: 512, or an
    /// eighth of the machine's memory if that is less).
    #[arg(long, env = "NINES_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Source IP for connections this node opens to peers (lets a proxy or
    /// firewall tell nodes apart on one host, e.g. 127.0.0.2).
    #[arg(long, env = "NINES_PEER_SOURCE_IP")]
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// Let the leader sync its own log in the background, overlapping its
    /// fdatasync with replication (Raft thesis 10.2.1); commits still wait
    /// for that sync before anything is applied or acknowledged. On by
    /// default: single-client put p50 ~1,400 -> ~930 µs on the CI machine
    /// kind, and 10-minute chaos runs on five seeds stay within the 1.5 s
    /// recovery bound with it (README, "Chaos runs").
    #[arg(long, env = "NINES_LEADER_PIPELINING", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_pipelining: bool,
    /// Client connections served at once; more are accepted and closed at
    /// once. Default: 4096, lowered to fit RLIMIT_NOFILE (keeping
    /// descriptors for storage and peers). An explicit value is used as given.
    #[arg(long, env = "NINES_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Peer (Raft) connections served at once; more are closed at once.
    #[arg(long, env = "NINES_MAX_PEER_CONNECTIONS", default_value_t = 64)]
    pub max_peer_connections: usize,
    /// Worker threads of the runtime that runs Raft and the peer server,
    /// apart from the client API's, so client load cannot delay heartbeats.
    /// 0 shares the client runtime (no such isolation).
    // One by default: RaftCore is one task, the WAL and the state machine
    // have threads of their own, and a second worker mostly parked and was
    // woken (three members on two cores, fresh clusters, `nines bench`
    // get-64, put-64, txn-cas-64: 5-10% more ops/s with 1 than with 2,
    // mixed-64 the same; README).
    #[arg(long, env = "NINES_RAFT_THREADS", default_value_t = 1)]
    pub raft_threads: usize,
    /// Local range/get executions at once (on blocking threads); more wait.
    #[arg(long, env = "NINES_MAX_CONCURRENT_READS", default_value_t = 4)]
    pub max_concurrent_reads: usize,
    /// Bytes of read results (keys and values) held or being sent at once;
    /// reads past it wait, and fail RESOURCE_EXHAUSTED after the request timeout.
    #[arg(long, env = "NINES_MAX_READ_MB_IN_FLIGHT", default_value_t = 128)]
    pub max_read_mb_in_flight: u64,
    /// Auto-compaction (etcd's flag): `periodic` keeps
    /// --auto-compaction-retention of history, a duration (`5m`, `1h`, a
    /// bare number of hours); `revision` keeps that many revisions, checked
    /// every 5 minutes. Default periodic 5m: disk stays bounded at any write
    /// rate (at most about two retention periods of writes are kept) while
    /// clients can still read, and a lagging one resume from, any revision
    /// of the last 5 minutes (kube-apiserver compacts every 5 minutes too).
    #[arg(long, env = "NINES_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// What auto-compaction keeps (see --auto-compaction-mode); 0 turns it off.
    #[arg(long, env = "NINES_AUTO_COMPACTION_RETENTION", default_value = "5m")]
    pub auto_compaction_retention: String,
    /// Storage quota (etcd's flag): once the data the store holds (every
    /// retained revision, see `data_bytes` in metrics) exceeds it, puts and
    /// txns with a put answer RESOURCE_EXHAUSTED; reads, deletes and
    /// compactions go on, and writes resume by themselves once compaction
    /// brings the data back under it. 0 means the default, 2 GiB (etcd's).
    #[arg(long, env = "NINES_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// How often a watcher that asked for progress notifications and got no
    /// event meanwhile is told the revision it is current to (etcd's flag
    /// and default, 10m).
    #[arg(
        long,
        env = "NINES_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub experimental_watch_progress_notify_interval: String,
    /// How often the leader records leases' remaining TTLs in the log (a
    /// checkpoint), so that a new leader counts down from them rather than
    /// from the full TTL: an abandoned lease outlives its TTL by at most
    /// this much (or its TTL, if shorter) across a leader change.
    #[arg(long, env = "NINES_LEASE_CHECKPOINT_INTERVAL", default_value = "5s")]
    pub lease_checkpoint_interval: String,
    /// How long a token from Authenticate stays valid, in seconds (etcd's
    /// flag; its simple tokens default to 300 s too).
    #[arg(long, env = "NINES_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Transport security: etcd's TLS flags (see `tls.rs`).
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// TEST ONLY: serve linearizable reads from local state without a read
    /// barrier. Breaks linearizability; exists so the chaos harness can prove
    /// it catches a broken build. Only in builds with `test-hooks`.
    #[cfg(feature = "test-hooks")]
    #[arg(long, env = "NINES_UNSAFE_LOCAL_READS", hide = true)]
    pub unsafe_local_reads: bool,
}

#[cfg(feature = "test-hooks")]
fn unsafe_local_reads(args: &ServerArgs) -> bool {
    args.unsafe_local_reads
}

#[cfg(not(feature = "test-hooks"))]
fn unsafe_local_reads(_: &ServerArgs) -> bool {
    false
}

/// How a node joins the cluster on first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Restart or manual `member add`: do nothing.
    None,
    Initial(BTreeMap<NodeId, Node>),
    Join {
        endpoints: Vec<String>,
        as_learner: bool,
    },
}

/// `--join-user`: the root user a joining member adds itself as.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for JoinUser {
    // The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub id: NodeId,
    pub listen_client: SocketAddr,
    pub listen_peer: SocketAddr,
    pub listen_metrics: Option<SocketAddr>,
    pub node: Node,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    /// See `--join-user`.
    pub join_user: Option<JoinUser>,
    /// `--force-new-cluster` (see `force.rs`).
    pub force_new_cluster: bool,
    pub cluster_token: String,
    pub raft: openraft::Config,
    pub request_timeout: Duration,
    pub limits: Limits,
    /// `--max-request-bytes`, resolved.
    pub max_request_bytes: usize,
    pub cache_bytes: u64,
    pub peer_source_ip: Option<std::net::IpAddr>,
    pub unsafe_local_reads: bool,
    pub leader_pipelining: bool,
    pub max_client_connections: usize,
    pub max_peer_connections: usize,
    pub raft_threads: usize,
    pub max_concurrent_reads: usize,
    pub max_read_bytes_in_flight: u64,
    pub auto_compaction: AutoCompaction,
    pub quota_backend_bytes: u64,
    /// Progress notifications to idle watchers that asked for them.
    pub watch_progress_interval: Duration,
    /// Entries between snapshots, at least (see `snapshot_policy.rs`).
    pub snapshot_entries: u64,
    /// Log kept behind a snapshot, at most.
    pub snapshot_keep: crate::snapshot_policy::Keep,
    /// See `--lease-checkpoint-interval`.
    pub lease_checkpoint_interval: Duration,
    /// See `--auth-token-ttl`.
    pub auth_token_ttl: Duration,
    /// Transport security of both ports (see `tls.rs`).
    pub tls: crate::tls::Tls,
}

/// etcd's default `--max-request-bytes`.
const DEFAULT_MAX_REQUEST_BYTES: usize = 3 << 19;
/// The least `--max-request-bytes`: a lease checkpoint of 1,000 leases is
/// about 18 KB, and the server's own writes must fit.
const MIN_REQUEST_BYTES: usize = 64 << 10;
/// The largest message the client port accepts: well above the 1 MiB
/// value limit, below the size that would make a single Raft entry
/// unreasonable.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// etcd's default storage quota.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

/// Client connections when --max-connections is not given.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Descriptors kept for everything but connections: log segments, sled,
/// snapshots, outgoing peer channels, the runtime's own.
const FD_RESERVE: u64 = 256;

/// The soft RLIMIT_NOFILE, if it can be read.
pub fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

/// The default sled cache. Reads of keys whose pages are not cached cost a
/// file read and a decode: with 128 MiB, get-64 at 1,000,000 keys of 256 B
/// (~300 MB of records) ran at 0.76-0.78 of its speed at 10,000 keys; with
/// 384 MiB 0.85, with 512 MiB 0.87-0.90, and the server's RSS at 1M keys
/// grew from ~650 MiB to ~1,000 MiB (etcd's: ~950 MiB, its mmap).
const DEFAULT_CACHE_BYTES: u64 = 512 << 20;

/// The sled cache: as given, else [`DEFAULT_CACHE_BYTES`] but at most an
/// eighth of `physical` memory (a small machine keeps room for the rest).
pub fn cache_bytes(given_mb: Option<u64>, physical: Option<u64>) -> u64 {
    match given_mb {
        Some(mb) => mb.saturating_mul(1 << 20),
        None => DEFAULT_CACHE_BYTES.min(physical.map_or(u64::MAX, |p| p / 8).max(16 << 20)),
    }
}

/// The machine's physical memory, if it can be read.
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system values.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && size > 0).then(|| (pages as u64).saturating_mul(size as u64))
}

/// The client connection limit: as given, or the default lowered so that
/// clients alone cannot exhaust descriptors (storage would then fail with
/// EMFILE and stop the node).
pub fn client_connection_limit(
    given: Option<usize>,
    peer_limit: usize,
    fd_limit: Option<u64>,
) -> usize {
    let budget = fd_limit.map(|n| n.saturating_sub(FD_RESERVE + peer_limit as u64).max(16));
    match (given, budget) {
        (Some(n), Some(b)) if n as u64 > b => {
            tracing::warn!(
                max_connections = n,
                fd_limit = fd_limit.unwrap_or(0),
                "--max-connections exceeds what RLIMIT_NOFILE leaves for clients; \
                 connections past ~{b} can exhaust descriptors"
            );
            n
        }
        (Some(n), _) => n,
        (None, Some(b)) => DEFAULT_MAX_CONNECTIONS.min(b as usize),
        (None, None) => DEFAULT_MAX_CONNECTIONS,
    }
}

impl ServerConfig {
    /// The cluster id: a stable hash of the cluster token (FNV-1a, so it never
    /// changes between builds).
    pub fn cluster_id(&self) -> u64 {
        cluster_id_of(&self.cluster_token)
    }
}

pub fn cluster_id_of(token: &str) -> u64 {
    token.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn raft_config(args: &ServerArgs) -> Result<openraft::Config, ServerError> {
    let config = openraft::Config {
        cluster_name: args.cluster_token.clone(),
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.election_min_ms,
        election_timeout_max: args.election_max_ms,
        // A chunk that takes longer than this restarts the whole transfer: keep it generous.
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: 1024 * 1024,
        max_payload_entries: 256,
        // Decided by `snapshot_policy.rs`, which also weighs bytes.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        // openraft never purges on its own: `snapshot_policy.rs` does, by
        // entries and bytes kept (openraft counts entries only).
        max_in_snapshot_log_to_keep: u64::MAX,
        // Above the snapshot interval, so a lagging learner is not reported caught up early.
        replication_lag_threshold: args.snapshot_entries.max(1) * 2,
        purge_batch_size: 256,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| ServerError::Config(format!("raft timing: {e}")))
}

/// Parses `1=127.0.0.1:7101/127.0.0.1:7001,2=...`.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<NodeId, Node>, ServerError> {
    let mut members = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad =
            |why: &str| ServerError::Config(format!("--initial-cluster entry {item:?}: {why}"));
        let (id, addrs) = item
            .split_once('=')
            .ok_or_else(|| bad("expected ID=PEER_ADDR[/CLIENT_ADDR]"))?;
        let id: NodeId = id.trim().parse().map_err(|_| bad("id is not a number"))?;
        if id == 0 {
            return Err(bad("id 0 is reserved"));
        }
        // Each address may be a URL (`https://h:1`), as etcd's flags take.
        let addrs = without_schemes(addrs);
        let (peer, client) = match addrs.split_once('/') {
            Some((p, c)) => (p.trim(), c.trim()),
            None => (addrs.trim(), ""),
        };
        check_addr(peer).map_err(|e| bad(&e))?;
        if !client.is_empty() {
            check_addr(client).map_err(|e| bad(&e))?;
        }
        if members.insert(id, Node::new(peer, client)).is_some() {
            return Err(bad("duplicate id"));
        }
    }
    if members.is_empty() {
        return Err(ServerError::Config("--initial-cluster is empty".into()));
    }
    Ok(members)
}

/// `https://p:1/https://c:2` as `p:1/c:2`: the scheme says nothing the TLS
/// flags do not (every member of a cluster runs the same transport).
fn without_schemes(addrs: &str) -> String {
    addrs.replace("https://", "").replace("http://", "")
}

/// This member's advertised address: `host:port` or a URL whose scheme
/// must match the port's TLS (a client told `http://` would fail against
/// a TLS port, and the other way round).
fn advertised(
    flag: &str,
    given: Option<&str>,
    listen: SocketAddr,
    tls: bool,
) -> Result<String, ServerError> {
    let Some(given) = given.map(str::trim) else {
        return Ok(listen.to_string());
    };
    let scheme_ok = match given.split_once("://") {
        None => true,
        Some(("https", _)) => tls,
        Some(("http", _)) => !tls,
        Some(_) => false,
    };
    if !scheme_ok {
        let want = if tls { "https://" } else { "http://" };
        return Err(ServerError::Config(format!(
            "{flag} {given:?}: this port's TLS setting needs {want} or a bare HOST:PORT"
        )));
    }
    let addr = nines_tls::strip_scheme(given).to_string();
    check_addr(&addr).map_err(ServerError::Config)?;
    Ok(addr)
}

fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?} has no port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("address {addr:?} is not HOST:PORT"));
    }
    Ok(())
}

impl TryFrom<ServerArgs> for ServerConfig {
    type Error = ServerError;

    fn try_from(args: ServerArgs) -> Result<Self, ServerError> {
        if args.id == 0 {
            return Err(ServerError::Config("--id must be non-zero".into()));
        }
        let raft = raft_config(&args)?;
        let tls = crate::tls::Tls::from_args(&args.tls)?;
        let advertise_peer = advertised(
            "--advertise-peer",
            args.advertise_peer.as_deref(),
            args.listen_peer,
            tls.peer.is_some(),
        )?;
        let advertise_client = advertised(
            "--advertise-client",
            args.advertise_client.as_deref(),
            args.listen_client,
            tls.client.is_some(),
        )?;
        let bootstrap = match (&args.initial_cluster, &args.join) {
            (Some(spec), _) => {
                // Used exactly as given: every member must initialize with the
                // same membership, so nothing here may differ between nodes.
                let members = parse_initial_cluster(spec)?;
                if !members.contains_key(&args.id) {
                    return Err(ServerError::Config(format!(
                        "--initial-cluster does not list this node's id {}",
                        args.id
                    )));
                }
                Bootstrap::Initial(members)
            }
            (None, Some(join)) => Bootstrap::Join {
                endpoints: join
                    .split(',')
                    .map(|s| nines_tls::strip_scheme(s).to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                as_learner: args.join_as_learner,
            },
            (None, None) => Bootstrap::None,
        };
        let join_user = match &args.join_user {
            None => None,
            Some(spec) => match spec.split_once(':') {
                Some((name, password)) if !name.is_empty() => Some(JoinUser {
                    name: name.to_string(),
                    password: password.to_string(),
                }),
                _ => {
                    return Err(ServerError::Config(
                        "--join-user must be NAME:PASSWORD".to_string(),
                    ))
                }
            },
        };
        let limits = Limits {
            max_key_bytes: args.max_key_bytes,
            max_value_bytes: args.max_value_bytes,
            max_txn_ops: args.max_txn_ops,
        };
        if limits.max_key_bytes == 0 || limits.max_txn_ops == 0 {
            return Err(ServerError::Config(
                "key and txn limits must be positive".into(),
            ));
        }
        if !limits.within_apply() {
            let most = Limits::APPLY;
            return Err(ServerError::Config(format!(
                "--max-key-bytes, --max-value-bytes and --max-txn-ops may be at most {}, {} and {} (what every member applies)",
                most.max_key_bytes, most.max_value_bytes, most.max_txn_ops
            )));
        }
        let max_request_bytes = args.max_request_bytes.unwrap_or(
            DEFAULT_MAX_REQUEST_BYTES
                .max(limits.max_value_bytes + (512 << 10))
                .min(MAX_CLIENT_MESSAGE_BYTES),
        );
        if !(MIN_REQUEST_BYTES..=MAX_CLIENT_MESSAGE_BYTES).contains(&max_request_bytes) {
            return Err(ServerError::Config(format!(
                "--max-request-bytes must be within {MIN_REQUEST_BYTES}..={MAX_CLIENT_MESSAGE_BYTES} (room for the server's own lease checkpoints; what the client port accepts)"
            )));
        }
        let auto_compaction =
            AutoCompaction::parse(&args.auto_compaction_mode, &args.auto_compaction_retention)
                .map_err(ServerError::Config)?;
        let unsafe_local_reads = unsafe_local_reads(&args);
        let watch_progress_interval =
            crate::auto_compact::parse_duration(&args.experimental_watch_progress_notify_interval)
                .map_err(|e| ServerError::Config(format!("watch progress notify interval: {e}")))?
                .max(Duration::from_millis(10));
        let lease_checkpoint_interval =
            crate::auto_compact::parse_duration(&args.lease_checkpoint_interval)
                .map_err(|e| ServerError::Config(format!("lease checkpoint interval: {e}")))?
                .max(Duration::from_millis(100));
        Ok(ServerConfig {
            auth_token_ttl: Duration::from_secs(args.auth_token_ttl.clamp(1, 7 * 24 * 3600)),
            lease_checkpoint_interval,
            watch_progress_interval,
            auto_compaction,
            quota_backend_bytes: match args.quota_backend_bytes {
                0 => DEFAULT_QUOTA_BACKEND_BYTES,
                q => q,
            },
            id: args.id,
            listen_client: args.listen_client,
            listen_peer: args.listen_peer,
            listen_metrics: args.listen_metrics,
            node: Node::new(advertise_peer, advertise_client),
            data_dir: args.data_dir,
            bootstrap,
            join_user,
            force_new_cluster: args.force_new_cluster,
            cluster_token: args.cluster_token,
            raft,
            request_timeout: Duration::from_millis(args.request_timeout_ms.max(100)),
            limits,
            max_request_bytes,
            cache_bytes: cache_bytes(args.cache_mb, physical_memory()),
            peer_source_ip: args.peer_source_ip,
            unsafe_local_reads,
            leader_pipelining: args.leader_pipelining,
            max_client_connections: client_connection_limit(
                args.max_connections,
                args.max_peer_connections,
                fd_limit(),
            )
            .max(1),
            max_peer_connections: args.max_peer_connections.max(1),
            raft_threads: args.raft_threads.min(64),
            snapshot_entries: args.snapshot_entries.max(1),
            snapshot_keep: crate::snapshot_policy::Keep {
                entries: args.snapshot_keep_entries,
                bytes: args.snapshot_keep_mb.saturating_mul(1024 * 1024),
            },
            max_concurrent_reads: args.max_concurrent_reads.clamp(1, 1024),
            max_read_bytes_in_flight: args.max_read_mb_in_flight.clamp(1, 1 << 20) * 1024 * 1024,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let m = parse_initial_cluster("1=127.0.0.1:7101/127.0.0.1:7001, 2=h:2").unwrap();
        assert_eq!(m[&1], Node::new("127.0.0.1:7101", "127.0.0.1:7001"));
        assert_eq!(m[&2], Node::new("h:2", ""));
        assert!(parse_initial_cluster("1=nohost").is_err());
        assert!(parse_initial_cluster("x=h:1").is_err());
        assert!(parse_initial_cluster("1=h:1,1=h:2").is_err());
        assert!(parse_initial_cluster("0=h:1").is_err());
    }

    #[test]
    fn the_cache_defaults_to_512_mib_within_an_eighth_of_memory() {
        assert_eq!(cache_bytes(Some(64), Some(1 << 40)), 64 << 20, "as given");
        assert_eq!(cache_bytes(None, Some(24 << 30)), 512 << 20);
        assert_eq!(cache_bytes(None, None), 512 << 20);
        assert_eq!(cache_bytes(None, Some(2 << 30)), 256 << 20, "2 GiB machine");
        assert_eq!(cache_bytes(None, Some(64 << 20)), 16 << 20, "floor");
    }

    #[test]
    fn rejects_bad_timing() {
        let args = ServerArgs::parse_from(["nines-server", "--id", "1", "--heartbeat-ms", "500"]);
        assert!(matches!(raft_config(&args), Err(ServerError::Config(_))));
        let args = ServerArgs::parse_from(["nines-server", "--id", "1"]);
        assert!(raft_config(&args).is_ok());
    }

    #[test]
    fn the_request_limit_is_etcd_s_unless_values_need_more() {
        let config = |extra: &[&str]| {
            let args = ["nines-server", "--id", "1"].iter().chain(extra);
            ServerConfig::try_from(ServerArgs::parse_from(args))
        };
        assert_eq!(config(&[]).unwrap().max_request_bytes, 1_572_864);
        let values = config(&["--max-value-bytes", "4194304"]).unwrap();
        assert_eq!(values.max_request_bytes, 4_194_304 + 524_288);
        let given = config(&["--max-request-bytes", "100000"]).unwrap();
        assert_eq!(given.max_request_bytes, 100_000);
        assert!(
            config(&["--max-request-bytes", "100"]).is_err(),
            "checkpoints must fit"
        );
        assert!(config(&["--max-request-bytes", "16777217"]).is_err());
        // The value limit may be raised to what every member applies.
        let top = config(&["--max-value-bytes", "33554432"]).unwrap();
        assert_eq!(top.max_request_bytes, 16 << 20);
    }

    #[test]
    fn auto_compaction_defaults_to_periodic_five_minutes() {
        let args = ServerArgs::parse_from(["nines-server", "--id", "1"]);
        let config = ServerConfig::try_from(args).unwrap();
        assert_eq!(
            config.auto_compaction,
            AutoCompaction::Periodic(Duration::from_secs(300))
        );
        let args = ServerArgs::parse_from([
            "nines-server",
            "--id",
            "1",
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "5m",
        ]);
        assert!(matches!(
            ServerConfig::try_from(args),
            Err(ServerError::Config(_))
        ));
    }

    #[test]
    fn connection_limit_fits_the_fd_limit() {
        assert_eq!(client_connection_limit(None, 64, Some(1024)), 704);
        assert_eq!(client_connection_limit(None, 64, Some(1 << 20)), 4096);
        assert_eq!(client_connection_limit(None, 64, None), 4096);
        assert_eq!(client_connection_limit(None, 64, Some(100)), 16);
        // Explicit values are the operator's call.
        assert_eq!(client_connection_limit(Some(5000), 64, Some(1024)), 5000);
    }

    #[test]
    fn addresses_may_be_urls_whose_scheme_matches_the_tls() {
        let m = parse_initial_cluster("1=https://127.0.0.1:7101/https://c:1,2=http://h:2").unwrap();
        assert_eq!(m[&1], Node::new("127.0.0.1:7101", "c:1"));
        assert_eq!(m[&2], Node::new("h:2", ""));
        let listen: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let adv = |given, tls| advertised("--advertise-client", given, listen, tls);
        assert_eq!(adv(Some("https://h:2/"), true).unwrap(), "h:2");
        assert_eq!(adv(Some("h:2"), true).unwrap(), "h:2");
        assert_eq!(adv(Some("http://h:2"), false).unwrap(), "h:2");
        assert_eq!(adv(None, true).unwrap(), "127.0.0.1:1");
        for (given, tls) in [
            ("https://h:2", false),
            ("http://h:2", true),
            ("ftp://h:2", false),
        ] {
            assert!(adv(Some(given), tls).is_err(), "{given} tls={tls}");
        }
    }

    #[test]
    fn cluster_id_is_stable() {
        assert_eq!(cluster_id_of("nines"), cluster_id_of("nines"));
        assert_ne!(cluster_id_of("nines"), cluster_id_of("other"));
    }

    #[test]
    fn test_switches_exist_only_with_test_hooks() {
        let parsed =
            ServerArgs::try_parse_from(["nines-server", "--id", "1", "--unsafe-local-reads"]);
        assert_eq!(parsed.is_ok(), cfg!(feature = "test-hooks"));
    }
}
