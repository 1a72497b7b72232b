//! Locks and elections through etcd's `v3lockpb.Lock` and
//! `v3electionpb.Election` services, and the fenced write.
//!
//! A lock is only as safe as what is done under it: a holder that paused
//! (GC, SIGSTOP, a slow disk) may find on waking that its lease expired and
//! someone else holds the lock. So a write meant to happen under the lock
//! should be *fenced*: a txn whose compare checks that the lock key still
//! exists with the create revision it had when the lock was taken
//! ([`Client::fenced_txn`]). The store refuses a fenced write from a
//! holder whose lock is gone, whatever its clock or pauses.
//!
//! Lock and Campaign may wait for a long time, so they carry no request
//! timeout: wrap them in `tokio::time::timeout` to bound the wait (the
//! server then withdraws the key the call queued). A call broken by a
//! member's failure is sent again to another member: one lease holds one
//! place in a queue, so the retry takes the same place if it is still
//! there.

use std::time::Duration;

use crate::auth::AuthChannel as Channel;
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::proto as pb;
use nines_proto::etcd::v3electionpb::{self as vpb, election_client::ElectionClient};
use nines_proto::etcd::v3lockpb::{self as lpb, lock_client::LockClient};

pub use vpb::LeaderKey;

/// A lock held: its key, and the key's create revision (the fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHeld {
    pub key: Vec<u8>,
    /// The revision the server answered the lock at (etcdctl's
    /// `ETCD_LOCK_REV`).
    pub revision: i64,
    /// The lock key's create revision: what fenced writes compare.
    pub fence: i64,
}

/// The outcome of a fenced txn.
#[derive(Debug, Clone, PartialEq)]
pub enum Fenced {
    /// The lock was still held: the ops were applied.
    Applied(pb::TxnResponse),
    /// The lock key is gone or was re-created: nothing was applied. The
    /// header says at which revision that was found.
    LockLost(pb::TxnResponse),
}

/// The compare that holds while `lock_key` is the incarnation created at
/// `fence`: add it to any txn to fence it.
pub fn fence_compare(lock_key: &[u8], fence: i64) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    pb::Compare {
        result: CompareResult::Equal.into(),
        target: CompareTarget::Create.into(),
        key: lock_key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(fence)),
        range_end: Vec::new(),
    }
}

