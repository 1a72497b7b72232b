//! Node assembly: open storage, start Raft, serve gRPC, bootstrap or join.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nines_log::{LogOptions, LogStore};
use nines_proto as pb;
use nines_proto::etcd::etcdserverpb as epb;
use nines_state::{StateMachine, StateOptions};
use nines_types::{NodeId, Raft};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::api::AdminService;
use crate::config::{Bootstrap, ServerConfig, MAX_CLIENT_MESSAGE_BYTES};
use crate::core::NodeCore;
use crate::datadir::DataDir;
use crate::election::Election;
use crate::error::ServerError;
use crate::incoming::Incoming;
use crate::metrics::grpc::RequestMetricsLayer;
use crate::metrics::{Counters, StateTimings};
use crate::network::{ChannelPool, NetworkFactory, PeerLiveness, RaftService, MAX_MESSAGE_BYTES};
use crate::proposer::Proposer;
use crate::read_barrier::{Asker, ReadBarrier};
use crate::read_limit::ReadLimiter;
use crate::runtime::RaftRuntime;

/// A running node. Dropping it does not stop it: call `shutdown`.
pub struct NinesNode {
    pub core: Arc<NodeCore>,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    _data_dir: DataDir,
    /// Last: dropped after everything that may still use it.
    _raft_runtime: RaftRuntime,
}

