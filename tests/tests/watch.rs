//! etcd's Watch service on real server processes: events in order, once,
//! from every member's own history; past start revisions replay; compacted
//! ones cancel with the compact revision; filters, prev_kv, cancel and
//! progress; nines' client resumes through another member when the one
//! serving its stream is killed; etcdctl's watch works.

use std::collections::BTreeMap;
use std::time::Duration;

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_client::{prefix_end, WatchOptions, WatchUpdate};
use nines_tests::http::wait_metrics;
use nines_tests::{Cluster, ClusterOptions};

mod raw_watch;

use raw_watch::{fast_progress, prefix, summary, RawStream, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_streams_changes_in_order_and_replays_history() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let client = cluster.client();
    let first = client
        .put("w/a", "1")
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;

    // A watcher on each member, from the next revision (a follower may
    // not have applied `first` yet: "from now" there would include it).
    let mut streams = Vec::new();
    for id in 1..=3 {
        let mut s = RawStream::open(&cluster.node(id).client_addr).await;
        let mut create = prefix("w/");
        create.start_revision = first + 1;
        let created = s.create(create).await;
        assert!(created.created && !created.canceled, "{created:?}");
        streams.push(s);
    }
    let put_b = client
        .put("w/b", "2")
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    client.put("other", "x").await.unwrap();
    client
        .txn(epb::TxnRequest {
            success: vec![put_op("w/c", "3"), put_op("w/a", "4")],
            ..Default::default()
        })
        .await
        .unwrap();
    let del = client.delete("w/b").await.unwrap().header.unwrap().revision;

    let expected = vec![
        ("PUT".to_string(), "w/b=2".to_string(), put_b),
        ("PUT".to_string(), "w/c=3".to_string(), put_b + 2),
        ("PUT".to_string(), "w/a=4".to_string(), put_b + 2),
        ("DELETE".to_string(), "w/b=".to_string(), del),
    ];
    for s in &mut streams {
        let events = s.events(4).await;
        assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);
    }

    // From a past revision, with prev_kv: history replays, then live.
    let mut s = RawStream::open(&cluster.node(2).client_addr).await;
    let mut create = prefix("w/");
    create.start_revision = first;
    create.prev_kv = true;
    assert!(s.create(create).await.created);
    let events = s.events(5).await;
    assert_eq!(summary(&events[0]), ("PUT".into(), "w/a=1".into(), first));
    assert_eq!(events[0].prev_kv, None);
    assert_eq!(
        events[1..].iter().map(summary).collect::<Vec<_>>(),
        expected
    );
    let prev_of_a = events[3].prev_kv.as_ref().expect("prev_kv of w/a");
    assert_eq!(prev_of_a.value, b"1");
    let prev_of_delete = events[4].prev_kv.as_ref().expect("prev_kv of the delete");
    assert_eq!(prev_of_delete.value, b"2");
    client.put("w/d", "5").await.unwrap();
    assert_eq!(summary(&s.events(1).await[0]).1, "w/d=5");

    // Filters: no puts.
    let mut s = RawStream::open(&cluster.node(3).client_addr).await;
    let mut create = prefix("w/");
    create.start_revision = first;
    create.filters = vec![epb::watch_create_request::FilterType::Noput as i32];
    assert!(s.create(create).await.created);
    let events = s.events(1).await;
    assert_eq!(summary(&events[0]), ("DELETE".into(), "w/b=".into(), del));
}

