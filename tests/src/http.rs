//! The metrics and health port (`--listen-metrics`) as tests see it: a
//! cluster whose nodes serve it, a bare HTTP/1.0 GET, and the metrics page
//! parsed into samples.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::free_port;
use crate::{Cluster, ClusterOptions};

/// A cluster whose nodes serve metrics; returns it and each node's
/// metrics address.
pub fn metrics_cluster(args: &[&str]) -> (Cluster, HashMap<u64, String>) {
    let mut cluster = Cluster::prepare(ClusterOptions {
        nodes: 3,
        args: args.iter().map(|a| a.to_string()).collect(),
    });
    let mut metrics = HashMap::new();
    for node in &mut cluster.nodes {
        let addr = format!("127.0.0.1:{}", free_port());
        node.extra_args = vec!["--listen-metrics".into(), addr.clone()];
        metrics.insert(node.id, addr);
    }
    cluster.spawn_all();
    (cluster, metrics)
}

/// Status code and body of `method path` on `addr`; None if there is no
/// complete answer within `timeout`.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let fetch = async {
        let mut socket = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!("{method} {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n");
        socket.write_all(head.as_bytes()).await.ok()?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer).await.ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(timeout, fetch).await.ok()?
}

pub async fn get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    request(addr, "GET", path, timeout).await
}

/// The metrics page as sample -> value: `name` or `name{labels}` as
/// written (HELP/TYPE/UNIT lines skipped). None without a 200 answer.
pub async fn scrape(addr: &str) -> Option<HashMap<String, f64>> {
    let (status, body) = get(addr, "/metrics", Duration::from_secs(10)).await?;
    if status != 200 {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| l.starts_with("nines_"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Polls a node's metrics until `check` holds; panics with the last page
/// seen if it does not within `within`.
pub async fn wait_metrics(
    addr: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        if let Some(m) = scrape(addr).await {
            if check(&m) {
                return;
            }
            last = Some(m);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not seen within {within:?}; last metrics: {last:?}");
}
