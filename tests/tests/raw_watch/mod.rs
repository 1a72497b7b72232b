//! A raw etcd watch stream on one member, for tests that check the wire
//! (ids, headers, response order) rather than nines' client. Shared by the
//! watch test crates; each uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use nines_client::prefix_end;
use nines_client::proto::etcd::etcdserverpb as epb;
use nines_client::proto::mvccpb;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub const LONG: Duration = Duration::from_secs(30);

/// A cluster whose members send progress notifications every 200 ms.
pub fn fast_progress() -> nines_tests::ClusterOptions {
    nines_tests::ClusterOptions {
        args: vec!["--experimental-watch-progress-notify-interval=200ms".into()],
        ..Default::default()
    }
}

/// A raw watch stream on one member: the request sender and the responses.
pub struct RawStream {
    pub requests: mpsc::Sender<epb::WatchRequest>,
    pub responses: tonic::Streaming<epb::WatchResponse>,
}

impl RawStream {
    pub async fn open(addr: &str) -> RawStream {
        // A member may not listen yet when another has become leader (seen
        // once on a loaded machine: connection refused right after start).
        let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
        let deadline = std::time::Instant::now() + LONG;
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if std::time::Instant::now() > deadline => panic!("connect: {e:?}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (requests, rx) = mpsc::channel(16);
        let responses = epb::watch_client::WatchClient::new(channel)
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch stream")
            .into_inner();
        RawStream {
            requests,
            responses,
        }
    }

    pub async fn create(&mut self, create: epb::WatchCreateRequest) -> epb::WatchResponse {
        let request = epb::WatchRequest {
            request_union: Some(epb::watch_request::RequestUnion::CreateRequest(create)),
        };
        self.requests.send(request).await.unwrap();
        self.next().await
    }

    pub async fn send(&mut self, union: epb::watch_request::RequestUnion) {
        let request = epb::WatchRequest {
            request_union: Some(union),
        };
        self.requests.send(request).await.unwrap();
    }

    pub async fn next(&mut self) -> epb::WatchResponse {
        tokio::time::timeout(LONG, self.responses.message())
            .await
            .expect("a watch response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    /// Events until `n` have arrived.
    pub async fn events(&mut self, n: usize) -> Vec<mvccpb::Event> {
        let mut events = Vec::new();
        while events.len() < n {
            let response = self.next().await;
            assert!(!response.canceled, "canceled: {response:?}");
            let revision = response.header.as_ref().unwrap().revision;
            for e in &response.events {
                assert!(e.kv.as_ref().unwrap().mod_revision <= revision);
            }
            events.extend(response.events);
        }
        assert_eq!(events.len(), n, "more events than expected: {events:?}");
        events
    }
}

pub fn prefix(key: &str) -> epb::WatchCreateRequest {
    epb::WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        range_end: prefix_end(key.as_bytes()),
        ..Default::default()
    }
}

pub fn summary(e: &mvccpb::Event) -> (String, String, i64) {
    let kv = e.kv.as_ref().unwrap();
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    (
        kind.to_string(),
        format!(
            "{}={}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        ),
        kv.mod_revision,
    )
}
