//! The client: routing, retries, sessions.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_proto as pb;
use nines_proto::cluster_client::ClusterClient;
use nines_proto::kv_client::KvClient;
use rand::Rng;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::endpoints::Endpoints;
use crate::error::ClientError;
use crate::session::Lanes;

/// Largest response accepted: the server's own cap on what it sends. tonic's
/// 4 MiB default made a range of a few hundred thousand keys fail.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// How serializable reads pick an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadBalance {
    #[default]
    RoundRobin,
    LeastOutstanding,
    LowestLatency,
}

impl std::str::FromStr for ReadBalance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(ReadBalance::RoundRobin),
            "least-outstanding" => Ok(ReadBalance::LeastOutstanding),
            "lowest-latency" => Ok(ReadBalance::LowestLatency),
            _ => Err(format!(
                "unknown read balance {s:?} (round-robin, least-outstanding, lowest-latency)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoints: Vec<String>,
    /// Deadline of one attempt.
    pub request_timeout: Duration,
    /// Total time spent retrying one call before giving up.
    pub retry_deadline: Duration,
    pub connect_timeout: Duration,
    pub read_balance: ReadBalance,
}

impl ClientConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(1),
            read_balance: ReadBalance::default(),
        }
    }
}

#[derive(Clone, Copy)]
enum Route {
    Leader,
    AnyReplica,
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoints: Endpoints,
    lanes: Lanes,
}

/// The server's answer to a sequence of a client id it does not know.
fn session_unknown(e: &ClientError) -> bool {
    e.code() == tonic::Code::FailedPrecondition && e.to_string().contains("session unknown")
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}

/// The first attempt gets a second, each retry twice as long, up to the
/// configured request timeout. A leader that is paused or cut off never
/// answers: waiting the full timeout for it kept every writer stalled for
/// 5 s after a SIGSTOP, although a new leader was elected in under one.
/// Retries are safe: writes carry an exactly-once session.
fn attempt_timeout(limit: Duration, attempt: u32) -> Duration {
    (FIRST_ATTEMPT_TIMEOUT * (1u32 << attempt.min(6))).min(limit)
}

