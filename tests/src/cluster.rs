//! Real `nines-server` processes driven from tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nines_client::{Client, ClientConfig, NodeStatus, TlsFiles};

pub use crate::process::find_server_binary;
use crate::process::{Launch, ServerProcess};

/// The `nines-server` binary (see [`find_server_binary`]).
pub fn server_binary() -> PathBuf {
    find_server_binary(None).unwrap_or_else(|e| panic!("{e}"))
}

/// The `nines` CLI, built next to the server binary (so `NINES_SERVER_BIN`
/// picks both).
pub fn cli_binary() -> PathBuf {
    let bin = server_binary().with_file_name("nines");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p nines-cli` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A port for a server to listen on. Not from the kernel's ephemeral range
/// (bind to port 0): a port released there is soon handed to another
/// socket, and a chaos run once saw two nodes get the same one. Ports come
/// from 10000-29999 instead, each handed out once per process, starting at
/// a point that differs between processes, and checked bindable.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id().wrapping_mul(7919) ^ now_nanos()) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn now_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: u64,
    /// Extra flags for every server.
    pub args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            args: Vec::new(),
        }
    }
}

pub struct NodeProc {
    pub id: u64,
    pub client_addr: String,
    /// The peer address the other members dial (`--advertise-peer`).
    pub peer_addr: String,
    /// Where the peer port listens, when that is not `peer_addr` (a
    /// fault-injecting proxy in between, as in the chaos harness).
    pub peer_listen: Option<String>,
    pub data_dir: PathBuf,
    /// The server's output.
    pub log: PathBuf,
    child: Option<ServerProcess>,
    /// Bootstrap flags used at first start (ignored by the server on restart).
    bootstrap: Vec<String>,
    /// Flags for this node only, after the cluster-wide ones.
    pub extra_args: Vec<String>,
    /// RLIMIT_NOFILE (soft and hard) set in the child before exec.
    pub nofile_limit: Option<u64>,
    /// Its client port answered a status call since it was last spawned.
    answered: AtomicBool,
}

impl NodeProc {
    fn new(id: u64, dir: &Path, peer_addr: String, bootstrap: Vec<String>) -> NodeProc {
        NodeProc {
            id,
            client_addr: format!("127.0.0.1:{}", free_port()),
            peer_addr,
            peer_listen: None,
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            child: None,
            answered: AtomicBool::new(false),
            bootstrap,
            extra_args: Vec::new(),
            nofile_limit: None,
        }
    }
}

/// Where the nodes' data dirs and logs live.
enum RunDir {
    /// Removed with the cluster (tests).
    Temp(tempfile::TempDir),
    /// The caller's, kept for its logs (chaos runs).
    Kept(PathBuf),
}

impl RunDir {
    fn path(&self) -> &Path {
        match self {
            RunDir::Temp(t) => t.path(),
            RunDir::Kept(p) => p,
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    options: ClusterOptions,
    dir: RunDir,
    /// The server binary every node runs.
    bin: PathBuf,
    /// See [`Launch::die_with_spawner`].
    pub die_with_spawner: bool,
    /// TLS of the harness's own clients (`client`, `status`, ...): set it
    /// after `prepare` for servers started with `--cert-file`.
    pub client_tls: Option<TlsFiles>,
}

impl Cluster {
    /// Starts `options.nodes` servers that bootstrap together.
    pub fn start(options: ClusterOptions) -> Cluster {
        let mut cluster = Cluster::prepare(options);
        cluster.spawn_all();
        cluster
    }

    /// Starts every node not running yet: after `prepare`, each with its
    /// own settings (`data_dir`, `extra_args`, `nofile_limit`).
    pub fn spawn_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            if !self.is_running(id) {
                self.spawn(id);
            }
        }
    }

    /// Like `start`, but spawns nothing: set per-node settings in `nodes`,
    /// then call `spawn_all`.
    pub fn prepare(options: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("nines-cluster")
            .tempdir()
            .expect("tempdir");
        Cluster::lay_out(options, RunDir::Temp(dir), server_binary())
    }

    /// Like `prepare`, with the nodes' data and logs under `dir`, which
    /// outlives the cluster, and a given server binary.
    pub fn prepare_in(options: ClusterOptions, dir: &Path, bin: PathBuf) -> Cluster {
        Cluster::lay_out(options, RunDir::Kept(dir.to_path_buf()), bin)
    }

    fn lay_out(options: ClusterOptions, dir: RunDir, bin: PathBuf) -> Cluster {
        let nodes: Vec<NodeProc> = (1..=options.nodes)
            .map(|id| {
                NodeProc::new(
                    id,
                    dir.path(),
                    format!("127.0.0.1:{}", free_port()),
                    Vec::new(),
                )
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            options,
            dir,
            bin,
            die_with_spawner: false,
            client_tls: None,
        };
        cluster.bootstrap_with(|n| format!("{}={}/{}", n.id, n.peer_addr, n.client_addr));
        cluster
    }

    /// Every node bootstraps with `--initial-cluster`, one `entry` per node.
    fn bootstrap_with(&mut self, entry: impl Fn(&NodeProc) -> String) {
        let initial: Vec<String> = self.nodes.iter().map(entry).collect();
        for node in &mut self.nodes {
            node.bootstrap = vec!["--initial-cluster".into(), initial.join(",")];
        }
    }

    /// Bootstraps with `--initial-cluster id=peer,...` (etcd's form: no
    /// client addresses), so members forward to each other's peer ports.
    /// Call after `prepare`, before spawning.
    pub fn bootstrap_with_peer_addrs_only(&mut self) {
        self.bootstrap_with(|n| format!("{}={}", n.id, n.peer_addr));
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a node that starts empty and waits to be added (`member add`).
    pub fn add_node_process(&mut self) -> u64 {
        self.add_node_with(Vec::new())
    }

    /// Adds a node that joins by itself through `--join` (learner, then voter).
    pub fn join_node_process(&mut self) -> u64 {
        let endpoints = self.endpoints().join(",");
        self.add_node_with(vec!["--join".into(), endpoints])
    }

    /// Starts a fresh node with `--join` through these endpoints.
    pub fn join_node_via(&mut self, endpoints: &[String]) -> u64 {
        self.add_node_with(vec!["--join".into(), endpoints.join(",")])
    }

    fn add_node_with(&mut self, bootstrap: Vec<String>) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let peer_addr = format!("127.0.0.1:{}", free_port());
        self.add_node_as(id, peer_addr, bootstrap);
        id
    }

    /// Starts a node with a given id and peer address (one an operator
    /// already added by its peer URL, e.g. `etcdctl member add`).
    pub fn add_node_as(&mut self, id: u64, peer_addr: String, bootstrap: Vec<String>) {
        let node = NodeProc::new(id, self.dir(), peer_addr, bootstrap);
        self.nodes.push(node);
        self.spawn(id);
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    pub fn spawn(&mut self, id: u64) {
        if let Err(e) = self.try_spawn(id) {
            panic!("spawn nines-server {id}: {e}");
        }
    }

    /// Starts a node that is not running.
    pub fn try_spawn(&mut self, id: u64) -> std::io::Result<()> {
        let mut extra = self.options.args.clone();
        let (bin, die_with_spawner) = (self.bin.clone(), self.die_with_spawner);
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Err(std::io::Error::other(format!("node {id} already running")));
        }
        extra.extend(node.extra_args.iter().cloned());
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
        arg(&"--id");
        arg(&id.to_string());
        arg(&"--listen-client");
        arg(&node.client_addr);
        arg(&"--listen-peer");
        match &node.peer_listen {
            Some(listen) => {
                arg(listen);
                arg(&"--advertise-peer");
                arg(&node.peer_addr);
            }
            None => arg(&node.peer_addr),
        }
        arg(&"--data-dir");
        arg(&node.data_dir);
        args.extend(node.bootstrap.iter().chain(&extra).map(Into::into));
        let launch = Launch {
            bin,
            args,
            log: node.log.clone(),
            nofile_limit: node.nofile_limit,
            die_with_spawner,
        };
        node.answered.store(false, Ordering::Relaxed);
        node.child = Some(ServerProcess::spawn(&launch)?);
        Ok(())
    }

    /// kill -9: no shutdown path runs.
    pub fn kill(&mut self, id: u64) {
        if let Some(child) = self.node_mut(id).child.take() {
            child.kill();
        }
    }

    /// kill -9 every node.
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.take() {
                child.kill();
            }
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(child) = self.node_mut(id).child.take() {
            child.terminate();
        }
    }

    /// SIGSTOP: the node keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: u64) {
        if let Some(child) = &mut self.node_mut(id).child {
            child.pause();
        }
    }

    pub fn resume(&mut self, id: u64) {
        if let Some(child) = &mut self.node_mut(id).child {
            child.resume();
        }
    }

    /// Deletes a stopped node's data: it starts empty next time and waits
    /// to be added back (no bootstrap), on the same addresses.
    pub fn wipe(&mut self, id: u64) -> std::io::Result<()> {
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Err(std::io::Error::other(format!("wipe of running node {id}")));
        }
        node.bootstrap = Vec::new();
        match std::fs::remove_dir_all(&node.data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes every node's data dir (logs stay).
    pub fn remove_data(&self) {
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        self.spawn(id);
    }

    /// kill -9, wipe the data dir, and start the node again empty on new
    /// peer and client ports, waiting to be added back (`member add`).
    pub fn rehome(&mut self, id: u64) {
        self.kill(id);
        let node = self.node_mut(id);
        let _ = std::fs::remove_dir_all(&node.data_dir);
        node.client_addr = format!("127.0.0.1:{}", free_port());
        node.peer_addr = format!("127.0.0.1:{}", free_port());
        node.bootstrap = Vec::new();
        self.spawn(id);
    }

    /// The exit status of a node's process if it has ended by itself
    /// (a crash or a fatal exit), without waiting.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = self.node_mut(id);
        let status = node.child.as_mut()?.try_exited()?;
        node.child = None;
        Some(status)
    }

    /// Every node whose process ended by itself since the last look.
    pub fn exited_nodes(&mut self) -> Vec<(u64, std::process::ExitStatus)> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        ids.into_iter()
            .filter_map(|id| self.exited(id).map(|s| (id, s)))
            .collect()
    }

    /// Waits up to `timeout` for a node's process to end by itself.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited(id) {
                return Some(status);
            }
            if Instant::now() >= deadline || !self.is_running(id) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The OS process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(|c| c.pid())
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    /// Running and not exited by itself (nor stopped): see
    /// [`ServerProcess::is_live`].
    pub fn is_alive(&self, id: u64) -> bool {
        self.node(id).child.as_ref().is_some_and(|c| c.is_live())
    }

    pub fn signal(&self, id: u64, signal: i32) {
        if let Some(child) = &self.node(id).child {
            child.signal(signal);
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// A client configuration for `endpoints`, with the harness's TLS.
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints);
        config.tls = self.client_tls.clone();
        config
    }

    pub fn client(&self) -> Client {
        Client::new(self.client_config(self.endpoints())).expect("client")
    }

    /// A client of every node that logs in as `user` (etcd auth).
    pub fn client_as(&self, user: &str, password: &str) -> Client {
        let mut config = self.client_config(self.endpoints());
        config.credentials = Some(nines_client::Credentials {
            user: user.into(),
            password: password.into(),
        });
        Client::new(config).expect("client")
    }

    /// A client bound to one node only.
    pub fn client_of(&self, id: u64) -> Client {
        let mut config = self.client_config(vec![self.node(id).client_addr.clone()]);
        config.retry_deadline = Duration::from_secs(20);
        Client::new(config).expect("client")
    }

    pub async fn status(&self, id: u64) -> Option<NodeStatus> {
        self.status_result(id).await.ok()
    }

    async fn status_result(&self, id: u64) -> Result<NodeStatus, String> {
        let config = self.client_config(vec![self.node(id).client_addr.clone()]);
        let client = Client::new(config).map_err(|e| e.to_string())?;
        client
            .status_of(&self.node(id).client_addr)
            .await
            .map_err(|e| e.to_string())
    }

    /// A node's status, asked up to 50 times 200 ms apart: one call has no
    /// retry, and on a loaded machine it can time out (a test that needed
    /// only the cluster id failed on one such call while five other
    /// three-member clusters of its binary started beside it).
    pub async fn status_retrying(&self, id: u64) -> NodeStatus {
        let mut last = String::new();
        for _ in 0..50 {
            match self.status_result(id).await {
                Ok(status) => return status,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("node {id} answered no status call in 10 s; the last error: {last}");
    }

    /// A node's Raft term, from a retried status call.
    pub async fn term(&self, id: u64) -> u64 {
        let status = self.status_retrying(id).await;
        status.header.expect("status has a header").raft_term
    }

    /// The cluster id, as member `id` reports it.
    pub async fn cluster_id(&self, id: u64) -> u64 {
        let status = self.status_retrying(id).await;
        status.header.expect("status has a header").cluster_id
    }

    /// Every node's term, in id order.
    pub async fn terms(&self) -> Vec<u64> {
        let mut terms = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            terms.push(self.term(node.id).await);
        }
        terms
    }

    /// A leader that served a write and kept its role for a second:
    /// elections right after start may move leadership once more. Each
    /// wait for a leader gets `timeout`.
    pub async fn stable_leader(&self, timeout: Duration) -> u64 {
        loop {
            let leader = self.wait_leader(timeout).await;
            let wrote = self.client_of(leader).put("stable", "v").await.is_ok();
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wrote && self.wait_leader(timeout).await == leader {
                return leader;
            }
        }
    }

    /// Waits until a running node reports a leader that the others agree
    /// on, and every live node (not exited, not stopped) has answered on
    /// its client port since it was spawned: a test that goes on to call
    /// any member finds it listening (one that did not failed on
    /// "connection refused" right after another member became leader).
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            let mut silent = Vec::new();
            for node in self.nodes.iter() {
                let Some(child) = &node.child else { continue };
                match self.status(node.id).await {
                    Some(s) => {
                        node.answered.store(true, Ordering::Relaxed);
                        if s.leader_id != 0 && (s.state == "leader" || s.leader_id != node.id) {
                            leaders.push(s.leader_id);
                        }
                    }
                    None if !node.answered.load(Ordering::Relaxed) && child.is_live() => {
                        silent.push(node.id);
                    }
                    None => {}
                }
            }
            if let Some(&first) = leaders.first() {
                if leaders.iter().all(|&l| l == first)
                    && self.is_running(first)
                    && silent.is_empty()
                {
                    return first;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?} (leaders seen {leaders:?}, never answered {silent:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(id).await {
                if s.applied_index >= index {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply {index} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server log of a node, for failure messages.
    pub fn server_log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Before the temp dir goes: no server writes into a removed dir.
        self.kill_all();
    }
}
