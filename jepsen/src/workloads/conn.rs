//! A connection bound to exactly one node.
//!
//! `nines_client::Client` learns the leader and sends linearizable reads to
//! it directly, which would hide a node that serves stale local state. Here
//! every request goes to the bound node, which must pass its own read
//! barrier or forward to the leader itself. Writes still carry a
//! `(client_id, seq)` session (etcd's API with nines' `x-nines-session`
//! metadata), so retrying one within the op's deadline is applied at most
//! once, exactly like the real client.

use std::time::{Duration, Instant};

use nines_client::proto as pb;
use pb::kv_client::KvClient;
use rand::Rng;
use tonic::transport::Channel;
use tonic::Code;

/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Total time one op may take before its outcome is declared unknown.
const OP_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub enum OpError {
    /// The op certainly had no effect.
    Definite(String),
    /// It may or may not have taken effect (timeout, lost connection).
    Indeterminate(String),
}

impl OpError {
    pub fn message(&self) -> String {
        match self {
            OpError::Definite(m) | OpError::Indeterminate(m) => m.clone(),
        }
    }
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Statuses that say the request was rejected before being proposed.
fn definite(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated
    )
}

pub struct NodeConn {
    kv: KvClient<Channel>,
    client_id: u64,
    seq: u64,
}

impl NodeConn {
    pub fn new(addr: &str) -> anyhow::Result<NodeConn> {
        let channel = crate::tls::channel(addr, Duration::from_millis(500))?;
        Ok(NodeConn {
            // Final reads return every element of a long run at once.
            kv: KvClient::new(channel).max_decoding_message_size(nines_client::MAX_RESPONSE_BYTES),
            client_id: rand::thread_rng().gen_range(1..u64::MAX),
            seq: 0,
        })
    }

    /// Runs `call` until it succeeds, fails definitively, or the op
    /// deadline passes.
    async fn retry<Req, Resp, F, Fut>(
        &mut self,
        message: Req,
        session: Option<(u64, u64)>,
        call: F,
    ) -> Result<Resp, OpError>
    where
        Req: Clone,
        F: Fn(KvClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = Instant::now() + OP_DEADLINE;
        loop {
            let mut request = match session {
                Some((client_id, seq)) => {
                    nines_client::with_session(message.clone(), client_id, seq)
                }
                None => tonic::Request::new(message.clone()),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            request.set_timeout(ATTEMPT_TIMEOUT.min(left).max(Duration::from_millis(50)));
            let status = match call(self.kv.clone(), request).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => status,
            };
            let text = format!("{:?}: {}", status.code(), status.message());
            // A session refusal of a retry is no failure: "already
            // applied" (response not kept) or "session unknown" (an earlier
            // attempt may have been applied).
            let session = status.message().contains("already applied at revision")
                || status.message().contains("session unknown");
            if definite(status.code()) && !session {
                return Err(OpError::Definite(text));
            }
            if !retryable(status.code()) || Instant::now() + Duration::from_millis(100) >= deadline
            {
                return Err(OpError::Indeterminate(text));
            }
            let pause = Duration::from_millis(rand::thread_rng().gen_range(50..100));
            tokio::time::sleep(pause).await;
        }
    }

    /// The session of a new write: this connection's id, the next seq.
    fn session(&mut self) -> Option<(u64, u64)> {
        self.seq += 1;
        Some((self.client_id, self.seq))
    }

    /// A linearizable read of one key.
    pub async fn get(&mut self, key: &str) -> Result<Option<pb::KeyValue>, OpError> {
        let req = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let resp = self
            .retry(req, None, |mut kv, r| async move { kv.range(r).await })
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    pub async fn put(&mut self, key: &str, value: String) -> Result<(), OpError> {
        let req = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.into_bytes(),
            ..Default::default()
        };
        let session = self.session();
        self.retry(req, session, |mut kv, r| async move { kv.put(r).await })
            .await
            .map(|_| ())
    }

    /// A put that returns its committed revision (the response header's; a
    /// retry of the same session gets the stored response, so the same).
    pub async fn put_at(&mut self, key: &str, value: String) -> Result<i64, OpError> {
        let req = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.into_bytes(),
            ..Default::default()
        };
        let session = self.session();
        let resp = self
            .retry(req, session, |mut kv, r| async move { kv.put(r).await })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Deletes one key: (header revision, keys deleted). Deleting nothing
    /// makes no revision; the header is then just the current one.
    pub async fn delete_at(&mut self, key: &str) -> Result<(i64, i64), OpError> {
        let req = pb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let session = self.session();
        let resp = self
            .retry(
                req,
                session,
                |mut kv, r| async move { kv.delete_range(r).await },
            )
            .await?;
        Ok((resp.header.map_or(0, |h| h.revision), resp.deleted))
    }

    /// A txn; one of ranges only is sent without a session, as nines'
    /// client sends it, so the server serves it as a read (no log entry):
    /// the append workload's multi-key reads check that path.
    pub async fn txn(&mut self, req: pb::TxnRequest) -> Result<pb::TxnResponse, OpError> {
        let session = if req.is_read_only() {
            None
        } else {
            self.session()
        };
        self.retry(req, session, |mut kv, r| async move { kv.txn(r).await })
            .await
    }

    /// A linearizable read of every key under `prefix`.
    pub async fn range_prefix(&mut self, prefix: &str) -> Result<Vec<pb::KeyValue>, OpError> {
        Ok(self.range_prefix_at(prefix, false).await?.kvs)
    }

    /// One Range over `prefix` (not a txn: served outside the log), with
    /// its header.
    pub async fn range_prefix_at(
        &mut self,
        prefix: &str,
        serializable: bool,
    ) -> Result<pb::RangeResponse, OpError> {
        let req = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: nines_client::prefix_end(prefix.as_bytes()),
            serializable,
            ..Default::default()
        };
        self.retry(req, None, |mut kv, r| async move { kv.range(r).await })
            .await
    }
}

/// Parses a decimal integer value.
pub fn int_of(kv: &pb::KeyValue) -> Option<i64> {
    std::str::from_utf8(&kv.value).ok()?.parse().ok()
}

/// Parses a comma-separated list of integers.
pub fn list_of(kv: &pb::KeyValue) -> Vec<i64> {
    std::str::from_utf8(&kv.value)
        .unwrap_or("")
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect()
}
