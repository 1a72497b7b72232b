//! etcd's Lock and Election services, through nines-client: the same
//! scenario against a 3-member etcd (the reference, which also proves the
//! protos wire-compatible) and a 3-node nines, with the two contenders on
//! different members: mutual exclusion in queue order, fencing tokens
//! that increase, a fenced write refused once its lock is gone, a wait
//! abandoned by its client withdrawing its key, a revoked lease handing
//! the lock on, and leadership, proclamations, resignation and an
//! observer's view of them. Then nines only: waits that outlast the
//! request timeout, a lease that expires while waiting, and etcdctl's and
//! nines' `lock` and `elect` commands.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nines_client::proto as pb;
use nines_client::{Client, ClientConfig, ClientError, Fenced};
use nines_tests::etcd::EtcdCluster;
use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(30);
/// How long a call must stay blocked to count as waiting.
const BLOCKED: Duration = Duration::from_millis(400);

fn client(endpoint: &str) -> Client {
    let mut config = ClientConfig::new([endpoint.to_string()]);
    config.retry_deadline = Duration::from_secs(20);
    Client::new(config).expect("client")
}

fn put(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// Keys under `prefix`, in key order.
async fn keys(client: &Client, prefix: &str) -> Vec<String> {
    let resp = client
        .range(pb::RangeRequest {
            key: prefix.into(),
            range_end: nines_client::prefix_end(prefix.as_bytes()),
            keys_only: true,
            ..Default::default()
        })
        .await
        .expect("range");
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

async fn value(client: &Client, key: &str) -> Option<String> {
    let kv = client.get(key).await.expect("get")?;
    Some(String::from_utf8_lossy(&kv.value).into_owned())
}

/// A call that must still be blocked after `BLOCKED`.
async fn blocked<T>(task: &tokio::task::JoinHandle<T>) {
    tokio::time::sleep(BLOCKED).await;
    assert!(!task.is_finished(), "the call should still be waiting");
}

async fn done<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(LONG, task)
        .await
        .expect("the call finishes")
        .expect("no panic")
}

/// The lock part of the scenario; `a` and `b` talk to different members.
async fn lock_scenario(a: &Client, b: &Client) {
    let lease_a = a.lease_grant(30, 0).await.expect("grant a").id;
    let lease_b = b.lease_grant(30, 0).await.expect("grant b").id;

    let held_a = a.lock("L", lease_a).await.expect("a locks");
    assert_eq!(held_a.key, format!("L/{lease_a:x}").into_bytes());
    assert!(held_a.fence > 0 && held_a.revision >= held_a.fence);
    let applied = a
        .fenced_txn(&held_a.key, held_a.fence, vec![put("reg", "1")])
        .await
        .unwrap();
    assert!(matches!(applied, Fenced::Applied(_)));

    // b waits on another member until a unlocks.
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.lock("L", lease_b).await });
    blocked(&waiting).await;
    a.unlock(held_a.key.clone()).await.expect("unlock");
    let held_b = done(waiting).await.expect("b locks");
    assert!(held_b.fence > held_a.fence, "fencing tokens increase");

    // a's lock is gone: its fenced write is refused, b's applies.
    let stale = a
        .fenced_txn(&held_a.key, held_a.fence, vec![put("reg", "stale")])
        .await
        .unwrap();
    assert!(matches!(stale, Fenced::LockLost(_)), "{stale:?}");
    let fresh = b
        .fenced_txn(&held_b.key, held_b.fence, vec![put("reg", "2")])
        .await
        .unwrap();
    assert!(matches!(fresh, Fenced::Applied(_)));
    assert_eq!(value(a, "reg").await.as_deref(), Some("2"));

    // A waiter whose client gives up leaves no key behind.
    let gave_up = tokio::time::timeout(BLOCKED, a.lock("L", lease_a)).await;
    assert!(gave_up.is_err(), "a waits while b holds the lock");
    let mut left = Vec::new();
    for _ in 0..50 {
        left = keys(a, "L/").await;
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left,
        vec![format!("L/{lease_b:x}")],
        "the abandoned key is withdrawn"
    );

    // Revoking the holder's lease hands the lock on.
    let a2 = a.clone();
    let waiting = tokio::spawn(async move { a2.lock("L", lease_a).await });
    blocked(&waiting).await;
    b.lease_revoke(lease_b).await.expect("revoke");
    let held_a2 = done(waiting).await.expect("a locks again");
    assert!(held_a2.fence > held_b.fence);
    let stale = b
        .fenced_txn(&held_b.key, held_b.fence, vec![put("reg", "late")])
        .await
        .unwrap();
    assert!(matches!(stale, Fenced::LockLost(_)));
    a.unlock(held_a2.key).await.unwrap();
    a.lease_revoke(lease_a).await.unwrap();
}

