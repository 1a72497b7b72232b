//! etcd's watch ids and progress answers on the wire, where etcd clients
//! rely on them: a stream-wide progress answer (which clientv3 hands to
//! every watcher of the stream) never names a revision below events
//! already sent; a progress notification never names a revision the member
//! has not reached; an automatic id is not handed out again after a
//! cancel; a refused create carries the invalid id, -1.

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_tests::{Cluster, ClusterOptions};

mod raw_watch;

use epb::watch_request::RequestUnion;
use raw_watch::{fast_progress, prefix, RawStream, LONG};

/// One watcher far behind (reading history) and one current on the same
/// stream: the answer to a progress request waits until both are current.
/// Before, it came at once with the slowest watcher's position, below the
/// revision of an event the other watcher had been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_answer_waits_until_every_watcher_of_the_stream_is_current() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let client = cluster.client_of(1);
    // More history than the stream can buffer while its client does not
    // read (1 MiB queue, HTTP/2 windows, socket buffers).
    let value = vec![b'v'; 128 * 1024];
    let mut history_end = 0;
    for i in 0..320 {
        history_end = client
            .put(format!("b/{i:04}"), value.clone())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    let mut s = RawStream::open(&cluster.node(1).client_addr).await;
    let current = s
        .create(epb::WatchCreateRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await;
    assert!(current.created && !current.canceled, "{current:?}");
    let mut behind = prefix("b/");
    behind.start_revision = 1;
    let behind = s.create(behind).await;
    assert!(behind.created && !behind.canceled, "{behind:?}");
    let put = client.put("a", "1").await.unwrap().header.unwrap().revision;
    s.send(RequestUnion::ProgressRequest(epb::WatchProgressRequest {}))
        .await;

    let mut behind_through = 0;
    let mut current_through = 0;
    let progress = loop {
        let r = s.next().await;
        assert!(!r.canceled, "{r:?}");
        if r.watch_id == -1 {
            break r.header.unwrap().revision;
        }
        let last = r.events.last().map(|e| e.kv.as_ref().unwrap().mod_revision);
        if r.watch_id == behind.watch_id {
            behind_through = last.unwrap_or(behind_through);
        } else if r.watch_id == current.watch_id {
            current_through = last.unwrap_or(current_through);
        }
    };
    assert!(
        progress >= put,
        "progress answered at {progress}, below the event at {put} (current watcher sent through {current_through})"
    );
    assert_eq!(
        current_through, put,
        "the current watcher's event came first"
    );
    assert_eq!(
        behind_through, history_end,
        "every event of the watcher that was behind came before the answer"
    );
}

/// A watcher that starts in the future is current, but its progress
/// notifications name the member's revision, not the one before its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_never_name_a_revision_the_member_has_not_reached() {
    let cluster = Cluster::start(fast_progress());
    cluster.wait_leader(LONG).await;
    let client = cluster.client_of(1);
    let revision = client
        .put("f/x", "1")
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    client.get("f/x").await.unwrap();
    let mut s = RawStream::open(&cluster.node(1).client_addr).await;
    let mut create = prefix("f/");
    create.start_revision = revision + 1000;
    create.progress_notify = true;
    let created = s.create(create).await;
    assert!(created.created && !created.canceled, "{created:?}");
    let notified = s.next().await;
    assert_eq!(notified.watch_id, created.watch_id, "{notified:?}");
    assert!(notified.events.is_empty(), "{notified:?}");
    assert_eq!(
        notified.header.unwrap().revision,
        revision,
        "a notification names the member's revision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_ids_are_not_reused_and_refused_creates_carry_the_invalid_id() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let mut s = RawStream::open(&cluster.node(1).client_addr).await;
    let first = s.create(prefix("i/")).await;
    assert!(first.created && !first.canceled, "{first:?}");
    s.send(RequestUnion::CancelRequest(epb::WatchCancelRequest {
        watch_id: first.watch_id,
    }))
    .await;
    let canceled = s.next().await;
    assert!(canceled.canceled && canceled.watch_id == first.watch_id);
    let second = s.create(prefix("i/")).await;
    assert!(second.created && !second.canceled, "{second:?}");
    assert_eq!(
        second.watch_id,
        first.watch_id + 1,
        "a freed automatic id is not handed out again"
    );

    // A duplicate id, and an empty range: refused, with etcd's invalid id.
    let mut duplicate = prefix("i/");
    duplicate.watch_id = second.watch_id;
    let refused = s.create(duplicate).await;
    assert!(refused.created && refused.canceled, "{refused:?}");
    assert_eq!(refused.watch_id, -1, "{refused:?}");
    let empty = epb::WatchCreateRequest {
        key: b"z".to_vec(),
        range_end: b"a".to_vec(),
        watch_id: 40,
        ..Default::default()
    };
    let refused = s.create(empty).await;
    assert!(refused.created && refused.canceled, "{refused:?}");
    assert_eq!(refused.watch_id, -1, "{refused:?}");
}

/// A client that ends its side of the stream after its requests (grpcurl
/// does) keeps its watchers, as on etcd: the stream ended right after
/// "created", so no event ever came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_stream_keeps_delivering() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let mut s = RawStream::open(&cluster.node(2).client_addr).await;
    assert!(s.create(prefix("hc/")).await.created);
    // Close the request side: a fresh sender in its place, then drop both.
    let (closed, _) = tokio::sync::mpsc::channel(1);
    drop(std::mem::replace(&mut s.requests, closed));
    cluster.client().put("hc/a", "1").await.unwrap();
    let events = s.events(1).await;
    assert_eq!(events[0].kv.as_ref().unwrap().key, b"hc/a");
}
