//! Watches that survive a member's death: one background task keeps a
//! watch stream open on some member; when the stream breaks (the member
//! died, restarted, or lost its leader) it opens one on the next member,
//! resuming from the revision after the last event it delivered, so the
//! caller sees every change once, in order, with no gap.
//!
//! Streams ask the server to end them when the member has no leader
//! (etcd's `hasleader` metadata), so a watcher never sits silently on a
//! member cut off from the cluster.

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::client::Client;
use crate::error::ClientError;
use crate::proto as pb;
use pb::mvccpb;
use pb::watch_client::WatchClient;

/// What to watch, besides the key (etcd's `WatchCreateRequest` fields).
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// As in a range: empty for one key, `"\0"` for every key from `key`.
    pub range_end: Vec<u8>,
    /// First revision to deliver; 0 for changes after the watch starts.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    /// Ask for periodic progress notifications when idle.
    pub progress_notify: bool,
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// Changes, in revision order (never empty).
    Events(Vec<mvccpb::Event>),
    /// Every change up to `revision` has been delivered.
    Progress { revision: i64 },
}

/// Why a watch ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// History from the revision it needed is compacted; it can restart
    /// from `compact_revision`.
    #[error("required revision has been compacted; watch from {compact_revision}")]
    Compacted { compact_revision: i64 },
    #[error("watch canceled by the server: {0}")]
    Canceled(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A running watch; dropping it ends the stream.
pub struct Watch {
    updates: mpsc::Receiver<Result<WatchUpdate, WatchError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    /// The next update; None once the watch ended after an error it reported.
    pub async fn next(&mut self) -> Option<Result<WatchUpdate, WatchError>> {
        self.updates.recv().await
    }
}

/// etcd's metadata asking the server to end the stream while its member
/// has no leader.
const REQUIRE_LEADER: (&str, &str) = ("hasleader", "true");
/// Updates buffered between the stream task and the caller.
const BUFFER: usize = 64;

impl Client {
    /// Watches `key` (and the range `opts.range_end` gives) from
    /// `opts.start_revision`. The watch reconnects through any endpoint
    /// until it is dropped; only a compaction or a server refusal ends it.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        opts: WatchOptions,
    ) -> Result<Watch, WatchError> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut state = Resume {
            client: self.clone(),
            key: key.into(),
            opts,
            next: None,
            out: tx,
        };
        // The first stream is opened before returning, so changes made
        // after this call are seen by a watch from "now"; any member will
        // do, tried in turn until the retry deadline.
        let deadline = tokio::time::Instant::now() + self.inner.config.retry_deadline;
        let mut attempt = 0;
        let stream = loop {
            match state.open(attempt).await {
                Ok(stream) => break stream,
                Err(WatchError::Client(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "watch: trying another member");
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let task = tokio::spawn(async move { state.run(stream).await });
        Ok(Watch { updates: rx, task })
    }
}

type Inbound = tonic::Streaming<pb::WatchResponse>;

struct Resume {
    client: Client,
    key: Vec<u8>,
    opts: WatchOptions,
    /// The next revision to deliver, once known.
    next: Option<i64>,
    out: mpsc::Sender<Result<WatchUpdate, WatchError>>,
}

/// The watch is over: the caller dropped it, or was told why it ended.
struct Done;

impl Resume {
    fn create(&self) -> pb::WatchRequest {
        pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: self.key.clone(),
                    range_end: self.opts.range_end.clone(),
                    start_revision: self.next.unwrap_or(self.opts.start_revision),
                    progress_notify: self.opts.progress_notify,
                    filters: [(self.opts.no_put, 0), (self.opts.no_delete, 1)]
                        .into_iter()
                        .filter_map(|(on, f)| on.then_some(f))
                        .collect(),
                    prev_kv: self.opts.prev_kv,
                    watch_id: 0,
                    fragment: true,
                },
            )),
        }
    }

    /// Opens a stream on endpoint `attempt` (mod their number) and waits
    /// for the created response; learns the start revision from it.
    async fn open(&mut self, attempt: u32) -> Result<Inbound, WatchError> {
        let endpoints = &self.client.inner.endpoints;
        let endpoint =
            endpoints.get(endpoints.for_read(self.client.inner.config.read_balance, attempt));
        // The request stream stays open (dropping it would end the watch);
        // kept alive by the task through `requests`.
        let (requests, rx) = mpsc::channel(1);
        requests
            .send(self.create())
            .await
            .map_err(|_| ClientError::Status(Status::cancelled("watch request stream closed")))?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let (k, v) = REQUIRE_LEADER;
        request
            .metadata_mut()
            .insert(k, v.parse().expect("static metadata value"));
        let mut watch = WatchClient::new(endpoint.channel.clone())
            .max_decoding_message_size(crate::MAX_RESPONSE_BYTES);
        let connect = self.client.inner.config.request_timeout;
        let opened = tokio::time::timeout(connect, async {
            let mut inbound = watch.watch(request).await?.into_inner();
            let created = inbound
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("watch stream ended before created"))?;
            Ok::<_, Status>((inbound, created))
        })
        .await
        .map_err(|_| Status::deadline_exceeded("watch create timed out"))
        .and_then(|r| r)
        .map_err(ClientError::Status)?;
        let (inbound, created) = opened;
        if created.canceled {
            return Err(refused(&created));
        }
        if self.next.is_none() && self.opts.start_revision <= 0 {
            let revision = created.header.map_or(0, |h| h.revision);
            self.next = Some(revision + 1);
        } else if self.next.is_none() {
            self.next = Some(self.opts.start_revision);
        }
        // Leaked on purpose into the stream's lifetime: the server ends the
        // watch when the request side closes.
        tokio::spawn(async move {
            requests.closed().await;
        });
        Ok(inbound)
    }

    async fn run(&mut self, first: Inbound) {
        let mut stream = Some(first);
        let mut attempt = 0u32;
        loop {
            let inbound = match stream.take() {
                Some(s) => s,
                None => match self.open(attempt).await {
                    Ok(s) => {
                        attempt = 0;
                        s
                    }
                    Err(WatchError::Client(e)) => {
                        tracing::debug!(error = %e, "watch: reconnecting");
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = self.out.send(Err(e)).await;
                        return;
                    }
                },
            };
            match self.follow(inbound).await {
                Ok(()) => attempt += 1,
                Err(Done) => return,
            }
        }
    }

    /// Delivers from one stream until it breaks (Ok: reconnect).
    async fn follow(&mut self, mut inbound: Inbound) -> Result<(), Done> {
        let mut pending: Vec<mvccpb::Event> = Vec::new();
        loop {
            let response = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => return Ok(()),
            };
            if response.canceled {
                let error = refused(&response);
                let _ = self.out.send(Err(error)).await;
                return Err(Done);
            }
            let next = self.next.unwrap_or(0);
            pending.extend(
                response
                    .events
                    .into_iter()
                    .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= next)),
            );
            if response.fragment {
                continue;
            }
            let update = if let Some(last) = pending.last() {
                let revision = last.kv.as_ref().map_or(next, |kv| kv.mod_revision);
                self.next = Some(revision + 1);
                WatchUpdate::Events(std::mem::take(&mut pending))
            } else if !response.created && response.compact_revision == 0 {
                let revision = response.header.map_or(0, |h| h.revision);
                if revision < next {
                    continue;
                }
                self.next = Some(revision + 1);
                WatchUpdate::Progress { revision }
            } else {
                continue;
            };
            if self.out.send(Ok(update)).await.is_err() {
                return Err(Done);
            }
        }
    }
}

/// Short and capped: an election takes a few hundred ms.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(4)).min(300))
}

fn refused(response: &pb::WatchResponse) -> WatchError {
    if response.compact_revision > 0 {
        WatchError::Compacted {
            compact_revision: response.compact_revision,
        }
    } else {
        WatchError::Canceled(response.cancel_reason.clone())
    }
}