/// The election part: `a` and `b` campaign, `b` also observes.
async fn election_scenario(a: &Client, b: &Client) {
    assert_eq!(a.election_leader("E").await.expect("leader"), None);
    let lease_a = a.lease_grant(30, 0).await.unwrap().id;
    let lease_b = b.lease_grant(30, 0).await.unwrap().id;

    let (leader_a, _) = a.campaign("E", lease_a, "a1").await.expect("a campaigns");
    assert_eq!(leader_a.key, format!("E/{lease_a:x}").into_bytes());
    let mut observer = b.observe("E").await.expect("observe");
    let seen = observer.next().await.expect("first leader");
    let kv = seen.kv.expect("kv");
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (leader_a.key.as_slice(), &b"a1"[..])
    );
    assert_eq!(kv.create_revision, leader_a.rev);

    a.proclaim(&leader_a, "a2").await.expect("proclaim");
    let seen = observer.next().await.unwrap().kv.unwrap();
    assert_eq!(seen.value, b"a2");
    let now = b.election_leader("E").await.unwrap().expect("a leads");
    assert_eq!(now.value, b"a2");

    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.campaign("E", lease_b, "b1").await });
    blocked(&waiting).await;
    a.resign(&leader_a).await.expect("resign");
    let (leader_b, _) = done(waiting).await.expect("b wins");
    assert!(leader_b.rev > leader_a.rev);
    let seen = observer.next().await.unwrap().kv.unwrap();
    assert_eq!(
        (seen.key, seen.value),
        (leader_b.key.clone(), b"b1".to_vec())
    );

    // The old leadership can no longer proclaim.
    match a.proclaim(&leader_a, "late").await {
        Err(ClientError::Status(s)) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
            assert!(s.message().contains("election: not leader"), "{s:?}");
        }
        other => panic!("a stale proclaim: {other:?}"),
    }
    b.resign(&leader_b).await.unwrap();
    assert_eq!(a.election_leader("E").await.unwrap(), None);
    a.lease_revoke(lease_a).await.unwrap();
    b.lease_revoke(lease_b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_against_etcd() {
    let etcd = EtcdCluster::start(3);
    let a = client(&etcd.client_urls[0]);
    let b = client(&etcd.client_urls[1]);
    lock_scenario(&a, &b).await;
    election_scenario(&a, &b).await;
}

/// With a 1 s request timeout, so every wait here outlasts it.
fn nines_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        args: vec!["--request-timeout-ms".into(), "1000".into()],
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_against_nines() {
    let cluster = nines_cluster();
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    // One contender on a follower (its writes forwarded), one on the leader.
    let a = client(&cluster.node(follower).client_addr);
    let b = client(&cluster.node(leader).client_addr);
    lock_scenario(&a, &b).await;
    election_scenario(&a, &b).await;
    election_scenario(&b, &a).await;
}

/// A lease that ends while its lock call waits fails the call with the
/// lease error (etcd 3.4 answered such a call as if the lock were taken:
/// Jepsen's etcd 3.4.3 analysis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_expires_while_waiting_fails_the_wait() {
    let cluster = nines_cluster();
    cluster.stable_leader(LONG).await;
    let a = client(&cluster.nodes[0].client_addr);
    let b = client(&cluster.nodes[1].client_addr);
    let holder = b.lease_grant(30, 0).await.unwrap().id;
    b.lock("X", holder).await.expect("b locks");
    let short = a.lease_grant(2, 0).await.unwrap();
    let waited = tokio::time::timeout(LONG, a.lock("X", short.id)).await;
    match waited.expect("the wait ends with the lease") {
        Err(ClientError::LeaseNotFound { id }) => assert_eq!(id, short.id),
        other => panic!("expected the lease error, got {other:?}"),
    }
    assert_eq!(keys(&a, "X/").await, vec![format!("X/{holder:x}")]);
}

