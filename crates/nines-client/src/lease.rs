//! etcd's Lease service: grant, revoke, time-to-live, list, keys put
//! under a lease, one-shot keepalives and raw keepalive streams. The
//! long-running keeper is in `keeper.rs`.
//!
//! A lease the server does not know surfaces as
//! `ClientError::LeaseNotFound`, whichever call found out.

use std::time::Duration;

use crate::auth::AuthChannel as Channel;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::proto::{self as pb, lease_client::LeaseClient};

fn lease(channel: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel).max_decoding_message_size(crate::MAX_RESPONSE_BYTES)
}

/// etcd's metadata asking a member without a leader to end the stream
/// rather than hold it silently (a keepalive there renews nothing).
const REQUIRE_LEADER: (&str, &str) = ("hasleader", "true");

impl Client {
    /// Grants a lease of `ttl_secs` seconds; `id` 0 lets the server pick
    /// the id. The answer carries the id and the TTL the server granted
    /// (it may raise a TTL below its minimum).
    pub async fn lease_grant(
        &self,
        ttl_secs: i64,
        id: i64,
    ) -> Result<pb::LeaseGrantResponse, ClientError> {
        let request = pb::LeaseGrantRequest { ttl: ttl_secs, id };
        let resp = self
            .write(request, |ch, req| async move {
                lease(ch).lease_grant(req).await
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(ClientError::Status(Status::failed_precondition(resp.error)));
        }
        Ok(resp)
    }

    /// Revokes a lease, deleting its keys. `LeaseNotFound` when it does
    /// not exist (also when an earlier attempt whose answer was lost
    /// revoked it: either way it is gone).
    pub async fn lease_revoke(&self, id: i64) -> Result<pb::LeaseRevokeResponse, ClientError> {
        self.write(pb::LeaseRevokeRequest { id }, |ch, req| async move {
            lease(ch).lease_revoke(req).await
        })
        .await
        .map_err(|e| e.lease(id))
    }

    /// A lease's remaining and granted TTL, and with `keys` the keys
    /// attached to it. etcd answers TTL -1 for a lease it does not know.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<pb::LeaseTimeToLiveResponse, ClientError> {
        let request = pb::LeaseTimeToLiveRequest { id, keys };
        self.call(Route::Leader, request, |ch, req| async move {
            lease(ch).lease_time_to_live(req).await
        })
        .await
        .map_err(|e| e.lease(id))
    }

    /// Every live lease.
    pub async fn lease_leases(&self) -> Result<pb::LeaseLeasesResponse, ClientError> {
        self.call(
            Route::Leader,
            pb::LeaseLeasesRequest {},
            |ch, req| async move { lease(ch).lease_leases(req).await },
        )
        .await
    }

    /// Puts `key` attached to lease `lease_id`: revoking or expiring the
    /// lease deletes the key.
    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease_id: i64,
    ) -> Result<pb::PutResponse, ClientError> {
        self.put_request(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease: lease_id,
            ..Default::default()
        })
        .await
    }

    /// One keepalive of `id`, retried on another member if the stream
    /// fails; answers the TTL the lease was renewed to, or
    /// `LeaseNotFound` when the server says it is gone (TTL 0).
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, ClientError> {
        let resp = self
            .call(
                Route::Leader,
                pb::LeaseKeepAliveRequest { id },
                |ch, req| async move {
                    let timeout = req_timeout(&req);
                    let mut stream = KeepAliveStream::open(ch, &[req.into_inner().id]).await?;
                    let answer = tokio::time::timeout(timeout, stream.message())
                        .await
                        .map_err(|_| Status::deadline_exceeded("keepalive not answered"))??;
                    answer
                        .map(tonic::Response::new)
                        .ok_or_else(|| Status::unavailable("keepalive stream ended"))
                },
            )
            .await
            .map_err(|e| e.lease(id))?;
        if resp.ttl <= 0 {
            return Err(ClientError::LeaseNotFound { id });
        }
        Ok(resp.ttl)
    }

    /// A raw LeaseKeepAlive stream on endpoint `endpoint` (an index into
    /// `endpoints()`, taken modulo their number), opened with a keepalive
    /// of each of `first` (the server may answer nothing until it gets
    /// one). Keepalives of any leases may be sent on it, pipelined; no
    /// retries: for load generators and tests. `LeaseKeeper` is the
    /// robust way to keep a lease alive.
    pub async fn lease_keep_alive_stream(
        &self,
        endpoint: usize,
        first: &[i64],
    ) -> Result<KeepAliveStream, ClientError> {
        let generation = self.auth_ready().await?;
        let mut relogged = false;
        loop {
            let channel = self.inner.endpoints.get(endpoint).channel.clone();
            let open = KeepAliveStream::open(channel, first);
            let opened = tokio::time::timeout(self.inner.config.request_timeout, open)
                .await
                .map_err(|_| Status::deadline_exceeded("keepalive stream not opened in time"))
                .and_then(|r| r);
            match opened {
                Err(status) if !relogged && self.token_refused(&status) => {
                    relogged = true;
                    self.auth_refresh(generation).await?;
                }
                opened => return opened.map_err(ClientError::Status),
            }
        }
    }
}

/// The deadline `call` set on this attempt, for the part of it that a
/// stream's own timeout does not cover.
fn req_timeout<T>(req: &tonic::Request<T>) -> Duration {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(Duration::from_secs(5))
}

/// gRPC's timeout header: digits and a unit letter.
fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// One open LeaseKeepAlive stream: keepalives go out through `send`,
/// answers come back in order through `message`.
pub struct KeepAliveStream {
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

/// Keepalives that may wait to be written before `send` blocks.
const STREAM_BUFFER: usize = 1024;

impl KeepAliveStream {
    pub(crate) async fn open(channel: Channel, first: &[i64]) -> Result<KeepAliveStream, Status> {
        let (requests, rx) = mpsc::channel(STREAM_BUFFER.max(first.len()));
        for &id in first {
            requests
                .send(pb::LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| Status::cancelled("keepalive request stream closed"))?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let (k, v) = REQUIRE_LEADER;
        request
            .metadata_mut()
            .insert(k, v.parse().expect("static metadata value"));
        let responses = lease(channel).lease_keep_alive(request).await?.into_inner();
        Ok(KeepAliveStream {
            requests,
            responses,
        })
    }

    /// Queues a keepalive of `id`.
    pub async fn send(&self, id: i64) -> Result<(), ClientError> {
        self.requests
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| ClientError::Status(Status::unavailable("keepalive stream closed")))
    }

    /// The next answer; `None` when the server ended the stream.
    pub async fn message(&mut self) -> Result<Option<pb::LeaseKeepAliveResponse>, Status> {
        self.responses.message().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("1000m"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout("250000u"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("S"), None);
    }

    #[test]
    fn the_attempt_deadline_is_read_back_from_the_request() {
        let mut req = tonic::Request::new(());
        req.set_timeout(Duration::from_millis(1500));
        assert_eq!(req_timeout(&req), Duration::from_millis(1500));
        assert_eq!(
            req_timeout(&tonic::Request::new(())),
            Duration::from_secs(5)
        );
    }
}