fn put_op(key: &str, value: &str) -> epb::RequestOp {
    epb::RequestOp {
        request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_starts_cancel_and_streams_answer_cancel_and_progress() {
    let cluster = Cluster::start(fast_progress());
    cluster.wait_leader(LONG).await;
    let client = cluster.client();
    let mut last = 0;
    for i in 0..5 {
        last = client
            .put("c/k", i.to_string())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    client.compact(last - 1, true).await.unwrap();
    // Node 1 has applied the compaction once a linearizable read through
    // it returns (it waits for the leader's commit index).
    cluster.client_of(1).get("c/k").await.unwrap();
    let mut s = RawStream::open(&cluster.node(1).client_addr).await;

    // A start at or below the compaction: created, then canceled with the
    // first revision one can watch from; that one works.
    let mut create = prefix("c/");
    create.start_revision = last - 2;
    let created = s.create(create).await;
    assert!(created.created && !created.canceled);
    let canceled = s.next().await;
    assert!(canceled.canceled, "{canceled:?}");
    assert_eq!(canceled.watch_id, created.watch_id);
    assert_eq!(canceled.compact_revision, last);
    let mut create = prefix("c/");
    create.start_revision = canceled.compact_revision;
    create.watch_id = 5;
    let again = s.create(create).await;
    assert_eq!(again.watch_id, 5);
    assert!(again.created && !again.canceled);
    assert_eq!(summary(&s.events(1).await[0]).2, last);

    // A duplicate client-chosen id is refused; a free one is used.
    let mut create = prefix("c/");
    create.watch_id = again.watch_id;
    let dup = s.create(create).await;
    assert!(dup.created && dup.canceled, "{dup:?}");
    let mut create = prefix("p/");
    create.watch_id = 77;
    create.progress_notify = true;
    let chosen = s.create(create).await;
    assert_eq!(chosen.watch_id, 77);

    // Idle with progress_notify: told the revision it is current to.
    let progress = s.next().await;
    assert_eq!(progress.watch_id, 77);
    assert!(progress.events.is_empty() && !progress.canceled);
    assert!(progress.header.unwrap().revision >= last);

    // Cancel: acknowledged; a later write under it is not sent.
    use epb::watch_request::RequestUnion;
    s.send(RequestUnion::CancelRequest(epb::WatchCancelRequest {
        watch_id: again.watch_id,
    }))
    .await;
    loop {
        let r = s.next().await;
        if r.canceled {
            assert_eq!(r.watch_id, again.watch_id);
            break;
        }
        assert_eq!(
            r.watch_id, 77,
            "only progress of 77 before the cancel: {r:?}"
        );
    }
    client.put("c/k", "after").await.unwrap();
    let p = client
        .put("p/x", "1")
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    loop {
        let r = s.next().await;
        assert_eq!(r.watch_id, 77, "a canceled watcher got {r:?}");
        if let Some(e) = r.events.first() {
            assert_eq!(e.kv.as_ref().unwrap().mod_revision, p);
            break;
        }
    }
    // A stream-wide progress request: every event up to its revision was sent.
    s.send(RequestUnion::ProgressRequest(epb::WatchProgressRequest {}))
        .await;
    loop {
        let r = s.next().await;
        if r.watch_id == -1 {
            assert!(r.header.unwrap().revision >= p);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_watch_resumes_through_another_member_without_gap_or_duplicate() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let writer = cluster.client();
    // The watch stream opens on the first endpoint: node 1.
    let mut config = nines_client::ClientConfig::new(cluster.endpoints());
    config.read_balance = nines_client::ReadBalance::RoundRobin;
    let watcher_client = nines_client::Client::new(config).unwrap();
    let mut watch = watcher_client
        .watch(
            "r/",
            WatchOptions {
                range_end: prefix_end(b"r/"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let writes = tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        for i in 0..300u32 {
            let key = format!("r/{}", i % 7);
            if let Ok(resp) = writer.put(key.clone(), i.to_string()).await {
                acked.insert(resp.header.unwrap().revision, (key, i.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked
    });
    let mut seen: Vec<(i64, String, String)> = Vec::new();
    let mut killed = Vec::new();
    let mut restarted = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "saw {} of 300",
            seen.len()
        );
        // Kill the member serving the stream (node 1: the first endpoint),
        // restart it, then kill the next one the stream moved to.
        if seen.len() >= 60 && killed.is_empty() {
            cluster.kill(1);
            killed.push(1);
        } else if seen.len() >= 120 && killed.len() == 1 && !restarted {
            cluster.restart(1);
            restarted = true;
        } else if seen.len() >= 180 && killed.len() == 1 {
            cluster.kill(2);
            killed.push(2);
        }
        match tokio::time::timeout(LONG, watch.next())
            .await
            .expect("watch update")
        {
            Some(Ok(WatchUpdate::Events(events))) => {
                for e in events {
                    let kv = e.kv.unwrap();
                    seen.push((
                        kv.mod_revision,
                        String::from_utf8(kv.key).unwrap(),
                        String::from_utf8(kv.value).unwrap(),
                    ));
                }
            }
            Some(Ok(WatchUpdate::Progress { .. })) => {}
            Some(Err(e)) => panic!("watch ended: {e}"),
            None => panic!("watch ended"),
        }
    }
    assert_eq!(killed, vec![1, 2]);
    let acked = writes.await.unwrap();
    // Strictly increasing revisions: no duplicate, no reorder.
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    // Every acknowledged write was seen, as written.
    let by_rev: BTreeMap<i64, (String, String)> = seen
        .iter()
        .map(|(r, k, v)| (*r, (k.clone(), v.clone())))
        .collect();
    for (rev, write) in &acked {
        assert_eq!(
            by_rev.get(rev),
            Some(write),
            "write at {rev} missing or different"
        );
    }
}

/// Processes killed when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_and_nines_watch_print_the_same_events_from_a_follower() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let ep = cluster.node(follower).client_addr.clone();
    let client = cluster.client();
    let start = client
        .put("e/a", "1")
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    client.put("e/b", "2").await.unwrap();
    client.delete("e/a").await.unwrap();
    let rev = start.to_string();
    let args = ["watch", "e/", "--prefix", "--rev", &rev, "--prev-kv"];
    let spawn = |program: &std::path::Path, extra: &[&str]| {
        let mut command = std::process::Command::new(program);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args(extra)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().expect("spawn a watch")
    };
    let nines = nines_tests::cluster::server_binary().with_file_name("nines");
    // Killed if the test fails before reading them: a leaked watch keeps
    // running, and with it anything it inherited (a build lock).
    let mut children = Children(Vec::new());
    children.0.push(spawn(
        std::path::Path::new(nines_tests::etcdctl::etcdctl()),
        &[],
    ));
    children.0.push(spawn(&nines, &[]));
    children.0.push(spawn(&nines, &["-w", "json"]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.put("e/c", "3").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outputs: Vec<String> = std::mem::take(&mut children.0)
        .into_iter()
        .map(|mut child| {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            format!(
                "{stdout}{}",
                if stdout.is_empty() {
                    stderr
                } else {
                    String::new()
                }
            )
        })
        .collect();
    let expected = "PUT\ne/a\n1\nPUT\ne/b\n2\nDELETE\ne/a\n1\ne/a\n\nPUT\ne/c\n3\n";
    assert_eq!(outputs[0], expected, "etcdctl");
    assert_eq!(outputs[1], expected, "nines watch prints as etcdctl does");
    let json: Vec<serde_json::Value> = outputs[2]
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let kinds: Vec<&str> = json.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["PUT", "PUT", "DELETE", "PUT"], "{json:?}");
    assert_eq!(json[2]["prev_kv"]["value"], "1");
    assert_eq!(json[3]["kv"]["key"], "e/c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_counted_and_forgotten_when_their_client_goes() {
    let (cluster, metrics) = nines_tests::http::metrics_cluster(&[]);
    cluster.wait_leader(LONG).await;
    let addr = &metrics[&2];
    let value =
        |m: &std::collections::HashMap<String, f64>, s: &str| m.get(s).copied().unwrap_or(-1.0);
    let mut s = RawStream::open(&cluster.node(2).client_addr).await;
    assert!(s.create(prefix("m/")).await.created);
    assert!(s.create(prefix("m/a")).await.created);
    wait_metrics(addr, "two watchers on one stream", LONG, |m| {
        value(m, "nines_watchers") == 2.0 && value(m, "nines_watch_streams") == 1.0
    })
    .await;
    cluster.client().put("m/a1", "v").await.unwrap();
    assert_eq!(s.events(1).await.len(), 1);
    assert_eq!(s.events(1).await.len(), 1);
    // Two watchers, one event each: two responses.
    wait_metrics(addr, "events and their responses counted", LONG, |m| {
        value(m, "nines_watch_events_sent_total") >= 2.0
            && value(m, "nines_watch_event_responses_sent_total") >= 2.0
    })
    .await;
    // The client goes away without canceling: its watchers are dropped.
    drop(s);
    wait_metrics(addr, "watchers forgotten", LONG, |m| {
        value(m, "nines_watchers") == 0.0 && value(m, "nines_watch_streams") == 0.0
    })
    .await;
}

/// A change's prev_kv is read from the store once for all the watchers
/// that ask for it while the shared feed holds the change (it was read once
/// per watcher: 1,000 watchers with prev_kv, 1,000 reads of one version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_a_change_share_its_prev_kv_read() {
    const WATCHERS: usize = 8;
    const PUTS: usize = 10;
    let (cluster, metrics) = nines_tests::http::metrics_cluster(&[]);
    cluster.wait_leader(LONG).await;
    let mut s = RawStream::open(&cluster.node(2).client_addr).await;
    for _ in 0..WATCHERS {
        let mut create = prefix("pk/");
        create.prev_kv = true;
        assert!(s.create(create).await.created);
    }
    let client = cluster.client();
    for i in 0..=PUTS {
        client.put("pk/k", format!("v{i}")).await.unwrap();
    }
    let events = s.events(WATCHERS * (PUTS + 1)).await;
    for e in &events {
        let value = String::from_utf8(e.kv.as_ref().unwrap().value.clone()).unwrap();
        let n: usize = value[1..].parse().unwrap();
        let prev = e.prev_kv.as_ref().map(|p| p.value.clone());
        let expected = (n > 0).then(|| format!("v{}", n - 1).into_bytes());
        assert_eq!(prev, expected, "prev_kv of {value}");
    }
    let page = nines_tests::http::scrape(&metrics[&2])
        .await
        .expect("metrics");
    let reads = page["nines_watch_prev_reads_total"];
    // Two watchers may race to the first read of a change: at most twice.
    assert!(
        reads <= (2 * (PUTS + 1)) as f64,
        "{reads} store reads for {} changes watched {WATCHERS} times",
        PUTS + 1
    );
}

/// The keys a stream watches are bounded in bytes, not only in count: one
/// stream of 40,000 watchers on 4 KiB keys and range ends took 330 MB of a
/// member. Past 16 MiB a create is refused (created and canceled, with
/// the reason); canceling a watcher makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_key_bytes_per_stream_are_bounded() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let mut s = RawStream::open(&cluster.node(1).client_addr).await;
    let big = |i: u32| epb::WatchCreateRequest {
        key: format!("{i:08}").repeat(512).into_bytes(),
        range_end: format!("{:08}", i + 1).repeat(512).into_bytes(),
        ..Default::default()
    };
    let mut created = Vec::new();
    let refused = loop {
        let i = created.len() as u32;
        assert!(i < 2_500, "no create refused after {i} watchers of 8 KiB");
        let r = s.create(big(i)).await;
        if r.canceled {
            break r;
        }
        assert!(r.created, "{r:?}");
        created.push(r.watch_id);
    };
    assert!(refused.cancel_reason.contains("key bytes"), "{refused:?}");
    assert!(created.len() >= 2_000, "refused early: {}", created.len());
    let cancel = epb::WatchCancelRequest {
        watch_id: created[0],
    };
    s.send(epb::watch_request::RequestUnion::CancelRequest(cancel))
        .await;
    assert!(s.next().await.canceled);
    assert!(s.create(big(9_999)).await.created, "room after a cancel");
}

/// A client that floods its stream with progress requests must not keep
/// that stream's watchers from their events: requests go first (so a
/// cancel is not stuck behind events), but not forever. On 4b71643, in the
/// full suite (a loaded machine), the event came after all 50,000 answers.
/// Up to ~20,000 answers may sit in HTTP/2 buffers ahead of the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_progress_requests_does_not_hold_back_events() {
    use epb::watch_request::RequestUnion;
    const FLOOD: u64 = 200_000;
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let addr = cluster.node(leader).client_addr.clone();
    let mut stream = RawStream::open(&addr).await;
    let create = epb::WatchCreateRequest {
        key: b"flood/k".to_vec(),
        ..Default::default()
    };
    assert!(stream.create(create).await.created);
    let flood = stream.requests.clone();
    let flooding = tokio::spawn(async move {
        let progress = epb::WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(epb::WatchProgressRequest {})),
        };
        for _ in 0..FLOOD {
            if flood.send(progress.clone()).await.is_err() {
                return;
            }
        }
    });
    // The put lands while the member works through the flood.
    let mut progress = 0u64;
    while progress < 100 {
        assert!(stream.next().await.events.is_empty());
        progress += 1;
    }
    let started = std::time::Instant::now();
    cluster.client().put("flood/k", "v").await.unwrap();
    loop {
        let response = match tokio::time::timeout(LONG, stream.responses.message()).await {
            Ok(Ok(Some(response))) => response,
            other => panic!(
                "after {progress} progress answers, {:?} after the put: {other:?}",
                started.elapsed()
            ),
        };
        if let Some(event) = response.events.first() {
            assert_eq!(event.kv.as_ref().unwrap().key, b"flood/k");
            break;
        }
        progress += 1;
    }
    eprintln!(
        "event after {progress} of {FLOOD} progress answers, {:?} after the put",
        started.elapsed()
    );
    assert!(progress < FLOOD, "the event waited for the whole flood");
    flooding.abort();
}
