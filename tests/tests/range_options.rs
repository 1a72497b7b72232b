//! Range sort and revision filters through a real server: the gRPC fields
//! reach the state's read path, on the leader and on a follower.

use nines_client::proto as pb;
use nines_tests::{Cluster, ClusterOptions};
use pb::range_request::{SortOrder, SortTarget};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_sort_and_filter_by_revision() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    let mut revisions = Vec::new();
    for (key, value) in [("s/a", "3"), ("s/b", "1"), ("s/c", "2"), ("s/a", "4")] {
        let resp = client.put(key, value).await.expect("put");
        revisions.push(resp.header.expect("header").revision);
    }
    let newest_first = pb::RangeRequest {
        key: b"s/".to_vec(),
        range_end: b"s0".to_vec(),
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Mod as i32,
        limit: 2,
        ..Default::default()
    };
    let resp = client.range(newest_first.clone()).await.expect("range");
    let keys: Vec<_> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"s/a".to_vec(), b"s/c".to_vec()]);
    assert_eq!((resp.count, resp.more), (3, true));

    // Created at or after the second put, sorted by value, on a follower.
    let follower = cluster.client_of(if cluster.wait_leader(Duration::from_secs(20)).await == 1 {
        2
    } else {
        1
    });
    let created_later = pb::RangeRequest {
        key: b"s/".to_vec(),
        range_end: b"s0".to_vec(),
        sort_target: SortTarget::Value as i32,
        min_create_revision: revisions[1],
        serializable: false,
        ..Default::default()
    };
    let resp = follower.range(created_later).await.expect("range");
    let values: Vec<_> = resp.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(values, vec![b"1".to_vec(), b"2".to_vec()]);

    let bad = pb::RangeRequest {
        sort_target: 42,
        ..newest_first
    };
    let err = client.range(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}
