//! etcd's Cluster and Maintenance services on real server processes,
//! driven by Debian's etcdctl (3.4) the way an operator would: add a
//! member by its peer URL, start it, promote, move, remove it, and compare
//! the members' hashes.

use std::process::Output;
use std::time::{Duration, Instant};

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_tests::cluster::free_port;
use nines_tests::etcdctl::{ctl, ok};
use nines_tests::{Cluster, ClusterOptions};
use tonic::transport::Channel;
use tonic::Code;

const LONG: Duration = Duration::from_secs(30);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// etcdctl must fail, saying `what`.
fn refused(endpoint: &str, args: &[&str], what: &str) {
    let out = ctl(endpoint, args, "");
    assert!(!out.status.success(), "etcdctl {args:?} succeeded");
    assert!(
        stderr(&out).contains(what),
        "etcdctl {args:?}: {}",
        stderr(&out)
    );
}

/// Runs `check` on etcdctl's output until it passes (bounded).
fn eventually(endpoint: &str, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let out = ctl(endpoint, args, "");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: etcdctl {args:?}: {text}{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `endpoint hashkv` as (endpoint, hash) pairs.
fn hashes(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .map(|l| {
            let (ep, hash) = l.split_once(", ").expect("endpoint, hash");
            (ep.to_string(), hash.trim().parse().expect("hash"))
        })
        .collect()
}

/// Waits until the `n` members listed by the cluster (`--cluster`: etcdctl
/// dials each advertised client URL) answer hashkv with one hash, and
/// returns it.
fn agreed_hash(endpoints: &str, n: usize) -> u32 {
    let args = ["endpoint", "hashkv", "--cluster"];
    let text = eventually(endpoints, &args, "members agree on a hash", |t| {
        let h = hashes(t);
        h.len() == n && h.iter().all(|(_, x)| *x == h[0].1)
    });
    hashes(&text)[0].1
}

/// Waits until every running member names the same leader (etcdctl does
/// not retry a membership change on UNAVAILABLE).
async fn all_know_leader(cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + LONG;
    loop {
        let leader = cluster.wait_leader(LONG).await;
        let mut agree = true;
        for node in cluster.nodes.iter().filter(|n| cluster.is_running(n.id)) {
            let seen = cluster.status(node.id).await.map(|s| s.leader_id);
            agree &= seen == Some(leader);
        }
        if agree {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_and_maintenance_commands() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = all_know_leader(&cluster).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let ep = cluster.node(follower).client_addr.clone();
    let all = cluster.endpoints().join(",");

    let list = ok(&ep, &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for n in &cluster.nodes {
        let line = format!(
            "{:x}, started, nines-{}, http://{}, http://{}, false",
            n.id, n.id, n.peer_addr, n.client_addr
        );
        assert!(list.contains(&line), "{line} in {list}");
    }

    // Hostile input: clear refusals, nothing changes.
    let taken = format!("--peer-urls=http://{}", cluster.node(2).peer_addr);
    refused(
        &ep,
        &["member", "add", "x", &taken],
        "Peer URLs already exists",
    );
    // (etcdctl checks URLs itself first; these pass it, the server refuses.)
    for bad in ["https://127.0.0.1:1", "http://a:1,http://b:2"] {
        let urls = format!("--peer-urls={bad}");
        refused(
            &ep,
            &["member", "add", "x", &urls],
            "given member URLs are invalid",
        );
    }
    refused(&ep, &["member", "remove", "abcdef"], "member not found");
    refused(&ep, &["member", "promote", "abcdef"], "member not found");
    refused(
        &ep,
        &["member", "promote", "1"],
        "can only promote a learner member",
    );
    let urls = "--peer-urls=http://127.0.0.1:1";
    refused(
        &ep,
        &["member", "update", "abcdef", urls],
        "member not found",
    );
    assert_eq!(ok(&ep, &["member", "list"]), list);

    // Add a learner by its peer URL, through a follower.
    let peer = format!("127.0.0.1:{}", free_port());
    let urls = format!("--peer-urls=http://{peer}");
    let added = ok(&ep, &["member", "add", "four", &urls, "--learner"]);
    let first = added.lines().next().unwrap_or_default();
    // (etcdctl 3.4 does not say "as learner"; the list below does.)
    assert!(first.contains(" added to cluster "), "{added}");
    let hex = first
        .split_whitespace()
        .nth(1)
        .expect("member id")
        .to_string();
    let id = u64::from_str_radix(&hex, 16).expect("hex id");
    assert!(id > 3, "a fresh id: {hex}");
    assert!(added.contains(&format!("four=http://{peer}")), "{added}");
    let list = ok(&ep, &["member", "list"]);
    let unstarted = format!("{hex}, unstarted, , http://{peer}, , true");
    assert!(list.contains(&unstarted), "{list}");
    // Not started: nothing to be in sync with.
    let in_sync = "can only promote a learner member which is in sync with leader";
    refused(&ep, &["member", "promote", &hex], in_sync);

    // Start it: it joins as the member it was added as and reports its
    // client address, then catches up and is promoted.
    let join = vec!["--join".into(), all.clone(), "--join-as-learner".into()];
    cluster.add_node_as(id, peer.clone(), join);
    let client = cluster.node(id).client_addr.clone();
    let started = format!("{hex}, started, nines-{id}, http://{peer}, http://{client}, true");
    eventually(&ep, &["member", "list"], "the member started", |t| {
        t.contains(&started)
    });
    let promoted = eventually(&ep, &["member", "promote", &hex], "promoted", |_| true);
    assert!(promoted.contains("promoted in cluster"), "{promoted}");
    let list = ok(&ep, &["member", "list"]);
    assert!(
        list.contains(&format!(
            "{hex}, started, nines-{id}, http://{peer}, http://{client}, false"
        )),
        "{list}"
    );

    // Every member, the new one included, hashes the same history; a
    // write changes the hash.
    let four = cluster.endpoints().join(",");
    let before = agreed_hash(&four, 4);
    ok(&ep, &["put", "k", "v"]);
    let after = agreed_hash(&four, 4);
    assert_ne!(before, after);
    refused(
        &ep,
        &["endpoint", "hashkv", "--rev=999999"],
        "future revision",
    );

    let status = ok(&four, &["endpoint", "status"]);
    assert_eq!(status.lines().count(), 4, "{status}");
    let leaders = status
        .lines()
        .filter(|l| l.split(", ").nth(4) == Some("true"));
    assert_eq!(leaders.count(), 1, "{status}");
    assert!(status.contains(&format!("{client}, {hex}, ")), "{status}");
    // etcdctl 3.4 reports health on stderr.
    let out = ctl(&four, &["endpoint", "health"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let health = stderr(&out);
    assert_eq!(health.matches("is healthy").count(), 4, "{health}");

    // Move the new member to another peer port, restart it there: it
    // catches up through the new address.
    let moved = format!("127.0.0.1:{}", free_port());
    let urls = format!("--peer-urls=http://{moved}");
    let updated = ok(&ep, &["member", "update", &hex, &urls]);
    assert!(updated.contains("updated in cluster"), "{updated}");
    let list = ok(&ep, &["member", "list"]);
    assert!(list.contains(&format!("http://{moved}")), "{list}");
    assert!(!list.contains(&format!("http://{peer}")), "{list}");
    cluster.stop(id);
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.id == id)
        .unwrap()
        .peer_addr = moved;
    cluster.spawn(id);
    ok(&ep, &["put", "k", "v2"]);
    assert_ne!(agreed_hash(&four, 4), after);

    // Leadership moves to the member asked for. (A transfer can lose to
    // an election already under way, e.g. by the member just restarted;
    // it then says so and etcdctl is run again, as with etcd.)
    // An election right after the transfer (the member just restarted
    // campaigning on a lost leader) can move it on once more (seen in a
    // full test run): the transfer is asked again then, up to 5 times.
    let leader = all_know_leader(&cluster).await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        // Every member listed: etcdctl asks them which one leads, and the
        // restarted fourth may have won an election since.
        let args = ["move-leader", &format!("{target:x}")];
        let out = eventually(&four, &args, "leadership moved", |_| true);
        assert!(out.contains("Leadership transferred"), "{out}");
        let now = all_know_leader(&cluster).await;
        seen.push(now);
        if now == target {
            break;
        }
    }
    assert_eq!(
        seen.last(),
        Some(&target),
        "leaders after each transfer: {seen:?}"
    );
    refused(&four, &["move-leader", "abcdef"], "bad leader transferee");

    let defrag = ok(&ep, &["defrag"]);
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    assert_eq!(ok(&ep, &["alarm", "list"]), "");
    ok(&ep, &["alarm", "disarm"]);

    // Remove the new member (a voter now); it is gone from the list.
    let removed = ok(&ep, &["member", "remove", &hex]);
    assert!(removed.contains("removed from cluster"), "{removed}");
    let list = ok(&ep, &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(&hex), "{list}");
    refused(&ep, &["member", "remove", &hex], "member not found");
    cluster.stop(id);
    agreed_hash(&all, 3);
}

/// The status codes etcd's clients see (etcdctl shows only messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_and_maintenance_codes() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = all_know_leader(&cluster).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let channel = Channel::from_shared(format!("http://{}", cluster.node(follower).client_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut members = epb::cluster_client::ClusterClient::new(channel.clone());
    let mut maintenance = epb::maintenance_client::MaintenanceClient::new(channel.clone());
    let mut kv = epb::kv_client::KvClient::new(channel);

    let add = |urls: &[&str]| epb::MemberAddRequest {
        peer_ur_ls: urls.iter().map(|u| u.to_string()).collect(),
        is_learner: true,
    };
    for urls in [
        &[][..],
        &["http://a:1", "http://b:1"],
        &["http://a:1/x"],
        &["h:1"],
    ] {
        let err = members.member_add(add(urls)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{urls:?}: {err}");
    }
    let taken = format!("http://{}", cluster.node(1).peer_addr);
    let err = members.member_add(add(&[&taken])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let err = members
        .member_remove(epb::MemberRemoveRequest { id: 99 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(
        err.message(),
        "etcdserver: member not found: node 99 is not a member"
    );
    let err = members
        .member_promote(epb::MemberPromoteRequest { id: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let update = epb::MemberUpdateRequest {
        id: 2,
        peer_ur_ls: vec!["https://x:1".into()],
    };
    let err = members.member_update(update).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // An added learner that never starts is refused promotion, then removed.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let added = members
        .member_add(add(&[&peer]))
        .await
        .unwrap()
        .into_inner();
    let new = added.member.expect("the new member");
    assert!(
        new.is_learner && new.peer_ur_ls == vec![peer.clone()],
        "{new:?}"
    );
    assert_eq!(added.members.len(), 4);
    assert_eq!(
        added.header.unwrap().member_id,
        follower,
        "answered by the member asked"
    );
    let err = members
        .member_promote(epb::MemberPromoteRequest { id: new.id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err
        .message()
        .starts_with("etcdserver: can only promote a learner member which is in sync with leader"));
    let left = members
        .member_remove(epb::MemberRemoveRequest { id: new.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.members.len(), 3);

    // HashKV: 0 is the current revision; compacted and future ones are
    // OUT_OF_RANGE, as a range.
    for i in 0..3 {
        let put = epb::PutRequest {
            key: format!("k{i}").into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        kv.put(put).await.unwrap();
    }
    let now = maintenance
        .hash_kv(epb::HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let revision = now.header.unwrap().revision;
    assert_eq!(now.hash_revision, revision);
    assert_eq!(now.compact_revision, 0);
    let past = maintenance
        .hash_kv(epb::HashKvRequest {
            revision: revision - 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(past.hash, now.hash);
    let future = epb::HashKvRequest {
        revision: revision + 100,
    };
    let err = maintenance.hash_kv(future).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    let compact = epb::CompactionRequest {
        revision,
        physical: true,
    };
    kv.compact(compact).await.unwrap();
    // HashKV is served locally: this follower applies the compaction soon.
    let deadline = Instant::now() + LONG;
    let err = loop {
        let below = epb::HashKvRequest {
            revision: revision - 1,
        };
        match maintenance.hash_kv(below).await {
            Err(err) => break err,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(ok) => panic!("never compacted: {ok:?}"),
        }
    };
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let at = maintenance
        .hash_kv(epb::HashKvRequest { revision })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at.compact_revision, revision);

    // Alarms: none to list, and activating or disarming changes nothing.
    use epb::alarm_request::AlarmAction;
    for action in [
        AlarmAction::Activate,
        AlarmAction::Deactivate,
        AlarmAction::Get,
    ] {
        let request = epb::AlarmRequest {
            action: action as i32,
            member_id: 1,
            alarm: epb::AlarmType::Nospace as i32,
        };
        let resp = maintenance.alarm(request).await.unwrap().into_inner();
        assert!(resp.alarms.is_empty(), "{action:?}");
    }
    let bad = epb::AlarmRequest {
        action: 7,
        ..Default::default()
    };
    let err = maintenance.alarm(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = maintenance
        .move_leader(epb::MoveLeaderRequest { target_id: 99 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    // To the leader itself: nothing to do.
    maintenance
        .move_leader(epb::MoveLeaderRequest { target_id: leader })
        .await
        .unwrap();
    assert_eq!(cluster.wait_leader(LONG).await, leader);
}