/// A waiter whose member loses the leader (the other two are killed) is
/// told UNAVAILABLE rather than left waiting on a history that stopped;
/// its key keeps its place, and the retry with the same lease takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_cut_off_from_the_leader_is_told_and_keeps_its_place() {
    let mut cluster = nines_cluster();
    let leader = cluster.stable_leader(LONG).await;
    let lonely = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    let holder = client(&cluster.node(leader).client_addr);
    let mut config = ClientConfig::new([cluster.node(lonely).client_addr.clone()]);
    config.retry_deadline = Duration::from_secs(2);
    let waiter = Client::new(config).unwrap();
    let lease_h = holder.lease_grant(60, 0).await.unwrap().id;
    let lease_w = waiter.lease_grant(60, 0).await.unwrap().id;
    let held = holder.lock("C", lease_h).await.unwrap();
    let w = waiter.clone();
    let waiting = tokio::spawn(async move { w.lock("C", lease_w).await });
    blocked(&waiting).await;
    let others: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != lonely)
        .collect();
    for &id in &others {
        cluster.kill(id);
    }
    let err = done(waiting).await.expect_err("no leader: the wait ends");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    for &id in &others {
        cluster.restart(id);
    }
    cluster.stable_leader(LONG).await;
    let any = client(&cluster.node(lonely).client_addr);
    let queued = vec![format!("C/{lease_h:x}"), format!("C/{lease_w:x}")];
    let mut sorted = queued.clone();
    sorted.sort();
    assert_eq!(keys(&any, "C/").await, sorted, "both keys kept");
    let w = waiter.clone();
    let retry = tokio::spawn(async move { w.lock("C", lease_w).await });
    blocked(&retry).await;
    any.unlock(held.key).await.unwrap();
    let got = done(retry).await.expect("the retry takes the lock");
    assert_eq!(got.key, queued[1].as_bytes());
}

/// An observer whose member dies carries on through another member: it
/// sees the next proclamation, and nothing it already saw again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_follows_the_election_through_its_members_death() {
    let mut cluster = nines_cluster();
    let leader = cluster.stable_leader(LONG).await;
    let doomed = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    let campaigner = client(&cluster.node(leader).client_addr);
    // The observer starts on the doomed member, and knows the others.
    let mut endpoints = vec![cluster.node(doomed).client_addr.clone()];
    endpoints.extend(
        cluster
            .nodes
            .iter()
            .filter(|n| n.id != doomed)
            .map(|n| n.client_addr.clone()),
    );
    let mut config = ClientConfig::new(endpoints);
    config.retry_deadline = Duration::from_secs(20);
    let observer_client = Client::new(config).unwrap();

    let lease = campaigner.lease_grant(30, 0).await.unwrap().id;
    let (won, _) = campaigner.campaign("O", lease, "v1").await.unwrap();
    let mut observer = observer_client.observe("O").await.unwrap();
    assert_eq!(observer.next().await.unwrap().kv.unwrap().value, b"v1");
    cluster.kill(doomed);
    campaigner.proclaim(&won, "v2").await.unwrap();
    let next = tokio::time::timeout(LONG, observer.next())
        .await
        .expect("the observer carries on")
        .unwrap();
    assert_eq!(next.kv.unwrap().value, b"v2", "v1 is not delivered twice");
}

/// A command line's stdout, line by line, with a bound on each wait.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .env("ETCDCTL_API", "3")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// The next `n` lines, failing the test if they do not come.
    fn expect_lines(&self, n: usize, what: &str) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.line(LONG)
                    .unwrap_or_else(|| panic!("{what}: line {i} did not come"))
            })
            .collect()
    }

    fn interrupt(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the process did not exit");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nines_bin() -> String {
    nines_tests::cluster::cli_binary()
        .to_string_lossy()
        .into_owned()
}

