//! Real `nines-server` processes on loopback: start, kill -9, pause,
//! wipe, restart. Dropping the cluster SIGKILLs every child (SIGCONT first,
//! so a paused one is not left behind), which also covers panics and Ctrl-C.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nines_client::Client;

use crate::proxy::{source_ip, Proxy};

/// `--server-bin`, else `nines-server` from target/release then
/// target/debug next to the harness binary.
pub fn find_server_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let mut candidates = Vec::new();
    // exe is target/<profile>/nines-jepsen: look in target/{release,debug}.
    if let Some(target) = exe.parent().and_then(Path::parent) {
        candidates.push(target.join("release/nines-server"));
        candidates.push(target.join("debug/nines-server"));
    }
    candidates.push(PathBuf::from("target/release/nines-server"));
    candidates.push(PathBuf::from("target/debug/nines-server"));
    candidates
        .into_iter()
        .find(|p| p.exists())
        .context("nines-server not found; build it (cargo build --release -p nines-server) or pass --server-bin")
}

/// A listen address outside the ephemeral port range (see `free_port`).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        nines_tests::cluster::free_port(),
    )))
}

pub struct Node {
    pub id: u64,
    /// Clients talk to this directly (never partitioned).
    pub client_addr: String,
    /// The real peer listener.
    pub peer_listen: SocketAddr,
    /// The proxy in front of it: what every other node dials.
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Pass --initial-cluster when spawning. Cleared once the data dir is
    /// wiped: a fresh node must wait to be added, not bootstrap a new cluster.
    pub bootstrap: bool,
    child: Option<Child>,
    pub paused: bool,
}

pub struct Cluster {
    bin: PathBuf,
    pub nodes: Vec<Node>,
    initial_cluster: String,
    extra_args: Vec<String>,
}

impl Cluster {
    /// Lays out `n` nodes under `dir` and routes their peer ports through `proxy`.
    pub async fn new(
        bin: PathBuf,
        n: u64,
        dir: &Path,
        proxy: &mut Proxy,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Cluster> {
        let mut nodes = Vec::new();
        for id in 1..=n {
            let peer_listen = free_addr()?;
            let via = proxy.add_route(id, peer_listen).await?;
            nodes.push(Node {
                id,
                client_addr: free_addr()?.to_string(),
                peer_listen,
                peer_addr: via.to_string(),
                data_dir: dir.join(format!("n{id}")),
                log: dir.join(format!("n{id}.log")),
                bootstrap: true,
                child: None,
                paused: false,
            });
        }
        // No client address: forwarding and leader hints then use the peer
        // address, so they cross the proxy too.
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            bin,
            nodes,
            initial_cluster,
            extra_args,
        })
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let initial = self.initial_cluster.clone();
        let extra = self.extra_args.clone();
        let node = self.node_mut(id);
        if node.child.is_some() {
            bail!("node {id} already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .context("server log")?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen-client")
            .arg(&node.client_addr)
            .arg("--listen-peer")
            .arg(node.peer_listen.to_string())
            .arg("--advertise-peer")
            .arg(&node.peer_addr)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--peer-source-ip")
            .arg(source_ip(id).to_string());
        if node.bootstrap {
            cmd.arg("--initial-cluster").arg(initial);
        }
        // Backstop for a harness that dies without cleaning up (panic in
        // main, SIGKILL): the kernel kills the server when the spawning
        // thread goes (a tokio worker, which lives as long as the runtime).
        // SAFETY: prctl is async-signal-safe and touches no parent state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(extra)
            .env("NINES_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn signal(&self, id: u64, sig: i32) {
        if let Some(child) = &self.node(id).child {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// kill -9: no shutdown path runs.
    pub fn kill(&mut self, id: u64) {
        if self.node(id).paused {
            self.signal(id, libc::SIGCONT);
        }
        self.signal(id, libc::SIGKILL);
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.wait();
        }
        node.paused = false;
    }

    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.node_mut(id).paused = self.is_running(id);
    }

    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.node_mut(id).paused = false;
    }

    /// Deletes a stopped node's data; it will start empty and wait.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id);
        if node.child.is_some() {
            bail!("wipe of running node {id}");
        }
        node.bootstrap = false;
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir)?;
        }
        Ok(())
    }

    /// A server that exited on its own (crash) is worth a report line.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                if let Ok(Some(status)) = child.try_wait() {
                    out.push((node.id, status.to_string()));
                    node.child = None;
                }
            }
        }
        out
    }

    pub fn kill_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }

    /// Deletes data dirs (logs stay) after a clean run.
    pub fn remove_data(&self) {
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A client for status and administration over every node. Status calls
/// want a short timeout (a paused node must not stall the nemesis); a
/// membership change may wait for a log round on a busy cluster.
pub fn admin_client(addrs: Vec<String>, request_timeout: Duration) -> anyhow::Result<Client> {
    let mut config = crate::tls::client_config(addrs);
    config.request_timeout = request_timeout;
    config.retry_deadline = Duration::from_secs(10);
    config.connect_timeout = Duration::from_millis(300);
    Ok(Client::new(config)?)
}

/// The node that says it leads, among `candidates` (client addresses by id).
pub async fn find_leader(admin: &Client, candidates: &[(u64, String)]) -> Option<u64> {
    for (id, addr) in candidates {
        if let Ok(s) = admin.status_of(addr).await {
            if s.state == "leader" {
                return Some(*id);
            }
        }
    }
    None
}
