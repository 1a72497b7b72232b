//! Backup and restore on real processes: a snapshot saved through the
//! client while 64 clients write, restored with `nines snapshot restore`
//! into a fresh 3-node cluster, hashes as the source did at its revision;
//! and a file `etcdctl snapshot save` writes is one `nines snapshot
//! status` accepts, as is one `nines snapshot save` writes.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_client::snapshot::save_snapshot;
use nines_tests::etcdctl;
use nines_tests::{Cluster, ClusterOptions};
use tonic::transport::Channel;

const LONG: Duration = Duration::from_secs(60);
const WRITERS: usize = 64;

/// Runs `nines ARGS`; fails the test with its stderr if it fails.
fn nines(args: &[&str]) -> String {
    let out = Command::new(nines_tests::cluster::cli_binary())
        .args(args)
        .output()
        .expect("run nines");
    assert!(
        out.status.success(),
        "nines {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// HashKV of one member at `revision`, retried through elections.
async fn hash_kv(endpoint: &str, revision: i64) -> epb::HashKvResponse {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let mut client = epb::maintenance_client::MaintenanceClient::new(channel(endpoint).await);
        match client.hash_kv(epb::HashKvRequest { revision }).await {
            Ok(r) => return r.into_inner(),
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "hashkv on {endpoint}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A put through any member, retried until it succeeds.
async fn put(endpoint: &str, key: &str, value: &str) -> epb::PutResponse {
    let deadline = std::time::Instant::now() + LONG;
    let mut client = epb::kv_client::KvClient::new(channel(endpoint).await);
    loop {
        let request = epb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        match client.put(request).await {
            Ok(r) => return r.into_inner(),
            Err(e) => assert!(std::time::Instant::now() < deadline, "put {key}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(endpoint: &str, key: &str) -> epb::RangeResponse {
    let mut client = epb::kv_client::KvClient::new(channel(endpoint).await);
    client
        .range(epb::RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
}

/// `--initial-cluster` of a prepared cluster, as the harness bootstraps it.
fn initial_cluster(cluster: &Cluster) -> String {
    let members: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("{}={}/{}", n.id, n.peer_addr, n.client_addr))
        .collect();
    members.join(",")
}

fn status_json(file: &Path) -> serde_json::Value {
    let text = nines(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    serde_json::from_str(&text).expect("status json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_load_restores_into_a_new_cluster_with_the_same_hash() {
    let source = Cluster::start(ClusterOptions::default());
    source.wait_leader(LONG).await;
    let endpoints = source.endpoints();
    for i in 0..200 {
        put(&endpoints[i % 3], &format!("base/{i:03}"), &format!("v{i}")).await;
    }

    // 64 clients, each with its own connection, write until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (stop, written) = (stop.clone(), written.clone());
        let endpoint = endpoints[w % 3].clone();
        writers.push(tokio::spawn(async move {
            let mut client = epb::kv_client::KvClient::new(channel(&endpoint).await);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let request = epb::PutRequest {
                    key: format!("load/{w:02}/{}", n % 50).into_bytes(),
                    value: format!("{n}").into_bytes(),
                    ..Default::default()
                };
                // Errors (an election under CI load) only slow the load down.
                if client.put(request).await.is_ok() {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = written.load(Ordering::Relaxed);
    assert!(before > 0, "no write succeeded before the snapshot");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let mut out = tokio::fs::File::create(&file).await.unwrap();
    let mut progressed = 0u64;
    let plain = nines_client::Connector::default();
    let saved = save_snapshot(&endpoints[1], &plain, LONG, &mut out, |p| {
        progressed = p.received
    })
    .await
    .expect("save snapshot under load");
    drop(out);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let after = written.load(Ordering::Relaxed);
    assert!(after > before, "writes went on while the snapshot streamed");
    assert_eq!(progressed, saved.bytes);
    assert_eq!(saved.bytes, std::fs::metadata(&file).unwrap().len());
    let at = saved.revision;
    assert!(at > 200, "the snapshot holds the base keys (revision {at})");

    // The source agrees with itself at that revision, and the file says the same.
    let source_hash = hash_kv(&endpoints[0], at).await;
    for e in &endpoints[1..] {
        assert_eq!(hash_kv(e, at).await.hash, source_hash.hash, "member {e}");
    }
    let current = hash_kv(&endpoints[0], 0).await;
    assert!(
        current.hash_revision > at,
        "writes landed after the snapshot"
    );
    let status = status_json(&file);
    assert_eq!(status["revision"], at);
    assert_eq!(status["hash"], source_hash.hash);
    assert_eq!(status["totalSize"], saved.bytes);

    // A new cluster: new data dirs, new ports, a new token.
    let token = "restored-cluster";
    let mut restored = Cluster::prepare(ClusterOptions {
        nodes: 3,
        args: vec!["--cluster-token".into(), token.into()],
    });
    let spec = initial_cluster(&restored);
    for node in &restored.nodes {
        nines(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            node.data_dir.to_str().unwrap(),
            "--id",
            &node.id.to_string(),
            "--initial-cluster",
            &spec,
            "--advertise-peer",
            &node.peer_addr,
            "--cluster-token",
            token,
        ]);
    }
    restored.spawn_all();
    restored.wait_leader(LONG).await;
    let new_endpoints = restored.endpoints();
    for (i, e) in new_endpoints.iter().enumerate() {
        let h = hash_kv(e, at).await;
        assert_eq!(
            (h.hash, h.compact_revision),
            (source_hash.hash, source_hash.compact_revision),
            "restored member {}: {}",
            i + 1,
            restored.server_log(i as u64 + 1)
        );
        assert_ne!(
            h.header.unwrap().cluster_id,
            source_hash.header.unwrap().cluster_id,
            "a new cluster id"
        );
    }
    // Writes go on after the snapshot's revision; its data is there.
    let written = put(&new_endpoints[2], "after/restore", "yes").await;
    assert_eq!(written.header.unwrap().revision, at + 1);
    let base = get(&new_endpoints[0], "base/007").await;
    assert_eq!(base.kvs[0].value, b"v7");
    let new = get(&new_endpoints[1], "after/restore").await;
    assert_eq!(new.kvs[0].mod_revision, at + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_save_writes_a_file_nines_reads() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let endpoint = cluster.endpoints()[0].clone();
    for i in 0..20 {
        put(&endpoint, &format!("k{i}"), "v").await;
    }
    put(&endpoint, "k3", "again").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcdctl.db");
    let said = etcdctl::ok(&endpoint, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(said.contains("Snapshot saved at"), "{said}");
    let status = status_json(&file);
    let hash = hash_kv(&endpoint, 0).await;
    assert_eq!(status["revision"], hash.hash_revision);
    assert_eq!(status["hash"], hash.hash);
    assert_eq!(status["totalKey"], 20);

    // `nines snapshot save` of the same state: same revision and hash.
    let ours = dir.path().join("nines.db");
    let said = nines(&[
        "--endpoints",
        &endpoint,
        "snapshot",
        "save",
        ours.to_str().unwrap(),
    ]);
    assert!(said.contains("Snapshot saved at"), "{said}");
    assert!(!dir.path().join("nines.db.part").exists());
    let our_status = status_json(&ours);
    assert_eq!(our_status["revision"], status["revision"]);
    assert_eq!(our_status["hash"], status["hash"]);

    // A cut file is refused with a clear error.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
    let out = Command::new(nines_tests::cluster::cli_binary())
        .args(["snapshot", "status", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
}

/// Snapshot streams nobody reads are bounded per member: each held a
/// blocking thread and a full copy of the state on disk, without limit.
/// A third at once is RESOURCE_EXHAUSTED; once one ends, a new one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_snapshot_streams_are_bounded() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(60)).await;
    let endpoint = cluster.node(1).client_addr.clone();
    // Enough data that a stream cannot finish into buffers unread.
    let value = "v".repeat(1_000_000);
    for i in 0..4 {
        put(&endpoint, &format!("big/{i}"), &value).await;
    }
    let open = || async {
        epb::maintenance_client::MaintenanceClient::new(channel(&endpoint).await)
            .snapshot(epb::SnapshotRequest {})
            .await
    };
    let first = open().await.expect("first snapshot stream");
    let _second = open().await.expect("second snapshot stream");
    let Err(third) = open().await else {
        panic!("a third snapshot stream was served");
    };
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    // Reading the first to its end frees its slot.
    let mut first = first.into_inner();
    while first.message().await.expect("snapshot message").is_some() {}
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match open().await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                assert!(std::time::Instant::now() < deadline, "no slot freed: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
