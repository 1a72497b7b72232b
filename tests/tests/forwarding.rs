//! A follower forwarding to a leader that stopped answering gives up as
//! soon as it learns of a new leader, instead of holding the client for the
//! whole request timeout (5 s).

use std::time::{Duration, Instant};

use nines_client::proto as pb;
use nines_client::proto::kv_client::KvClient;
use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_to_a_paused_leader_ends_when_a_new_leader_is_known() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(LONG).await;
    cluster.client().put("k", "v").await.expect("put");
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let addr = format!("http://{}", cluster.node(follower).client_addr);
    let mut kv = KvClient::connect(addr).await.expect("connect");
    cluster.signal(leader, libc::SIGSTOP);
    let start = Instant::now();
    let mut request = tonic::Request::new(pb::PutRequest {
        key: b"k".to_vec(),
        value: b"during pause".to_vec(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(20));
    let result = kv.put(request).await;
    let took = start.elapsed();
    cluster.signal(leader, libc::SIGCONT);
    // A new leader is elected within about half a second; the server's own
    // bound on the forward is 5 s.
    assert!(
        took < Duration::from_secs(3),
        "the forward held the client for {took:?}: {result:?}"
    );
    if let Err(status) = result {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    }
}
