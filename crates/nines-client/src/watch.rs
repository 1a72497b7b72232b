//! Watches that survive a member's death: `Watch::next` reads a watch
//! stream on some member; when the stream breaks (the member died,
//! restarted, or lost its leader) it opens one on the next member,
//! resuming from the revision after the last event it delivered, so the
//! caller sees every change once, in order, with no gap. No background
//! task: the stream is read only as the caller asks, so a slow caller
//! slows its own stream (the server keeps that bounded), nothing else.
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
    resume: Resume,
    stream: Option<Stream>,
    /// Events of a revision sent in fragments, until its last one.
    pending: Vec<mvccpb::Event>,
    /// Failed opens in a row, for the backoff.
    attempt: u32,
    ended: bool,
    /// Streams opened after one broke.
    reconnects: u64,
}

/// One open watch stream: responses, and the request side that must stay
/// open (the server ends a watch whose request stream closes, as etcd does).
struct Stream {
    inbound: Inbound,
    _requests: mpsc::Sender<pb::WatchRequest>,
}

impl Watch {
    /// How many times a broken stream was replaced by one on another
    /// member (or the same one, restarted).
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The next update; None once the watch ended after an error it
    /// reported. Cancel-safe: an update not returned is not lost.
    pub async fn next(&mut self) -> Option<Result<WatchUpdate, WatchError>> {
        if self.ended {
            return None;
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match self.resume.open(self.attempt).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        self.pending.clear();
                        self.attempt = 0;
                        self.reconnects += 1;
                    }
                    Err(WatchError::Client(e)) => {
                        tracing::debug!(error = %e, "watch: reconnecting");
                        self.attempt += 1;
                        tokio::time::sleep(backoff(self.attempt)).await;
                    }
                    Err(e) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                }
                continue;
            };
            let response = match stream.inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    // Broken: resume on the next member.
                    self.stream = None;
                    self.attempt += 1;
                    continue;
                }
            };
            match self.resume.absorb(response, &mut self.pending) {
                Some(Ok(update)) => return Some(Ok(update)),
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                None => {}
            }
        }
    }
}

/// etcd's metadata asking the server to end the stream while its member
/// has no leader.
const REQUIRE_LEADER: (&str, &str) = ("hasleader", "true");

impl Client {
    /// Watches `key` (and the range `opts.range_end` gives) from
    /// `opts.start_revision`. The watch reconnects through any endpoint
    /// until it is dropped; only a compaction or a server refusal ends it.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        opts: WatchOptions,
    ) -> Result<Watch, WatchError> {
        let mut resume = Resume {
            client: self.clone(),
            key: key.into(),
            opts,
            next: None,
        };
        // The first stream is opened before returning, so changes made
        // after this call are seen by a watch from "now"; any member will
        // do, tried in turn until the retry deadline.
        let deadline = tokio::time::Instant::now() + self.inner.config.retry_deadline;
        let mut attempt = 0;
        let stream = loop {
            match resume.open(attempt).await {
                Ok(stream) => break stream,
                Err(WatchError::Client(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "watch: trying another member");
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Watch {
            resume,
            stream: Some(stream),
            pending: Vec::new(),
            attempt: 0,
            ended: false,
            reconnects: 0,
        })
    }
}

type Inbound = tonic::Streaming<pb::WatchResponse>;

struct Resume {
    client: Client,
    key: Vec<u8>,
    opts: WatchOptions,
    /// The next revision to deliver, once known.
    next: Option<i64>,
}

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
    async fn open(&mut self, attempt: u32) -> Result<Stream, WatchError> {
        let generation = self.client.auth_ready().await?;
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
        .and_then(|r| r);
        let opened = match opened {
            Ok(opened) => opened,
            Err(status) => {
                // An expired token: log in again; the caller opens anew.
                if self.client.token_refused(&status) {
                    self.client.auth_refresh(generation).await?;
                }
                return Err(ClientError::Status(status).into());
            }
        };
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
        Ok(Stream {
            inbound,
            _requests: requests,
        })
    }

    /// Takes in one response; returns the update it completes, if any.
    fn absorb(
        &mut self,
        response: pb::WatchResponse,
        pending: &mut Vec<mvccpb::Event>,
    ) -> Option<Result<WatchUpdate, WatchError>> {
        if response.canceled {
            return Some(Err(refused(&response)));
        }
        let next = self.next.unwrap_or(0);
        pending.extend(
            response
                .events
                .into_iter()
                .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= next)),
        );
        if response.fragment {
            return None;
        }
        if let Some(last) = pending.last() {
            let revision = last.kv.as_ref().map_or(next, |kv| kv.mod_revision);
            self.next = Some(revision + 1);
            return Some(Ok(WatchUpdate::Events(std::mem::take(pending))));
        }
        if response.created || response.compact_revision != 0 {
            return None;
        }
        let revision = response.header.map_or(0, |h| h.revision);
        if revision < next {
            return None;
        }
        self.next = Some(revision + 1);
        Some(Ok(WatchUpdate::Progress { revision }))
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
