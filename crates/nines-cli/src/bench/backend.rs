//! The stores under test, behind one small interface.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use nines_client::{proto as pb, Client, ClientConfig};
use tokio::task::JoinHandle;

use super::watch::Recorder;

pub enum Backend {
    Nines(Vec<Client>),
    #[cfg(feature = "etcd")]
    Etcd(Vec<etcd_client::Client>),
}

/// etcd-client objects for about `connections` TCP connections: each object
/// holds one to every endpoint (and balances over them itself), where an
/// object of nines' client sends its writes and linearizable reads over
/// one, to the leader. Compared at `--connections` objects each, etcd-client
/// had three times the connections, each with a third of the requests in
/// flight, and fewer requests per connection cost a server more per request
/// (README, Benchmarks).
pub fn etcd_objects(connections: usize, endpoints: usize) -> usize {
    connections.max(1).div_ceil(endpoints.max(1))
}

impl Backend {
    /// TCP connections the request workloads use (see `etcd_objects`).
    pub fn connections(&self, endpoints: usize) -> usize {
        // Used only by the etcd arm, which a default build leaves out.
        let _ = endpoints;
        match self {
            Backend::Nines(c) => c.len(),
            #[cfg(feature = "etcd")]
            Backend::Etcd(c) => c.len() * endpoints,
        }
    }

    /// `objects` client objects of `target`.
    pub async fn connect(
        target: &str,
        endpoints: &[String],
        tls: Option<nines_client::TlsFiles>,
        objects: usize,
    ) -> Result<Backend> {
        match target {
            "nines" => {
                let mut clients = Vec::new();
                for _ in 0..objects.max(1) {
                    let mut config = ClientConfig::new(endpoints.to_vec());
                    config.request_timeout = Duration::from_secs(10);
                    config.tls = tls.clone();
                    let client = Client::new(config)?;
                    client.discover_leader().await;
                    clients.push(client);
                }
                Ok(Backend::Nines(clients))
            }
            #[cfg(feature = "etcd")]
            "etcd" => {
                let options = tls.as_ref().map(etcd_tls).transpose()?;
                let mut clients = Vec::new();
                for _ in 0..objects.max(1) {
                    clients.push(etcd_client::Client::connect(endpoints, options.clone()).await?);
                }
                Ok(Backend::Etcd(clients))
            }
            #[cfg(not(feature = "etcd"))]
            "etcd" => Err(anyhow!(
                "this nines binary was built without the `etcd` feature (scripts/bench-vs-etcd.sh builds it)"
            )),
            other => Err(anyhow!("unknown target {other:?} (nines, etcd)")),
        }
    }

    pub async fn put(&self, conn: usize, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.put_revision(conn, key, value).await.map(|_| ())
    }

