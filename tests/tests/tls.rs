//! Transport security on real server processes, with certificates made
//! here: client TLS with client certificate auth, peer mutual TLS with an
//! allowed CN, rotation without restart, and etcdctl over TLS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_client::proto::v1::raft_client::RaftClient;
use nines_client::proto::v1::{ProbeRequest, RaftRequest};
use nines_client::{Client, ClientConfig, Connector, TlsFiles};
use nines_tests::pki::Pki;
use nines_tests::{etcdctl, Cluster, ClusterOptions};
use nines_tls::ClientTls;
use nines_types::{codec, Command as KvCommand, Request, TypeConfig};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

const LONG: Duration = Duration::from_secs(30);

/// A connector with `ca` and, when given, the `pair` certificate.
fn connector(pki: &Pki, ca: &str, pair: Option<&str>) -> Connector {
    let files = TlsFiles {
        ca: pki.path(ca),
        cert: pair.map(|p| pki.path(&format!("{p}.crt"))),
        key: pair.map(|p| pki.path(&format!("{p}.key"))),
    };
    Connector::new(Some(Arc::new(ClientTls::new("test", files).unwrap())), None)
}

fn tls_cluster(pki: &Pki, nodes: u64) -> Cluster {
    let mut cluster = Cluster::prepare(ClusterOptions {
        nodes,
        args: pki.server_args(),
    });
    cluster.client_tls = Some(pki.user_tls());
    cluster.spawn_all();
    cluster
}