const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get("x-nines-leader-addr")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let endpoints = Endpoints::new(&config.endpoints, config.connect_timeout)?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                endpoints,
                lanes: Lanes::default(),
            }),
        })
    }

    /// Connects lazily to `endpoints` with default settings.
    pub fn connect(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Client, ClientError> {
        Client::new(ClientConfig::new(endpoints))
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .all()
            .iter()
            .map(|e| e.addr.clone())
            .collect()
    }

    /// Runs `call` with retries: follows leader hints, backs off on
    /// unavailability, gives up at the retry deadline.
    async fn call<Req, Resp, F, Fut>(
        &self,
        route: Route,
        message: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.retry_deadline;
        if matches!(route, Route::Leader) && inner.endpoints.leader().is_none() {
            self.discover_leader().await;
        }
        let mut attempt = 0u32;
        loop {
            let i = match route {
                Route::Leader => inner.endpoints.for_leader(attempt),
                Route::AnyReplica => inner.endpoints.for_read(inner.config.read_balance, attempt),
            };
            let endpoint = inner.endpoints.get(i);
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(attempt_timeout(inner.config.request_timeout, attempt));
            endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = call(endpoint.channel.clone(), request).await;
            endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
            let status = match result {
                Ok(resp) => {
                    endpoint.record_latency(started.elapsed());
                    return Ok(resp.into_inner());
                }
                Err(status) if retryable(&status) => status,
                Err(status) => return Err(ClientError::Status(status)),
            };
            attempt += 1;
            tracing::debug!(endpoint = %endpoint.addr, code = ?status.code(), "retrying: {}", status.message());
            if Instant::now() >= deadline {
                return Err(ClientError::Exhausted {
                    attempts: attempt,
                    last: status,
                });
            }
            match leader_hint(&status) {
                Some(hint) if attempt < 8 => inner.endpoints.set_leader_addr(&hint),
                _ => {
                    if inner.endpoints.leader() == Some(i) {
                        inner.endpoints.set_leader(None);
                    }
                    // Short and capped: on loopback or a LAN an election takes a few
                    // hundred ms, and sleeping past it only lengthens the outage.
                    let backoff = Duration::from_millis((10u64 << attempt.min(4)).min(100));
                    let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                }
            }
        }
    }

    /// Asks the endpoints who leads; cheap, and saves a forwarding hop per write.
    pub async fn discover_leader(&self) -> Option<String> {
        for endpoint in self.inner.endpoints.all() {
            let mut request = tonic::Request::new(pb::StatusRequest {});
            request.set_timeout(Duration::from_millis(500));
            if let Ok(status) = ClusterClient::new(endpoint.channel.clone())
                .status(request)
                .await
            {
                let status = status.into_inner();
                if !status.leader_api_addr.is_empty() {
                    self.inner
                        .endpoints
                        .set_leader_addr(&status.leader_api_addr);
                    return Some(status.leader_api_addr);
                }
            }
        }
        None
    }

    /// Runs a write under a fresh (client_id, seq), reused by every retry.
    async fn write<Req, Resp, F, Fut>(
        &self,
        mut message: Req,
        set_session: impl Fn(&mut Req, pb::WriteSession),
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let lane = self.inner.lanes.acquire();
        let mut first = message.clone();
        set_session(
            &mut first,
            pb::WriteSession {
                client_id: lane.client_id,
                seq: lane.seq,
            },
        );
        let attempts = AtomicUsize::new(0);
        let counted = |channel, request| {
            attempts.fetch_add(1, Ordering::Relaxed);
            call(channel, request)
        };
        let result = self.call(Route::Leader, first, &counted).await;
        // The server forgot this lane (idle past its session window, or
        // evicted). If this was the request's only attempt, it was refused,
        // not applied: retry once on a new lane. After several attempts an
        // earlier one may have been applied, so the caller must decide.
        let forgotten = matches!(&result, Err(e) if session_unknown(e));
        if forgotten && attempts.load(Ordering::Relaxed) == 1 {
            // The forgotten lane is not returned to the pool.
            let lane = self.inner.lanes.fresh();
            set_session(
                &mut message,
                pb::WriteSession {
                    client_id: lane.client_id,
                    seq: lane.seq,
                },
            );
            let result = self.call(Route::Leader, message, &call).await;
            self.inner.lanes.release(lane);
            return result;
        }
        if !forgotten {
            self.inner.lanes.release(lane);
        }
        result
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<pb::PutResponse, ClientError> {
        self.put_request(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn put_request(
        &self,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, ClientError> {
        self.write(
            request,
            |r, s| r.session = Some(s),
            |ch, req| async move { kv(ch).put(req).await },
        )
        .await
    }

    /// A linearizable read of one key.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<pb::KeyValue>, ClientError> {
        self.get_request(pb::GetRequest {
            key: key.into(),
            serializable: false,
        })
        .await
        .map(|r| r.kv)
    }

    pub async fn get_request(
        &self,
        request: pb::GetRequest,
    ) -> Result<pb::GetResponse, ClientError> {
        let route = if request.serializable {
            Route::AnyReplica
        } else {
            Route::Leader
        };
        self.call(
            route,
            request,
            |ch, req| async move { kv(ch).get(req).await },
        )
        .await
    }

    pub async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, ClientError> {
        let route = if request.serializable {
            Route::AnyReplica
        } else {
            Route::Leader
        };
        self.call(
            route,
            request,
            |ch, req| async move { kv(ch).range(req).await },
        )
        .await
    }

    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> Result<pb::DeleteRangeResponse, ClientError> {
        self.delete_range(pb::DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn delete_range(
        &self,
        request: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, ClientError> {
        self.write(
            request,
            |r, s| r.session = Some(s),
            |ch, req| async move { kv(ch).delete_range(req).await },
        )
        .await
    }

    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, ClientError> {
        self.write(
            request,
            |r, s| r.session = Some(s),
            |ch, req| async move { kv(ch).txn(req).await },
        )
        .await
    }

    /// Compacts history at or below `revision`; with `physical`, answers
    /// once the leader has deleted the dropped records.
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<pb::CompactionResponse, ClientError> {
        self.write(
            pb::CompactionRequest {
                revision,
                physical,
                session: None,
            },
            |r, s| r.session = Some(s),
            |ch, req| async move { kv(ch).compact(req).await },
        )
        .await
    }

    pub async fn member_list(&self) -> Result<pb::MemberListResponse, ClientError> {
        self.call(
            Route::Leader,
            pb::MemberListRequest {
                serializable: false,
            },
            |ch, req| async move { ClusterClient::new(ch).member_list(req).await },
        )
        .await
    }

    pub async fn member_add_learner(
        &self,
        id: u64,
        raft_addr: &str,
        api_addr: &str,
    ) -> Result<pb::MemberChangeResponse, ClientError> {
        let request = pb::MemberAddLearnerRequest {
            id,
            raft_addr: raft_addr.to_string(),
            api_addr: api_addr.to_string(),
        };
        self.call(Route::Leader, request, |ch, req| async move {
            ClusterClient::new(ch).member_add_learner(req).await
        })
        .await
    }

    pub async fn member_promote(&self, id: u64) -> Result<pb::MemberChangeResponse, ClientError> {
        self.call(
            Route::Leader,
            pb::MemberPromoteRequest { id },
            |ch, req| async move { ClusterClient::new(ch).member_promote(req).await },
        )
        .await
    }

    pub async fn member_remove(&self, id: u64) -> Result<pb::MemberChangeResponse, ClientError> {
        let result = self
            .call(
                Route::Leader,
                pb::MemberRemoveRequest { id },
                |ch, req| async move { ClusterClient::new(ch).member_remove(req).await },
            )
            .await;
        // The removed node may have been the leader we cached.
        self.inner.endpoints.set_leader(None);
        result
    }

    pub async fn transfer_leader(
        &self,
        target_id: u64,
    ) -> Result<pb::TransferLeaderResponse, ClientError> {
        let result = self
            .call(
                Route::Leader,
                pb::TransferLeaderRequest { target_id },
                |ch, req| async move { ClusterClient::new(ch).transfer_leader(req).await },
            )
            .await;
        self.inner.endpoints.set_leader(None);
        result
    }

    /// Status of one endpoint, without retries (that is the point of asking).
    pub async fn status_of(&self, endpoint: &str) -> Result<pb::StatusResponse, ClientError> {
        let i = self.inner.endpoints.add(endpoint)?;
        let channel = self.inner.endpoints.get(i).channel.clone();
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(self.inner.config.request_timeout);
        ClusterClient::new(channel)
            .status(request)
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }

    /// Builds a snapshot on one endpoint.
    pub async fn snapshot_of(&self, endpoint: &str) -> Result<pb::SnapshotResponse, ClientError> {
        let i = self.inner.endpoints.add(endpoint)?;
        let channel = self.inner.endpoints.get(i).channel.clone();
        let mut request = tonic::Request::new(pb::SnapshotRequest {});
        request.set_timeout(Duration::from_secs(90));
        ClusterClient::new(channel)
            .snapshot(request)
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }
}

#[cfg(test)]
mod attempt_tests {
    use super::*;

    #[test]
    fn attempts_start_short_and_double_up_to_the_limit() {
        let limit = Duration::from_secs(5);
        assert_eq!(attempt_timeout(limit, 0), Duration::from_secs(1));
        assert_eq!(attempt_timeout(limit, 1), Duration::from_secs(2));
        assert_eq!(attempt_timeout(limit, 2), Duration::from_secs(4));
        assert_eq!(attempt_timeout(limit, 3), limit);
        assert_eq!(attempt_timeout(limit, 40), limit);
    }
}