/// `etcdctl elect` and `nines elect` in one election: campaigners of
/// either kind take turns, listeners of either kind see each leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_and_nines_elect() {
    let cluster = nines_cluster();
    cluster.stable_leader(LONG).await;
    let e1 = format!("--endpoints={}", cluster.nodes[0].client_addr);
    let e2 = format!("--endpoints={}", cluster.nodes[1].client_addr);
    let etcdctl = nines_tests::etcdctl::etcdctl();
    let nines = nines_bin();

    let first = Proc::spawn(etcdctl, &[&e1, "elect", "cli-e", "p1"]);
    let won = first.expect_lines(2, "etcdctl elect p1");
    assert!(won[0].starts_with("cli-e/"), "{won:?}");
    assert_eq!(won[1], "p1");

    let listen_nines = Proc::spawn(&nines, &[&e2, "elect", "-l", "cli-e"]);
    assert_eq!(listen_nines.expect_lines(2, "nines elect -l"), won);
    let listen_etcdctl = Proc::spawn(etcdctl, &[&e2, "elect", "-l", "cli-e"]);
    assert_eq!(listen_etcdctl.expect_lines(2, "etcdctl elect -l"), won);

    let second = Proc::spawn(&nines, &[&e2, "elect", "cli-e", "p2"]);
    assert_eq!(second.line(BLOCKED), None, "p2 waits while p1 leads");
    first.interrupt();
    assert!(first.wait().success(), "etcdctl resigns on SIGINT");
    let won2 = second.expect_lines(2, "nines elect p2");
    assert!(
        won2[0].starts_with("cli-e/") && won2[0] != won[0],
        "{won2:?}"
    );
    assert_eq!(won2[1], "p2");
    assert_eq!(listen_nines.expect_lines(2, "nines elect -l"), won2);
    assert_eq!(listen_etcdctl.expect_lines(2, "etcdctl elect -l"), won2);
    second.interrupt();
    assert!(second.wait().success(), "nines elect resigns on SIGINT");
    let client = client(&cluster.nodes[0].client_addr);
    for _ in 0..50 {
        if keys(&client, "cli-e/").await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("campaign keys left: {:?}", keys(&client, "cli-e/").await);
}

/// `nines lock` holds a lock until interrupted, and runs a command under
/// it with etcdctl's environment; a second locker waits for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nines_lock_command() {
    let cluster = nines_cluster();
    cluster.stable_leader(LONG).await;
    let e1 = format!("--endpoints={}", cluster.nodes[0].client_addr);
    let e2 = format!("--endpoints={}", cluster.nodes[2].client_addr);
    let nines = nines_bin();

    let holder = Proc::spawn(&nines, &[&e1, "lock", "cli-l"]);
    let key = holder.expect_lines(1, "nines lock")[0].clone();
    assert!(key.starts_with("cli-l/"), "{key}");
    let script = "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV $NINES_LOCK_FENCE\"; exit 3";
    let runner = Proc::spawn(&nines, &[&e2, "lock", "cli-l", "--", "sh", "-c", script]);
    assert_eq!(runner.line(BLOCKED), None, "the command waits for the lock");
    holder.interrupt();
    assert!(holder.wait().success());
    let env = runner.expect_lines(1, "the command's output")[0].clone();
    let parts: Vec<&str> = env.split(' ').collect();
    assert_eq!(parts.len(), 3, "{env}");
    assert!(parts[0].starts_with("cli-l/") && parts[0] != key, "{env}");
    let rev: i64 = parts[1].parse().unwrap();
    let fence: i64 = parts[2].parse().unwrap();
    assert!(rev >= fence && fence > 0, "{env}");
    assert_eq!(runner.wait().code(), Some(3), "the command's exit status");
    let client = client(&cluster.nodes[1].client_addr);
    assert!(keys(&client, "cli-l/").await.is_empty(), "both released");
}

/// `etcdctl lock` (etcd's client-side Mutex over KV, Lease and Watch) and
/// `nines lock` exclude each other on one lock name.
///
/// etcd's Mutex queues with a txn whose read of the current holder is
/// `Get(prefix, sort by create revision, limit 1)` (`TxnOp::GetWith`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock() {
    let cluster = nines_cluster();
    cluster.stable_leader(LONG).await;
    let endpoint = cluster.nodes[0].client_addr.clone();
    let e1 = format!("--endpoints={endpoint}");
    let etcdctl = nines_tests::etcdctl::etcdctl();

    let out = nines_tests::etcdctl::ok(
        &endpoint,
        &["lock", "ctl-l", "--", "sh", "-c", "echo \"$ETCD_LOCK_KEY\""],
    );
    assert!(out.trim().starts_with("ctl-l/"), "{out}");

    let holder = Proc::spawn(etcdctl, &[&e1, "lock", "ctl-l"]);
    let key = holder.expect_lines(1, "etcdctl lock")[0].clone();
    assert!(key.starts_with("ctl-l/"), "{key}");
    let e2 = format!("--endpoints={}", cluster.nodes[1].client_addr);
    let runner = Proc::spawn(&nines_bin(), &[&e2, "lock", "ctl-l", "--", "echo", "ran"]);
    assert_eq!(runner.line(BLOCKED), None, "nines lock waits for etcdctl's");
    holder.interrupt();
    assert!(holder.wait().success());
    assert_eq!(runner.expect_lines(1, "nines lock")[0], "ran");
    assert!(runner.wait().success());
}