/// A client that gives up fast: for calls that must fail.
fn impatient(endpoints: Vec<String>, tls: Option<TlsFiles>) -> Client {
    let mut config = ClientConfig::new(endpoints);
    config.tls = tls;
    config.retry_deadline = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(1);
    Client::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_that_have_a_certificate() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki, 3);
    let leader = cluster.wait_leader(LONG).await;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();

    // Through a follower: forwarded to the leader's client port over TLS.
    let via_follower = cluster.client_of(followers[0]);
    via_follower
        .put("tls/k", "v1")
        .await
        .expect("put via a follower");
    // A linearizable read on the other follower asks the leader for a
    // read index over the peer port's mutual TLS.
    let read = cluster.client_of(followers[1]).get("tls/k").await.unwrap();
    assert_eq!(read.expect("key").value, b"v1");
    let all = cluster.client();
    all.put("tls/k", "v2").await.unwrap();
    assert_eq!(all.get("tls/k").await.unwrap().unwrap().value, b"v2");
    for node in &cluster.nodes {
        assert!(
            cluster.status(node.id).await.is_some(),
            "status of {}",
            node.id
        );
    }

    // --client-cert-auth: a client with the CA but no certificate fails
    // the handshake, and so does a plaintext one and one with a
    // certificate from another CA.
    let endpoints = cluster.endpoints();
    let no_cert = TlsFiles {
        ca: pki.path("clients-ca.crt"),
        cert: None,
        key: None,
    };
    pki.issue(&pki.outsider, "root", "outsider-user");
    let outsider = TlsFiles {
        cert: Some(pki.path("outsider-user.crt")),
        key: Some(pki.path("outsider-user.key")),
        ..no_cert.clone()
    };
    for (what, tls) in [
        ("no certificate", Some(no_cert)),
        ("plaintext", None),
        ("another CA's certificate", Some(outsider)),
    ] {
        let result = impatient(endpoints.clone(), tls).put("tls/k", "x").await;
        assert!(result.is_err(), "{what}: {result:?}");
    }
    assert_eq!(all.get("tls/k").await.unwrap().unwrap().value, b"v2");
    // The server certificate must come from the CA the client trusts.
    let wrong_ca = TlsFiles {
        ca: pki.path("cluster-ca.crt"),
        ..pki.user_tls()
    };
    assert!(impatient(endpoints, Some(wrong_ca))
        .get("tls/k")
        .await
        .is_err());
    let log = cluster.server_log(leader);
    assert!(log.contains("TLS handshake refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_a_tls_cluster() {
    // --join: the new member adds itself through a client port (TLS, its
    // member certificate), the leader probes its peer port (mutual TLS)
    // before adding it, then replicates to it and promotes it.
    let pki = Pki::new();
    let mut cluster = tls_cluster(&pki, 3);
    cluster.wait_leader(LONG).await;
    cluster.client().put("before", "join").await.unwrap();
    let id = cluster.join_node_process();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = cluster.status(id).await {
            if !status.is_learner && status.applied_index > 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not join\n{}",
            cluster.server_log(id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read = cluster.client_of(id).get("before").await.unwrap();
    assert_eq!(read.expect("replicated").value, b"join");
    let members = cluster.client().member_list().await.unwrap().members;
    assert_eq!(members.len(), 4, "{members:?}");
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");
    let joined = members.iter().find(|m| m.id == id).expect("the new member");
    assert!(joined.peer_ur_ls[0].starts_with("https://"), "{joined:?}");
}

fn append_from(leader: u64, term: u64) -> Vec<u8> {
    let entry = openraft::Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), 1),
        payload: EntryPayload::Normal(Request::new(KvCommand::Put {
            key: b"forged".to_vec(),
            value: b"evil".to_vec(),
            lease: 0,
            prev_kv: false,
        })),
    };
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![entry],
        leader_commit: None,
    };
    codec::encode(&rpc).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_admits_only_cluster_certificates() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki, 3);
    // Stable: a start-up election that moves leadership later would look
    // like one the forgeries caused (CI, 2 loaded cores, saw it).
    let leader = cluster.stable_leader(LONG).await;
    let term = cluster.term(leader).await;
    let cluster_id = cluster.cluster_id(leader).await;
    let target = (1..=3).find(|&id| id != leader).unwrap();
    let peer_addr = cluster.node(target).peer_addr.clone();

    // TCP is accepted: refusal happens in the handshake.
    tokio::net::TcpStream::connect(&peer_addr)
        .await
        .expect("TCP connect to the peer port");

    let probe = |connector: Connector| {
        let addr = peer_addr.clone();
        async move {
            let channel = connector
                .connect(&addr, |e| {
                    e.connect_timeout(LONG).timeout(Duration::from_secs(5))
                })
                .await
                .map_err(|e| e.to_string())?;
            let request = ProbeRequest { target, cluster_id };
            RaftClient::new(channel)
                .probe(request)
                .await
                .map(|r| r.into_inner().id)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    };
    // Control: a member's certificate gets an answer.
    assert_eq!(
        probe(connector(&pki, "cluster-ca.crt", Some("peer"))).await,
        Ok(target)
    );
    pki.issue(&pki.cluster, "intruder", "wrong-cn");
    pki.issue(&pki.outsider, "nines-peer", "outsider-peer");
    for (what, connector) in [
        ("no certificate", connector(&pki, "cluster-ca.crt", None)),
        (
            "the client CA's certificate",
            connector(&pki, "cluster-ca.crt", Some("server")),
        ),
        (
            "another CA's certificate with the allowed CN",
            connector(&pki, "cluster-ca.crt", Some("outsider-peer")),
        ),
        (
            "a cluster certificate with another CN",
            connector(&pki, "cluster-ca.crt", Some("wrong-cn")),
        ),
    ] {
        let result = probe(connector).await;
        assert!(result.is_err(), "{what}: {result:?}");
    }

    // Forged Raft messages in plaintext, as a member would send them
    // without TLS: an append with a put from the leader's id at the next
    // term, and a vote far ahead. Neither gets an answer.
    let plain = Connector::default();
    let channel = plain
        .connect(&peer_addr, |e| e.timeout(Duration::from_secs(5)))
        .await;
    if let Ok(channel) = channel {
        let mut raft = RaftClient::new(channel);
        let request = |data| RaftRequest {
            target,
            cluster_id,
            data,
        };
        let append = raft
            .append_entries(request(append_from(leader, term + 1)))
            .await;
        assert!(append.is_err(), "a plaintext append got an answer");
        let vote = codec::encode(&VoteRequest::new(Vote::new(term + 1000, leader), None)).unwrap();
        assert!(
            raft.vote(request(vote)).await.is_err(),
            "a plaintext vote got an answer"
        );
    }
    // The forged vote moved no term; an election of the load's own (a
    // few terms at most) is not what this checks.
    for t in cluster.terms().await {
        assert!(
            t < term + 1000,
            "a forged vote moved a term: {t} from {term}"
        );
    }
    cluster.wait_leader(LONG).await;
    assert!(cluster.client().get("forged").await.unwrap().is_none());
    cluster.client().put("after", "forgeries").await.unwrap();
    let log = cluster.server_log(target);
    assert!(log.contains("TLS handshake refused"), "{log}");
}

