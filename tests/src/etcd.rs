//! A real 3-node etcd (Debian's `etcd-server`) as child processes, for
//! differential tests: free loopback ports, a temp data dir, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::free_port;

pub struct EtcdCluster {
    /// Client URLs, `http://127.0.0.1:port`, one per member.
    pub client_urls: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

/// `etcd` on PATH, installed from Debian when missing (as the bench does).
fn etcd() -> &'static str {
    let found = || {
        Command::new("sh")
            .args(["-c", "command -v etcd"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found() {
        let _ = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq etcd-server >/dev/null",
            ])
            .status();
        assert!(found(), "etcd is needed: apt-get install etcd-server");
    }
    "etcd"
}

impl EtcdCluster {
    /// Starts `n` members that bootstrap together and waits until they
    /// serve a linearizable read.
    pub fn start(n: usize) -> EtcdCluster {
        let bin = etcd();
        let dir = tempfile::Builder::new()
            .prefix("etcd-cluster")
            .tempdir()
            .expect("tempdir");
        let peers: Vec<String> = (0..n)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let client_urls: Vec<String> = (0..n)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{i}={p}"))
            .collect();
        let mut children = Vec::new();
        for i in 0..n {
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log"))).expect("log");
            let child = Command::new(bin)
                .arg(format!("--name=e{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("e{i}")).display()
                ))
                .arg(format!("--listen-client-urls={}", client_urls[i]))
                .arg(format!("--advertise-client-urls={}", client_urls[i]))
                .arg(format!("--listen-peer-urls={}", peers[i]))
                .arg(format!("--initial-advertise-peer-urls={}", peers[i]))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=nines-differential")
                // Elections tolerant of a loaded 2-core machine.
                .arg("--heartbeat-interval=100")
                .arg("--election-timeout=2000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            children.push(child);
        }
        let cluster = EtcdCluster {
            client_urls,
            children,
            dir,
        };
        cluster.wait_ready(Duration::from_secs(60));
        cluster
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for url in &self.client_urls {
            loop {
                let out = crate::etcdctl::ctl(url, &["endpoint", "health"], "");
                if out.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd at {url} not healthy: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.children.len())
            .map(|i| {
                let path = self.dir.path().join(format!("e{i}.log"));
                std::fs::read_to_string(path).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