    pub async fn get(&self, conn: usize, key: Vec<u8>, serializable: bool) -> Result<()> {
        match self {
            Backend::Nines(c) => {
                c[conn % c.len()]
                    .get_request(nines_client::GetRequest { key, serializable })
                    .await?;
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(c) => {
                let options =
                    serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                c[conn % c.len()].kv_client().get(key, options).await?;
            }
        }
        Ok(())
    }

    pub async fn range(&self, conn: usize, start: Vec<u8>, end: Vec<u8>, limit: i64) -> Result<()> {
        match self {
            Backend::Nines(c) => {
                c[conn % c.len()]
                    .range(pb::RangeRequest {
                        key: start,
                        range_end: end,
                        limit,
                        ..Default::default()
                    })
                    .await?;
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(c) => {
                let options = etcd_client::GetOptions::new()
                    .with_range(end)
                    .with_limit(limit);
                c[conn % c.len()]
                    .kv_client()
                    .get(start, Some(options))
                    .await?;
            }
        }
        Ok(())
    }

    /// A put that returns the revision it was applied at.
    pub async fn put_revision(&self, conn: usize, key: Vec<u8>, value: Vec<u8>) -> Result<i64> {
        match self {
            Backend::Nines(c) => {
                let resp = c[conn % c.len()].put(key, value).await?;
                Ok(resp.header.map_or(0, |h| h.revision))
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(c) => {
                let resp = c[conn % c.len()].kv_client().put(key, value, None).await?;
                Ok(resp.header().map_or(0, |h| h.revision()))
            }
        }
    }

    /// Opens watcher `w` on `prefix` (its own stream, on connection `w`)
    /// and tells `recorder` of each event until the returned task is aborted.
    pub async fn watch_prefix(
        &self,
        w: usize,
        prefix: Vec<u8>,
        prev_kv: bool,
        mut recorder: Recorder,
    ) -> Result<JoinHandle<()>> {
        match self {
            Backend::Nines(c) => {
                let options = nines_client::WatchOptions {
                    range_end: nines_client::prefix_end(&prefix),
                    prev_kv,
                    ..Default::default()
                };
                let mut watch = c[w % c.len()].watch(prefix, options).await?;
                Ok(tokio::spawn(async move {
                    while let Some(Ok(update)) = watch.next().await {
                        let nines_client::WatchUpdate::Events(batch) = update else {
                            continue;
                        };
                        let now = Instant::now();
                        for e in batch {
                            recorder.event(e.kv.map_or(0, |kv| kv.mod_revision), now);
                        }
                    }
                }))
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(c) => {
                let mut options = etcd_client::WatchOptions::new().with_prefix();
                if prev_kv {
                    options = options.with_prev_key();
                }
                let mut stream = c[w % c.len()]
                    .watch_client()
                    .watch(prefix, Some(options))
                    .await?;
                Ok(tokio::spawn(async move {
                    while let Ok(Some(resp)) = stream.message().await {
                        let now = Instant::now();
                        for e in resp.events() {
                            recorder.event(e.kv().map_or(0, |kv| kv.mod_revision()), now);
                        }
                    }
                }))
            }
        }
    }

    /// Compare-and-swap on the key's mod revision (read, then txn).
    pub async fn cas(&self, conn: usize, key: Vec<u8>, value: Vec<u8>) -> Result<bool> {
        match self {
            Backend::Nines(c) => {
                let client = &c[conn % c.len()];
                let current = client.get(key.clone()).await?;
                let mod_revision = current.map(|kv| kv.mod_revision).unwrap_or(0);
                let txn = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        key: key.clone(),
                        result: pb::compare::CompareResult::Equal as i32,
                        target: pb::compare::CompareTarget::Mod as i32,
                        target_union: Some(pb::compare::TargetUnion::ModRevision(mod_revision)),
                        ..Default::default()
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key,
                            value,
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                };
                Ok(client.txn(txn).await?.succeeded)
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(c) => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let mut kv = c[conn % c.len()].kv_client();
                let current = kv.get(key.clone(), None).await?;
                let mod_revision = current
                    .kvs()
                    .first()
                    .map(|kv| kv.mod_revision())
                    .unwrap_or(0);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        mod_revision,
                    )])
                    .and_then([TxnOp::put(key, value, None)]);
                Ok(kv.txn(txn).await?.succeeded())
            }
        }
    }
}

/// The same files as `--cacert/--cert/--key` give nines-client, as
/// etcd-client's TLS (tonic's rustls, ring: the same TLS stack nines uses).
#[cfg(feature = "etcd")]
fn etcd_tls(files: &nines_client::TlsFiles) -> Result<etcd_client::ConnectOptions> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&files.ca)?));
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => return Err(anyhow!("--cert and --key go together")),
    }
    Ok(etcd_client::ConnectOptions::new().with_tls(tls))
}

#[cfg(test)]
mod tests {
    use super::etcd_objects;

    #[test]
    fn etcd_objects_open_about_as_many_connections_as_asked() {
        assert_eq!(etcd_objects(8, 3), 3, "9 connections for 8");
        assert_eq!(etcd_objects(9, 3), 3);
        assert_eq!(etcd_objects(1, 3), 1, "never none");
        assert_eq!(etcd_objects(0, 3), 1);
        assert_eq!(etcd_objects(8, 1), 8, "one endpoint: one per object");
        assert_eq!(etcd_objects(8, 0), 8);
    }
}