fn served_cn(stream: &nines_tls::Stream) -> String {
    let certs = stream.peer_certificates().expect("a certificate");
    nines_tls::cn::common_names(&certs[0]).join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki, 1);
    cluster.wait_leader(LONG).await;
    let client = cluster.client();
    client.put("rotate", "before").await.unwrap();
    let node = cluster.node(1);
    let to_client_port = connector(&pki, "clients-ca.crt", Some("user"));
    let to_peer_port = connector(&pki, "cluster-ca.crt", Some("peer"));
    let stream = to_client_port.stream(&node.client_addr).await.unwrap();
    assert_eq!(served_cn(&stream), "nines-member");
    assert_eq!(
        served_cn(&to_peer_port.stream(&node.peer_addr).await.unwrap()),
        "nines-peer"
    );

    // New keys and certificates from the same CAs, renamed over the old
    // files; the peer CN stays the allowed one, so check the serial.
    pki.issue(&pki.clients, "nines-member-rotated", "server");
    let old_peer = to_peer_port.stream(&node.peer_addr).await.unwrap();
    let old_peer = old_peer.peer_certificates().unwrap()[0].clone();
    pki.issue(&pki.cluster, "nines-peer", "peer");
    let deadline = Instant::now() + nines_tls::RELOAD_CHECK * 5;
    loop {
        let stream = to_client_port.stream(&node.client_addr).await.unwrap();
        if served_cn(&stream) == "nines-member-rotated" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peer = to_peer_port.stream(&node.peer_addr).await.unwrap();
    assert_ne!(peer.peer_certificates().unwrap()[0], old_peer);
    // The open connection of the running client goes on working, and new
    // clients connect.
    client.put("rotate", "after").await.unwrap();
    let fresh = cluster.client();
    assert_eq!(fresh.get("rotate").await.unwrap().unwrap().value, b"after");
    assert!(cluster.server_log(1).contains("reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_speaks_tls_to_nines() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki, 3);
    cluster.wait_leader(LONG).await;
    let endpoint = format!("https://{}", cluster.node(1).client_addr);
    let tls = [
        format!("--cacert={}", pki.s("clients-ca.crt")),
        format!("--cert={}", pki.s("user.crt")),
        format!("--key={}", pki.s("user.key")),
    ];
    let with_tls = |args: &[&str]| -> Vec<String> {
        tls.iter()
            .cloned()
            .chain(args.iter().map(|a| a.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        etcdctl::ok(&endpoint, &args)
    };
    run(with_tls(&["put", "etcdctl/tls", "hello"]));
    let got = run(with_tls(&["get", "etcdctl/tls"]));
    assert_eq!(got, "etcdctl/tls\nhello\n");
    let members = run(with_tls(&["member", "list"]));
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.contains("https://127.0.0.1:"), "{members}");
    // etcdctl 3.4 reports health on stderr; --cluster dials every
    // member's https:// client URL from the member list.
    let args = with_tls(&["endpoint", "health", "--cluster"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = etcdctl::ctl(&endpoint, &args, "");
    let health = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{health}");
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    // Without a client certificate the handshake is refused.
    let no_cert = [
        format!("--cacert={}", pki.s("clients-ca.crt")),
        "--dial-timeout=2s".to_string(),
        "get".to_string(),
        "etcdctl/tls".to_string(),
    ];
    let args: Vec<&str> = no_cert.iter().map(String::as_str).collect();
    let out = etcdctl::ctl(&endpoint, &args, "");
    assert!(!out.status.success(), "etcdctl without --cert succeeded");
}

/// Runs the server with `args`; it must exit by itself, non-zero, within
/// a few seconds. Returns its stderr.
fn refused_start(args: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(nines_tests::cluster::server_binary())
        .args(["--id", "1", "--listen-client", "127.0.0.1:0"])
        .args(["--listen-peer", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_tls_files_are_clear_start_up_errors() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let mut args = pki.server_args();
    let set = |args: &mut Vec<String>, flag: &str, value: &Path| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.display().to_string();
    };
    set(&mut args, "--cert-file", &pki.path("missing.crt"));
    let err = refused_start(&args);
    assert!(err.contains("missing.crt"), "{err}");

    let mut args = pki.server_args();
    set(&mut args, "--peer-key-file", &garbage);
    let err = refused_start(&args);
    assert!(
        err.contains("garbage.pem") && err.contains("private key"),
        "{err}"
    );

    // A key that is not the certificate's.
    let mut args = pki.server_args();
    set(&mut args, "--key-file", &pki.path("user.key"));
    let err = refused_start(&args);
    assert!(err.contains("user.key"), "{err}");

    let err = refused_start(&[
        "--cert-file".into(),
        pki.s("server.crt"),
        "--key-file".into(),
        pki.s("server.key"),
    ]);
    assert!(err.contains("--trusted-ca-file"), "{err}");
    let err = refused_start(&["--advertise-client".into(), "https://127.0.0.1:1".into()]);
    assert!(err.contains("--advertise-client"), "{err}");
}