impl NinesNode {
    pub async fn start(config: ServerConfig) -> Result<NinesNode, ServerError> {
        let cluster_id = config.cluster_id();
        let data_dir = DataDir::open(&config.data_dir, cluster_id, config.id)?;
        // First: the log and state machine report their timings here.
        let counters = Arc::new(Counters::default());
        let log = LogStore::open(
            &crate::disk::log_dir(&config.data_dir),
            LogOptions::default(),
        )?;
        log.observe_syncs(counters.timings.wal_sync_hook());
        let mut state = StateMachine::open(
            &crate::disk::state_dir(&config.data_dir),
            StateOptions {
                limits: config.limits,
                cache_capacity_bytes: config.cache_bytes,
                observer: Some(Arc::new(StateTimings(counters.timings.clone()))),
                ..Default::default()
            },
        )
        .await?;
        // openraft re-applies the log after last_applied (a rebuilt state
        // machine starts at its snapshot): fail plainly if that gap is purged.
        let log_state = openraft::storage::RaftLogStorage::get_log_state(&mut log.clone())
            .await
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        state.check_rebuildable(log_state.last_purged_log_id)?;
        // Before pipelining: the forced entry is synced like a follower's.
        crate::force::prepare(&config, &log, &mut state).await?;
        if config.leader_pipelining {
            log.enable_leader_pipelining(config.id)?;
        }
        // Both gates are no-ops without pipelining: every append is synced
        // before openraft hears of it.
        state.gate_on(log.durable_index());
        let reader = state.reader();
        let receiver = crate::network::SnapshotReceiver::new(state.stager());
        let pool = ChannelPool::new(config.peer_source_ip, &config.tls);
        // Raft's channels get a pool of their own: a tonic channel's worker
        // task runs on the runtime that first creates it, and Raft's must
        // be created on the Raft runtime (by openraft's `new_client`).
        let raft_pool = ChannelPool::new(config.peer_source_ip, &config.tls);
        let peers = PeerLiveness::default();
        let commit_told = crate::read_index::CommitTold::default();
        let network = NetworkFactory {
            cluster_id,
            pool: raft_pool.clone(),
            durable: log.durable_index(),
            peers: peers.clone(),
            commit_told: commit_told.clone(),
        };
        // Raft::new spawns RaftCore (and it its replication and state
        // machine tasks) on the current runtime: call it on Raft's own.
        let raft_runtime = RaftRuntime::new(config.raft_threads)
            .map_err(|e| ServerError::Raft(format!("cannot start the Raft runtime: {e}")))?;
        let raft = raft_runtime
            .handle()
            .spawn(Raft::new(
                config.id,
                Arc::new(config.raft.clone()),
                network,
                log.clone(),
                state,
            ))
            .await
            .map_err(|e| ServerError::Raft(e.to_string()))?
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        // Elections go through a pre-vote round (election.rs), which turns
        // openraft's own election timer off.
        let election = Arc::new(Election::new(
            config.id,
            cluster_id,
            raft.clone(),
            log.clone(),
            raft_pool,
            &config.raft,
        ));
        let elections = raft_runtime.handle().spawn(election.clone().run());

        // Bind before bootstrapping: peers must reach us for the first election.
        let client_listener = bind(config.listen_client).await?;
        let peer_listener = bind(config.listen_peer).await?;
        let client_addr = client_listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen_client,
                source,
            })?;
        let peer_addr = peer_listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen_peer,
                source,
            })?;

        let metrics_listener = match config.listen_metrics {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let config = Arc::new(config);
        // What the leader's read indexes are read from (`read_index.rs`).
        let read_state = crate::read_index::ReadState {
            log: log.clone(),
            reader: reader.clone(),
            commit_told,
        };
        let core = Arc::new(NodeCore {
            id: config.id,
            cluster_id,
            barrier: ReadBarrier::new(
                raft.clone(),
                config.request_timeout,
                counters.clone(),
                Some(Asker {
                    id: config.id,
                    cluster_id,
                    pool: pool.clone(),
                    log: log.clone(),
                    streams: Default::default(),
                }),
            )
            .with_checker(crate::vote_check::Checker {
                id: config.id,
                cluster_id,
                pool: pool.clone(),
                state: read_state.clone(),
                streams: Default::default(),
            }),
            proposer: Proposer::start(raft.clone(), counters.clone(), config.request_timeout),
            watch: crate::watch::Hub::start(reader.clone(), counters.clone()),
            lessor: crate::lease::Lessor::new(crate::lease::EXTEND),
            waits: crate::applied_waits::AppliedWaits::start(reader.clone()),
            counters,
            raft: raft.clone(),
            reader,
            config: config.clone(),
            pool,
            peers,
            read_state,
        });
        let reads = Arc::new(ReadLimiter::new(
            config.max_concurrent_reads,
            config.max_read_bytes_in_flight,
            config.request_timeout,
            core.counters.clone(),
        ));
        let (stop, stopped) = watch::channel(false);
        let mut servers = vec![
            tokio::spawn(serve_client(
                core.clone(),
                election.clone(),
                reads.clone(),
                client_listener,
                stopped.clone(),
            )),
            // Raft traffic is served next to RaftCore, away from client load.
            raft_runtime.handle().spawn(serve_peer(
                core.clone(),
                election.clone(),
                reads,
                receiver,
                peer_listener,
                stopped.clone(),
            )),
            elections,
            // Leader and state changes, logged with the node's view.
            tokio::spawn(crate::observe::watch_raft(
                raft.clone(),
                core.counters.clone(),
                election.clone(),
                // The limit past which `NodeCore::write` refuses writes.
                config.raft.election_timeout_max * 2,
                stopped.clone(),
            )),
        ];
        servers.push(raft_runtime.handle().spawn(crate::snapshot_policy::run(
            raft.clone(),
            core.reader.clone(),
            log.clone(),
            config.snapshot_entries,
            config.snapshot_keep,
            stopped.clone(),
        )));
        servers.push(tokio::spawn(crate::lease::run::run(
            core.clone(),
            stopped.clone(),
        )));
        servers.push(tokio::spawn(crate::api::publish(
            core.clone(),
            stopped.clone(),
        )));
        servers.push(tokio::spawn(crate::auto_compact::run(
            core.clone(),
            config.auto_compaction,
            stopped.clone(),
        )));
        if let Some(listener) = metrics_listener {
            servers.push(tokio::spawn(crate::metrics::serve(
                core.clone(),
                election.clone(),
                listener,
                stopped.clone(),
            )));
        }

        bootstrap(&core).await?;
        tracing::info!(
            id = config.id,
            %client_addr,
            %peer_addr,
            client_tls = config.tls.client.is_some(),
            peer_tls = config.tls.peer.is_some(),
            "nines node started"
        );
        Ok(NinesNode {
            core,
            client_addr,
            peer_addr,
            stop,
            servers,
            _data_dir: data_dir,
            _raft_runtime: raft_runtime,
        })
    }

    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// Resolves, with a one-line reason, if the Raft core stops without
    /// `shutdown` (a storage error, a panic in RaftCore): the node can then
    /// serve nothing, and the binary exits so a supervisor restarts it.
    pub async fn fatal(&self) -> String {
        let reader = self.core.reader.clone();
        crate::fatal::raft_stopped(self.core.raft.clone(), self.stop.subscribe(), move || {
            reader.fault()
        })
        .await
    }

    /// Stops serving, then stops Raft (which flushes nothing further: every
    /// acknowledged entry is already fsynced).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        for server in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