/// A put as a txn op (for [`Client::fenced_txn`]).
pub fn put_op(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn lock_client(channel: Channel) -> LockClient<Channel> {
    LockClient::new(channel).max_decoding_message_size(crate::MAX_RESPONSE_BYTES)
}

fn election_client(channel: Channel) -> ElectionClient<Channel> {
    ElectionClient::new(channel).max_decoding_message_size(crate::MAX_RESPONSE_BYTES)
}

/// A broken call worth sending again elsewhere: the member failed, lost
/// its leader, or timed out one of the writes it makes (sending the call
/// again with the same lease is safe: it takes the same place).
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

/// etcd's election server sends its own refusals ("election: not
/// leader", "election: no leader") as gRPC's UNKNOWN, which reads as a
/// transport failure and would be retried; they are answers, as nines
/// sends them: FAILED_PRECONDITION.
fn answer(status: Status) -> Status {
    if status.code() == Code::Unknown && status.message().starts_with("election: ") {
        return Status::failed_precondition(status.message());
    }
    status
}

const NO_LEADER: &str = "election: no leader";

/// An attempt that lasted this long was being served, not refused.
const SERVED: Duration = Duration::from_secs(1);

impl Client {
    /// Runs a call that may wait for long: no request timeout; sent again
    /// to the next member while it breaks for a member's reasons, until
    /// the retry deadline passes without an answer.
    async fn waiting_call<Req, Resp, F, Fut>(
        &self,
        message: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let endpoints = &self.inner.endpoints;
        let mut first_failure: Option<Instant> = None;
        let generation = self.auth_ready().await?;
        let mut relogged = false;
        let mut attempt = 0u32;
        loop {
            let endpoint = endpoints.get(endpoints.for_leader(attempt));
            let started = Instant::now();
            let request = tonic::Request::new(message.clone());
            let status = match call(endpoint.channel.clone(), request).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) if transient(&status) => status,
                Err(status) if !relogged && self.token_refused(&status) => {
                    relogged = true;
                    self.auth_refresh(generation).await?;
                    continue;
                }
                Err(status) => return Err(ClientError::Status(status)),
            };
            // A call that was served for a while and then broke (its member
            // died or lost its leader mid-wait) starts a new retry window.
            if started.elapsed() > SERVED {
                first_failure = None;
            }
            attempt += 1;
            let since = *first_failure.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.inner.config.retry_deadline {
                return Err(ClientError::Exhausted {
                    attempts: attempt,
                    last: status,
                });
            }
            if endpoints.leader().is_some() && attempt % 3 == 1 {
                endpoints.set_leader(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this client holds lock `name` under `lease` (which must
    /// be kept alive: the lock ends with it). Locking again with the same
    /// lease answers the same key.
    pub async fn lock(
        &self,
        name: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<LockHeld, ClientError> {
        let request = lpb::LockRequest {
            name: name.into(),
            lease,
        };
        let resp = self
            .waiting_call(
                request,
                |ch, req| async move { lock_client(ch).lock(req).await },
            )
            .await
            .map_err(|e| e.lease(lease))?;
        let revision = resp.header.map_or(0, |h| h.revision);
        // The fence is the key's create revision, which the answer does
        // not carry: read it (linearizably, so never an older incarnation).
        let Some(kv) = self.get(resp.key.clone()).await? else {
            return Err(ClientError::LeaseNotFound { id: lease });
        };
        Ok(LockHeld {
            key: resp.key,
            revision,
            fence: kv.create_revision,
        })
    }

    /// Releases a lock (deletes its key). Answers the revision after it.
    pub async fn unlock(&self, key: impl Into<Vec<u8>>) -> Result<i64, ClientError> {
        let request = lpb::UnlockRequest { key: key.into() };
        let resp = self
            .call(Route::Leader, request, |ch, req| async move {
                lock_client(ch).unlock(req).await
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Applies `ops` only while the lock (`lock_key`, created at `fence`)
    /// is held: one txn, so no lost lock can slip between check and write.
    pub async fn fenced_txn(
        &self,
        lock_key: &[u8],
        fence: i64,
        ops: Vec<pb::RequestOp>,
    ) -> Result<Fenced, ClientError> {
        let request = pb::TxnRequest {
            compare: vec![fence_compare(lock_key, fence)],
            success: ops,
            failure: Vec::new(),
        };
        let resp = self.txn(request).await?;
        Ok(match resp.succeeded {
            true => Fenced::Applied(resp),
            false => Fenced::LockLost(resp),
        })
    }

    /// Waits until this client leads election `name` under `lease`, with
    /// `value` proclaimed. The answer names the leadership for
    /// [`Client::proclaim`] and [`Client::resign`]; its `rev` fences
    /// writes as a lock's does.
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        lease: i64,
        value: impl Into<Vec<u8>>,
    ) -> Result<(LeaderKey, i64), ClientError> {
        let request = vpb::CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        };
        let resp = self
            .waiting_call(request, |ch, req| async move {
                election_client(ch).campaign(req).await.map_err(answer)
            })
            .await
            .map_err(|e| e.lease(lease))?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let leader = resp.leader.ok_or_else(|| {
            ClientError::Status(Status::internal("campaign answered without a leader key"))
        })?;
        Ok((leader, revision))
    }

    /// Replaces the leader's value; FAILED_PRECONDITION "election: not
    /// leader" if `leader` no longer leads.
    pub async fn proclaim(
        &self,
        leader: &LeaderKey,
        value: impl Into<Vec<u8>>,
    ) -> Result<i64, ClientError> {
        let request = vpb::ProclaimRequest {
            leader: Some(leader.clone()),
            value: value.into(),
        };
        let resp = self
            .call(Route::Leader, request, |ch, req| async move {
                election_client(ch).proclaim(req).await.map_err(answer)
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// The current leader's key and value; None when no one leads.
    pub async fn election_leader(
        &self,
        name: impl Into<Vec<u8>>,
    ) -> Result<Option<pb::KeyValue>, ClientError> {
        let request = vpb::LeaderRequest { name: name.into() };
        let resp = self
            .call(Route::Leader, request, |ch, req| async move {
                match election_client(ch).leader(req).await.map_err(answer) {
                    Err(s) if s.message() == NO_LEADER => {
                        Ok(tonic::Response::new(vpb::LeaderResponse::default()))
                    }
                    other => other,
                }
            })
            .await?;
        Ok(resp.kv)
    }

    /// Gives up a leadership (a no-op if it is already gone).
    pub async fn resign(&self, leader: &LeaderKey) -> Result<i64, ClientError> {
        let request = vpb::ResignRequest {
            leader: Some(leader.clone()),
        };
        let resp = self
            .call(Route::Leader, request, |ch, req| async move {
                election_client(ch).resign(req).await.map_err(answer)
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Follows election `name`: the leader's key and value now (once there
    /// is one), then at each change of leader or value.
    pub async fn observe(&self, name: impl Into<Vec<u8>>) -> Result<Observe, ClientError> {
        let mut observe = Observe {
            client: self.clone(),
            name: name.into(),
            stream: None,
            last: None,
            attempt: 0,
        };
        observe.open().await?;
        Ok(observe)
    }
}

/// An election followed through member failures: a broken stream is
/// reopened on another member, and a leader state already delivered is
/// not delivered again.
pub struct Observe {
    client: Client,
    name: Vec<u8>,
    stream: Option<Streaming<vpb::LeaderResponse>>,
    /// The last delivered (key, mod revision).
    last: Option<(Vec<u8>, i64)>,
    attempt: u32,
}

impl Observe {
    async fn open(&mut self) -> Result<(), ClientError> {
        let request = vpb::LeaderRequest {
            name: self.name.clone(),
        };
        let stream = self
            .client
            .waiting_call(request, |ch, req| async move {
                election_client(ch).observe(req).await.map_err(answer)
            })
            .await?;
        self.stream = Some(stream);
        Ok(())
    }

    /// The next leader state.
    pub async fn next(&mut self) -> Result<vpb::LeaderResponse, ClientError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                continue;
            };
            let status = match stream.message().await {
                Ok(Some(resp)) => {
                    let seen = resp.kv.as_ref().map(|kv| (kv.key.clone(), kv.mod_revision));
                    // A reopened stream starts with the current leader,
                    // which may be the one delivered last.
                    if seen.is_some() && seen == self.last {
                        continue;
                    }
                    self.last = seen;
                    self.attempt = 0;
                    return Ok(resp);
                }
                Ok(None) => Status::unavailable("observe stream ended"),
                Err(status) => status,
            };
            self.stream = None;
            if !transient(&status) {
                return Err(ClientError::Status(status));
            }
            self.attempt += 1;
            if self.attempt > 20 {
                return Err(ClientError::Exhausted {
                    attempts: self.attempt,
                    last: status,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
