//! The chaos cluster: real `nines-server` processes from the test
//! harness (`nines_tests::Cluster`, the one place servers are spawned),
//! laid out so that every peer connection crosses the fault-injecting
//! proxy. Dropping it kills every server (SIGCONT first for a paused one),
//! which also covers panics and Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nines_client::Client;
use nines_tests::cluster::{free_port, NodeProc};
use nines_tests::ClusterOptions;

use crate::proxy::{source_ip, Proxy};

/// `--server-bin`, else `NINES_SERVER_BIN`, else `nines-server` built
/// next to the harness binary.
pub fn find_server_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    nines_tests::cluster::find_server_binary(explicit).map_err(anyhow::Error::msg)
}

pub struct Cluster {
    inner: nines_tests::Cluster,
}

impl Cluster {
    /// Lays out `n` nodes under `dir` and routes their peer ports through
    /// `proxy`. Clients talk to client ports directly (never partitioned).
    pub async fn new(
        bin: PathBuf,
        n: u64,
        dir: &Path,
        proxy: &mut Proxy,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Cluster> {
        let options = ClusterOptions {
            nodes: n,
            args: extra_args,
        };
        let mut inner = nines_tests::Cluster::prepare_in(options, dir, bin);
        // Servers are spawned from tokio workers, which live as long as
        // the harness: if it is killed, its servers go with it.
        inner.die_with_spawner = true;
        for node in &mut inner.nodes {
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
            let via = proxy.add_route(node.id, listen).await?;
            node.peer_listen = Some(listen.to_string());
            node.peer_addr = via.to_string();
            node.extra_args = vec!["--peer-source-ip".into(), source_ip(node.id).to_string()];
        }
        // No client address: forwarding and leader hints then use the peer
        // address, so they cross the proxy too.
        inner.bootstrap_with_peer_addrs_only();
        Ok(Cluster { inner })
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.inner.node(id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.inner.nodes.iter().map(|n| n.id).collect()
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.inner.endpoints()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.inner.is_running(id)
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        self.inner
            .try_spawn(id)
            .with_context(|| format!("spawn node {id}"))
    }

    /// kill -9: no shutdown path runs.
    pub fn kill(&mut self, id: u64) {
        self.inner.kill(id);
    }

    pub fn pause(&mut self, id: u64) {
        self.inner.pause(id);
    }

    pub fn resume(&mut self, id: u64) {
        self.inner.resume(id);
    }

    /// Deletes a stopped node's data; it will start empty and wait.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        Ok(self.inner.wipe(id)?)
    }

    /// A server that exited on its own (crash) is worth a report line.
    /// Nodes whose process ended by itself, each with its exit status and
    /// the server's own last word (its fatal line, or its last log line),
    /// so a CI log that keeps only the report still names the cause.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        self.inner
            .exited_nodes()
            .into_iter()
            .map(|(id, status)| {
                let log = self.inner.server_log(id);
                (id, format!("{status}: {}", last_word(&log)))
            })
            .collect()
    }

    pub fn kill_all(&mut self) {
        self.inner.kill_all();
    }

    /// Deletes data dirs (logs stay) after a clean run.
    pub fn remove_data(&self) {
        self.inner.remove_data();
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

/// The last `fatal:` line of a server log, else its last line, without
/// colour codes.
fn last_word(log: &str) -> String {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("fatal:"))
        .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("(empty log)");
    strip_ansi(line)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::last_word;

    #[test]
    fn the_fatal_line_is_the_last_word() {
        let log = "\u{1b}[2mts\u{1b}[0m INFO up\nnines-server: fatal: panic in thread x at a.rs:1: boom; exiting with code 70\nlater\n";
        assert_eq!(
            last_word(log),
            "nines-server: fatal: panic in thread x at a.rs:1: boom; exiting with code 70"
        );
        assert_eq!(last_word("\u{1b}[32m INFO\u{1b}[0m bye\n\n"), " INFO bye");
        assert_eq!(last_word(""), "(empty log)");
    }
}