/// Accepted connections with TCP_NODELAY (`Server::tcp_nodelay` only
/// applies to listeners tonic binds itself), a connection limit, a
/// back-off on accept errors such as EMFILE, and the TLS handshake when
/// the port has TLS (see `incoming`).
fn incoming(
    listener: TcpListener,
    name: &'static str,
    limit: usize,
    tls: Option<Arc<nines_tls::ServerTls>>,
) -> Incoming {
    Incoming::new(listener, name, limit, tls)
}

async fn wait_stop(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

fn admin_server(core: &Arc<NodeCore>) -> pb::admin_server::AdminServer<AdminService> {
    pb::admin_server::AdminServer::new(AdminService { core: core.clone() })
}

async fn serve_client(
    core: Arc<NodeCore>,
    election: Arc<Election>,
    reads: Arc<ReadLimiter>,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
) {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(follow_readiness(
        core.clone(),
        election,
        health_reporter,
        stopped.clone(),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(nines_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(nines_proto::ETCD_FILE_DESCRIPTOR_SET)
        .build_v1();
    let etcd = crate::api::etcd::services(&core, &reads, MAX_CLIENT_MESSAGE_BYTES);
    let mut router = h2_server()
        .layer(crate::declared::DeclaredLayer::new(
            crate::declared::Budget::new(CLIENT_DECLARED_BUDGET),
        ))
        .layer(RequestMetricsLayer::new(
            core.counters.timings.requests.clone(),
        ))
        .layer(crate::auth::TokenScopeLayer)
        .add_service(health)
        .add_service(admin_server(&core))
        .add_service(etcd.kv)
        .add_service(etcd.forward)
        .add_service(etcd.cluster)
        .add_service(etcd.maintenance)
        .add_service(etcd.auth)
        .add_service(etcd.watch)
        .add_service(etcd.lease)
        .add_service(etcd.lock)
        .add_service(etcd.election);
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    let limit = core.config.max_client_connections;
    let result = router
        .serve_with_incoming_shutdown(
            incoming(listener, "client", limit, core.config.tls.client.clone()),
            wait_stop(stopped),
        )
        .await;
    if let Err(e) = result {
        tracing::error!("client server stopped: {e}");
    }
}

/// How often the gRPC health service re-checks readiness.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Keeps the gRPC health service (the server as a whole, "", and the KV
/// service) SERVING while this member is ready (`metrics::health::readyz`)
/// and NOT_SERVING otherwise.
async fn follow_readiness(
    core: Arc<NodeCore>,
    election: Arc<Election>,
    reporter: tonic_health::server::HealthReporter,
    mut stopped: watch::Receiver<bool>,
) {
    let kv =
        <epb::kv_server::KvServer<crate::api::etcd::EtcdKv> as tonic::server::NamedService>::NAME;
    let mut last = None;
    loop {
        let ready = crate::metrics::health::readyz(&core, &election).await;
        let status = if ready.is_ok() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        if last != Some(status) {
            if let Err(reason) = &ready {
                tracing::info!("gRPC health NOT_SERVING: {reason}");
            }
            reporter.set_service_status("", status).await;
            reporter.set_service_status(kv, status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

async fn serve_peer(
    core: Arc<NodeCore>,
    election: Arc<Election>,
    reads: Arc<ReadLimiter>,
    receiver: crate::network::SnapshotReceiver,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
) {
    let raft = pb::raft_server::RaftServer::new(
        RaftService::new(
            core.id,
            core.cluster_id,
            core.raft.clone(),
            core.counters.clone(),
        )
        .with_limits(crate::network::guard::GuardLimits::for_quota(
            core.config.quota_backend_bytes,
        ))
        .with_reads(core.barrier.clone())
        .with_vouching(core.read_state.clone())
        .with_election(election)
        .with_receiver(receiver),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // What a member forwards here for a leader with no client address
    // (every service that forwards: see `api::forward`).
    let etcd = crate::api::etcd::services(&core, &reads, MAX_CLIENT_MESSAGE_BYTES);
    let result = h2_server()
        .layer(crate::declared::DeclaredLayer::new(
            crate::declared::Budget::new(PEER_DECLARED_BUDGET),
        ))
        .add_service(raft)
        // Client calls on the peer port only as forwarded by a member: a
        // firewalled client port must not be bypassed through this one.
        .add_service(InterceptedService::new(etcd.kv, member_only(&core)))
        .add_service(InterceptedService::new(etcd.forward, member_only(&core)))
        .add_service(InterceptedService::new(etcd.cluster, member_only(&core)))
        .add_service(InterceptedService::new(
            etcd.maintenance,
            member_only(&core),
        ))
        .add_service(InterceptedService::new(
            admin_server(&core),
            member_only(&core),
        ))
        // Lease, Auth and Lock calls are forwarded to the leader too; with
        // these missing, a cluster whose members know only each other's
        // peer addresses (etcd's `--initial-cluster` form) answered every
        // lease grant through a follower UNIMPLEMENTED.
        .add_service(InterceptedService::new(etcd.lease, member_only(&core)))
        .add_service(InterceptedService::new(etcd.auth, member_only(&core)))
        .add_service(InterceptedService::new(etcd.lock, member_only(&core)))
        .serve_with_incoming_shutdown(
            incoming(
                listener,
                "peer",
                core.config.max_peer_connections,
                core.config.tls.peer.clone(),
            ),
            wait_stop(stopped),
        )
        .await;
    if let Err(e) = result {
        tracing::error!("peer server stopped: {e}");
    }
}

/// Admits a client call on the peer port only when a member of this
/// cluster forwarded it (see `api::forward`).
fn member_only(
    core: &Arc<NodeCore>,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let core = core.clone();
    move |mut request: tonic::Request<()>| {
        let from = crate::api::forward::check_forwarded_by_member(&core, request.metadata())?;
        request
            .extensions_mut()
            .insert(crate::api::forward::PeerMember(from));
        Ok(request)
    }
}

/// HTTP/2 settings for both ports. h2 sends GOAWAY after 20 streams that
/// the peer reset before we accepted them (rapid-reset protection): a node
/// resumed after SIGSTOP finds every request that timed out meanwhile in
/// that state, and dropped its clients' and peers' connections. The bound
/// stays (streams per connection are capped too), sized for callers that
/// time out.
fn h2_server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(H2_MAX_STREAMS))
        .http2_max_pending_accept_reset_streams(Some(H2_MAX_PENDING_RESETS))
        // A connection whose other end is gone (a partition, a host that
        // died without a FIN) gave its slot back only at the TCP timeout,
        // hours later: 64 of them filled the peer port. etcd's server
        // pings every 2 h and waits 20 s; the peer port cannot wait hours.
        .http2_keepalive_interval(Some(H2_PING_EVERY))
        .http2_keepalive_timeout(Some(H2_PING_TIMEOUT))
}

const H2_PING_EVERY: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// What requests may have declared and not yet sent, per port
/// (`declared.rs`): 16 of the largest peer messages, 256 of a client's.
const PEER_DECLARED_BUDGET: u64 = 16 * MAX_MESSAGE_BYTES as u64;
const CLIENT_DECLARED_BUDGET: u64 = 256 * MAX_CLIENT_MESSAGE_BYTES as u64;

/// Concurrent streams per connection (a bench runs 32 per connection).
const H2_MAX_STREAMS: u32 = 1024;
/// Resets before accept tolerated per connection: more than a paused
/// node's backlog of timed-out calls (one per heartbeat and read barrier).
const H2_MAX_PENDING_RESETS: usize = 4096;

async fn bootstrap(core: &Arc<NodeCore>) -> Result<(), ServerError> {
    let initialized = core
        .raft
        .is_initialized()
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    match &core.config.bootstrap {
        Bootstrap::None => {
            tracing::info!(
                "no state and no bootstrap flags: waiting to be added with `nines member add`"
            );
            Ok(())
        }
        Bootstrap::Initial(members) => {
            // Every member initializes with the same membership, which openraft
            // allows; no single node is needed to form the cluster.
            match core.raft.initialize(members.clone()).await {
                Ok(()) => Ok(()),
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => Ok(()),
                Err(e) => Err(ServerError::Raft(format!("initialize: {e}"))),
            }
        }
        Bootstrap::Join {
            endpoints,
            as_learner,
        } => {
            let core = core.clone();
            let endpoints = endpoints.clone();
            let as_learner = *as_learner;
            // In the background: the leader must be able to reach our peer port.
            tokio::spawn(async move {
                if let Err(e) = crate::join::join(&core, &endpoints, as_learner).await {
                    tracing::error!("{e}");
                }
            });
            Ok(())
        }
    }
}
