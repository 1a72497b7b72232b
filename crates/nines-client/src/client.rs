//! The client: routing, retries, sessions.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::AuthChannel as Channel;
use rand::Rng;
use tonic::{Code, Status};

use crate::auth::{self, Auth, Credentials};
use crate::endpoints::Endpoints;
use crate::error::ClientError;
use crate::proto::maintenance_client::MaintenanceClient;
use crate::proto::{self as pb, cluster_client::ClusterClient, kv_client::KvClient};
use crate::session::{self, Lanes};

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
    /// TLS to every endpoint (etcdctl's `--cacert`, `--cert`, `--key`):
    /// the servers must present certificates of this CA; the certificate
    /// is presented to servers that ask for one. Files are re-read when
    /// they change on disk.
    pub tls: Option<nines_tls::ClientFiles>,
    /// etcd's user/password auth: Authenticate before the first call, send
    /// the token with every call, log in again when it is refused.
    pub credentials: Option<Credentials>,
}

impl ClientConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(1),
            read_balance: ReadBalance::default(),
            tls: None,
            credentials: None,
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Route {
    Leader,
    AnyReplica,
}

#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) endpoints: Endpoints,
    pub(crate) connector: nines_tls::Connector,
    pub(crate) auth: Auth,
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
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(nines_tls::ClientTls::new(
                "client",
                files.clone(),
            )?)),
            None => None,
        };
        let connector = nines_tls::Connector::new(tls, None);
        let auth = Auth::new(config.credentials.clone());
        let endpoints = Endpoints::new(
            &config.endpoints,
            config.connect_timeout,
            connector.clone(),
            auth.interceptor(),
        )?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                endpoints,
                connector,
                auth,
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

    /// What opens this client's connections (TLS as configured), for
    /// one-off channels such as `save_snapshot`'s.
    pub fn connector(&self) -> &nines_tls::Connector {
        &self.inner.connector
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
    pub(crate) async fn call<Req, Resp, F, Fut>(
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
        self.call_in(route, message, None, call).await
    }

    /// `call`, with every attempt carrying `session` (a write's retries
    /// must all carry the same one).
    async fn call_in<Req, Resp, F, Fut>(
        &self,
        route: Route,
        message: Req,
        session: Option<(u64, u64)>,
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
        let generation = self.auth_ready().await?;
        let mut relogged = false;
        let mut attempt = 0u32;
        loop {
            let i = match route {
                Route::Leader => inner.endpoints.for_leader(attempt),
                Route::AnyReplica => inner.endpoints.for_read(inner.config.read_balance, attempt),
            };
            let endpoint = inner.endpoints.get(i);
            let mut request = tonic::Request::new(message.clone());
            if let Some((client_id, seq)) = session {
                session::attach(request.metadata_mut(), client_id, seq);
            }
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
                Err(status) if !relogged && self.token_refused(&status) => {
                    // Expired (or auth enabled since): once, as etcd's clientv3.
                    relogged = true;
                    self.auth_refresh(generation).await?;
                    continue;
                }
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

    /// The generation of the token calls carry, after logging in if this
    /// client has credentials and has not yet.
    pub(crate) async fn auth_ready(&self) -> Result<u64, ClientError> {
        let config = &self.inner.config;
        self.inner
            .auth
            .ready(
                &self.inner.endpoints,
                config.request_timeout,
                config.retry_deadline,
            )
            .await
    }

    /// Logs in again after the token of `generation` was refused.
    pub(crate) async fn auth_refresh(&self, generation: u64) -> Result<(), ClientError> {
        let config = &self.inner.config;
        self.inner
            .auth
            .refresh(
                generation,
                &self.inner.endpoints,
                config.request_timeout,
                config.retry_deadline,
            )
            .await
    }

    /// A refusal that a new login fixes (only with credentials).
    pub(crate) fn token_refused(&self, status: &Status) -> bool {
        self.inner.auth.enabled() && auth::token_refused(status)
    }

    /// Asks the endpoints who leads; cheap, and saves a forwarding hop per
    /// write. etcd's Status names the leader, its member list the leader's
    /// client address.
    pub async fn discover_leader(&self) -> Option<String> {
        let quick = Duration::from_millis(500);
        for endpoint in self.inner.endpoints.all() {
            let mut maintenance = MaintenanceClient::new(endpoint.channel.clone());
            let Ok(status) = maintenance.status(timed(pb::StatusRequest {}, quick)).await else {
                continue;
            };
            let leader = status.into_inner().leader;
            let list = pb::MemberListRequest {
                linearizable: false,
            };
            let mut cluster = ClusterClient::new(endpoint.channel.clone());
            let Ok(list) = cluster.member_list(timed(list, quick)).await else {
                continue;
            };
            let addr = list
                .into_inner()
                .members
                .into_iter()
                .find(|m| m.id == leader && leader != 0)
                .and_then(|m| m.client_ur_ls.into_iter().next());
            if let Some(addr) = addr {
                self.inner.endpoints.set_leader_addr(&addr);
                return Some(addr);
            }
        }
        None
    }

    /// Runs a write under a fresh (client_id, seq), reused by every retry
    /// and sent as `x-nines-session` metadata.
    pub(crate) async fn write<Req, Resp, F, Fut>(
        &self,
        message: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let lane = self.inner.lanes.acquire();
        let attempts = AtomicUsize::new(0);
        let counted = |channel, request| {
            attempts.fetch_add(1, Ordering::Relaxed);
            call(channel, request)
        };
        let session = Some((lane.client_id, lane.seq));
        let result = self
            .call_in(Route::Leader, message.clone(), session, &counted)
            .await;
        // The server forgot this lane (idle past its session window, or
        // evicted). If this was the request's only attempt, it was refused,
        // not applied: retry once on a new lane. After several attempts an
        // earlier one may have been applied, so the caller must decide.
        let forgotten = matches!(&result, Err(e) if session_unknown(e));
        // A session refusal after this request's attempts so far says more
        // than its status (see `session_outcome`).
        let classify = |result: Result<Resp, ClientError>| {
            let attempts = attempts.load(Ordering::Relaxed) as u32;
            result.map_err(|e| crate::error::session_outcome(e, attempts))
        };
        if forgotten && attempts.load(Ordering::Relaxed) == 1 {
            // The forgotten lane is not returned to the pool.
            let lane = self.inner.lanes.fresh();
            let session = Some((lane.client_id, lane.seq));
            attempts.store(0, Ordering::Relaxed);
            let result = self
                .call_in(Route::Leader, message, session, &counted)
                .await;
            self.inner.lanes.release(lane);
            return classify(result);
        }
        if !forgotten {
            self.inner.lanes.release(lane);
        }
        classify(result)
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

    /// A put as etcd's PutRequest; with `lease` set, an unknown lease is
    /// `ClientError::LeaseNotFound`.
    pub async fn put_request(
        &self,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, ClientError> {
        let lease = request.lease;
        self.write(request, |ch, req| async move { kv(ch).put(req).await })
            .await
            .map_err(|e| if lease != 0 { e.lease(lease) } else { e })
    }

    /// A linearizable read of one key.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<pb::KeyValue>, ClientError> {
        self.get_request(GetRequest {
            key: key.into(),
            serializable: false,
        })
        .await
        .map(|r| r.kv)
    }

    /// One key, as etcd's Range of that key alone.
    pub async fn get_request(&self, request: GetRequest) -> Result<GetResponse, ClientError> {
        let range = pb::RangeRequest {
            key: request.key,
            serializable: request.serializable,
            ..Default::default()
        };
        let resp = self.range(range).await?;
        Ok(GetResponse {
            header: resp.header,
            kv: resp.kvs.into_iter().next(),
        })
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
            |ch, req| async move { kv(ch).delete_range(req).await },
        )
        .await
    }

    /// A txn; one of ranges (and compares) only is a read, sent without a
    /// session (the server serves it without the log, so it would use no
    /// sequence number) and retried as a read.
    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, ClientError> {
        let call = |ch, req| async move { kv(ch).txn(req).await };
        if request.is_read_only() {
            // Any member, as a serializable range goes, if every op asked
            // for that (the server then skips the read barrier too).
            let route = if request.is_serializable() {
                Route::AnyReplica
            } else {
                Route::Leader
            };
            return self.call(route, request, call).await;
        }
        self.write(request, call).await
    }

    /// Compacts history at or below `revision`; with `physical`, answers
    /// once the leader has deleted the dropped records.
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<pb::CompactionResponse, ClientError> {
        let request = pb::CompactionRequest { revision, physical };
        self.write(request, |ch, req| async move { kv(ch).compact(req).await })
            .await
    }
}

pub(crate) fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// One key and whether to read it from any replica: a Range of that key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetRequest {
    pub key: Vec<u8>,
    pub serializable: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GetResponse {
    pub header: Option<pb::ResponseHeader>,
    /// Absent when the key does not exist.
    pub kv: Option<pb::KeyValue>,
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
