//! gRPC message headers that declare the largest message and never send it:
//! tonic reserved each declared length at once (64 MiB a stream on the peer
//! port, with 1,024 streams on each of 64 connections). Now a port admits
//! only a budget of declared, undelivered bytes; the streams past it fail
//! with RESOURCE_EXHAUSTED, and the cluster keeps serving.

use std::time::Duration;

use bytes::Bytes;
use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(30);
/// The peer port's message limit; its budget is 16 of them.
const DECLARED: u32 = 64 << 20;
const STREAMS: usize = 40;

/// Opens `STREAMS` append streams on one connection to `addr`, each sending
/// only a header that declares `DECLARED` bytes; counts the streams that
/// end with `grpc-status` RESOURCE_EXHAUSTED (8) within the timeout.
async fn declare_and_stall(addr: &str) -> usize {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut pending = Vec::new();
    for _ in 0..STREAMS {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::post(format!("http://{addr}/nines.v1.Raft/AppendStream"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        let mut header = vec![0u8];
        header.extend_from_slice(&DECLARED.to_be_bytes());
        body.send_data(Bytes::from(header), false).unwrap();
        // The sender is kept: the stream stays open, its message unsent.
        pending.push((response, body));
    }
    let mut senders = Vec::new();
    let answers = pending.into_iter().map(|(response, body)| {
        senders.push(body);
        // All waited for at once: the admitted ones never answer.
        tokio::time::timeout(Duration::from_secs(10), async {
            let response = response.await.ok()?;
            if let Some(code) = response.headers().get("grpc-status") {
                return Some(code.to_str().ok()? == "8");
            }
            let mut body = response.into_body();
            while let Some(data) = body.data().await {
                data.ok()?;
            }
            let trailers = body.trailers().await.ok()??;
            Some(trailers.get("grpc-status")?.to_str().ok()? == "8")
        })
    });
    let answers = futures::future::join_all(answers.collect::<Vec<_>>()).await;
    let exhausted = answers
        .iter()
        .filter(|a| matches!(a, Ok(Some(true))))
        .count();
    drop(senders);
    driver.abort();
    exhausted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_but_unsent_messages_past_the_budget_are_refused() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let addr = cluster.node(1).peer_addr.to_string();
    // 40 x 64 MiB declared against a budget of 16 x 64 MiB: the first 16
    // wait for their bytes, the other 24 are refused.
    let exhausted = declare_and_stall(&addr).await;
    assert!(
        exhausted >= STREAMS - 16,
        "{exhausted} of {STREAMS} streams were refused; the budget admits 16"
    );
    // The first connection is gone and with it its charges: a second one
    // is admitted as far as the first was.
    let again = declare_and_stall(&addr).await;
    assert_eq!(
        again, exhausted,
        "the closed connection's charges were not released"
    );
    for id in 1..=3 {
        assert!(cluster.exited(id).is_none(), "node {id} exited");
    }
    cluster.wait_leader(LONG).await;
    cluster
        .client()
        .put("after the declared flood", "ok")
        .await
        .expect("the cluster still takes writes");
}
