//! `LeaseKeeper`: keeps one lease alive until dropped. One task holds one
//! LeaseKeepAlive stream and sends a keepalive every TTL/3; when the
//! stream breaks, or a keepalive goes unanswered for too long (a paused or
//! cut-off member never answers), it opens a stream on the next member
//! and sends one at once, so a member's death costs one answer timeout
//! plus a reconnect, well inside the TTL.
//!
//! It reports what a caller needs to trust a lease: the last TTL, when the
//! last answered keepalive was sent (the lease lives at least until then +
//! TTL: the server counts from when it received it), every stretch in
//! which it renewed nothing for longer than the TTL (a `Lapse`: the lease
//! may have expired through the keeper's own failure), and whether the
//! server said the lease is gone (TTL 0).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::client::Client;
use crate::error::ClientError;
use crate::lease::KeepAliveStream;

/// What the keeper knows of its lease.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeeperState {
    /// Seconds, from the last answer; 0 once the server said the lease is gone.
    pub ttl: i64,
    /// When the last keepalive answered with a TTL (> 0) was sent.
    pub renewed_at: Option<Instant>,
    /// The TTL that answer gave (kept after the lease is gone).
    pub renewed_ttl: i64,
    /// Keepalives answered.
    pub renewals: u64,
    /// The server answered TTL 0: the lease expired or was revoked.
    pub expired: bool,
    /// Streams opened after one broke or stalled.
    pub reconnects: u64,
    /// Stretches with no renewal for longer than the TTL.
    pub lapses: Vec<Lapse>,
    /// Why the keeper stopped, if the server refused it (not retried).
    pub failed: Option<(Code, String)>,
}

/// From when the lease may have expired (the last renewal's send + TTL)
/// to when the next answered keepalive was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lapse {
    pub from: Instant,
    pub to: Instant,
}

impl KeeperState {
    /// The lease lives at least until this (None before any answer).
    pub fn alive_until(&self) -> Option<Instant> {
        let at = self.renewed_at?;
        Some(at + Duration::from_secs(self.renewed_ttl.max(0) as u64))
    }
}

/// Keeps a lease alive until dropped (dropping ends its stream).
pub struct LeaseKeeper {
    id: i64,
    state: watch::Receiver<KeeperState>,
    task: JoinHandle<()>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseKeeper {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// TTL of the last answer, in seconds.
    pub fn ttl(&self) -> i64 {
        self.state.borrow().ttl
    }

    pub fn state(&self) -> KeeperState {
        self.state.borrow().clone()
    }

    pub fn is_expired(&self) -> bool {
        self.state.borrow().expired
    }

    /// The state after its next change (a renewal, a reconnect, expiry);
    /// None once the keeper stopped and nothing more will change.
    pub async fn changed(&mut self) -> Option<KeeperState> {
        self.state.changed().await.ok()?;
        Some(self.state.borrow_and_update().clone())
    }

    /// Resolves when the server says the lease is gone (Ok), or with the
    /// error that stopped the keeper.
    pub async fn expired(&mut self) -> Result<(), ClientError> {
        let state = self
            .state
            .wait_for(|s| s.expired || s.failed.is_some())
            .await
            .map_err(|_| ClientError::Status(Status::cancelled("lease keeper ended")))?;
        stopped(&state).map_or(Ok(()), Err)
    }
}

/// The error a stopped keeper reports, or None when the lease expired.
fn stopped(state: &KeeperState) -> Option<ClientError> {
    let (code, message) = state.failed.clone()?;
    Some(ClientError::Status(Status::new(code, message)))
}

impl Client {
    /// Starts keeping lease `id` alive; answers once a first keepalive
    /// was answered (trying every member up to the retry deadline).
    /// `LeaseNotFound` if the lease does not exist.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeeper, ClientError> {
        let leader = match self.inner.endpoints.leader() {
            Some(i) => Some(i),
            None => self
                .discover_leader()
                .await
                .and(self.inner.endpoints.leader()),
        };
        let (tx, mut rx) = watch::channel(KeeperState::default());
        let task = tokio::spawn(
            Task {
                client: self.clone(),
                id,
                endpoint: leader.unwrap_or(0),
                state: tx,
            }
            .run(),
        );
        let keeper = LeaseKeeper {
            id,
            state: rx.clone(),
            task,
        };
        let first = rx.wait_for(|s| s.renewals > 0 || s.expired || s.failed.is_some());
        let state = tokio::time::timeout(self.inner.config.retry_deadline, first)
            .await
            .map_err(|_| {
                ClientError::Status(Status::deadline_exceeded("no member answered a keepalive"))
            })?
            .map_err(|_| ClientError::Status(Status::cancelled("lease keeper ended")))?
            .clone();
        if let Some(e) = stopped(&state) {
            return Err(e);
        }
        if state.expired {
            return Err(ClientError::LeaseNotFound { id });
        }
        Ok(keeper)
    }
}

/// Time between keepalives: a third of the TTL, as etcd's client.
fn interval(ttl: i64) -> Duration {
    Duration::from_millis((ttl.max(0) as u64 * 1000 / 3).max(100))
}

/// How long an unanswered keepalive may wait before the stream is given
/// up for another member's: a third of the TTL, within bounds; the
/// request timeout while the TTL is not known yet.
fn answer_timeout(ttl: i64, limit: Duration) -> Duration {
    if ttl <= 0 {
        return limit;
    }
    Duration::from_millis(ttl as u64 * 1000 / 3).clamp(Duration::from_millis(500), limit)
}

/// Short and capped, as the watch's: an election takes a few hundred ms.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((10u64 << failures.min(5)).min(300))
}

/// Refusals that another member or a retry cannot change.
fn fatal(code: Code) -> bool {
    matches!(
        code,
        Code::Unimplemented
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

struct Task {
    client: Client,
    id: i64,
    /// Index of the member the stream is (to be) on.
    endpoint: usize,
    state: watch::Sender<KeeperState>,
}

impl Task {
    async fn run(mut self) {
        let mut stream: Option<KeepAliveStream> = None;
        // The send time of the keepalive not answered yet.
        let mut outstanding: Option<Instant> = None;
        let mut next_send = Instant::now();
        let mut failures = 0u32;
        let mut opened = false;
        let limit = self.client.inner.config.request_timeout;
        loop {
            let ttl = self.state.borrow().ttl;
            let Some(s) = stream.as_mut() else {
                let generation = match self.client.auth_ready().await {
                    Ok(generation) => generation,
                    Err(e) if fatal(e.code()) => {
                        let failed = Some((e.code(), e.to_string()));
                        self.state.send_modify(|st| st.failed = failed);
                        return;
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(backoff(failures)).await;
                        continue;
                    }
                };
                let sent = Instant::now();
                let channel = self
                    .client
                    .inner
                    .endpoints
                    .get(self.endpoint)
                    .channel
                    .clone();
                let first = [self.id];
                let open = KeepAliveStream::open(channel, &first);
                match tokio::time::timeout(answer_timeout(ttl, limit), open).await {
                    Ok(Ok(s)) => {
                        stream = Some(s);
                        outstanding = Some(sent);
                        if opened {
                            self.state.send_modify(|st| st.reconnects += 1);
                        }
                        opened = true;
                    }
                    Ok(Err(status)) if self.client.token_refused(&status) => {
                        // Expired token: log in again, then reopen.
                        failures += 1;
                        let _ = self.client.auth_refresh(generation).await;
                        tokio::time::sleep(backoff(failures)).await;
                    }
                    Ok(Err(status)) if fatal(status.code()) => {
                        let failed = Some((status.code(), status.message().to_string()));
                        self.state.send_modify(|st| st.failed = failed);
                        return;
                    }
                    Ok(Err(_)) | Err(_) => {
                        failures += 1;
                        self.next_member();
                        tokio::time::sleep(backoff(failures)).await;
                    }
                }
                continue;
            };
            let wait_until = match outstanding {
                Some(sent) => sent + answer_timeout(ttl, limit),
                None => next_send,
            };
            tokio::select! {
                message = s.message() => match message {
                    Ok(Some(resp)) => {
                        let sent = outstanding.take().unwrap_or_else(Instant::now);
                        failures = 0;
                        self.answered(sent, resp.ttl);
                        if resp.ttl <= 0 {
                            return;
                        }
                        next_send = sent + interval(resp.ttl);
                    }
                    Err(status) if fatal(status.code()) => {
                        let failed = Some((status.code(), status.message().to_string()));
                        self.state.send_modify(|st| st.failed = failed);
                        return;
                    }
                    Ok(None) | Err(_) => {
                        // A member without a leader ends the stream at
                        // once: without the pause, keepers would spin
                        // through the members for the whole election.
                        tracing::debug!(lease = self.id, "keepalive stream broke; next member");
                        stream = None;
                        failures += 1;
                        self.next_member();
                        tokio::time::sleep(backoff(failures)).await;
                    }
                },
                _ = tokio::time::sleep_until(wait_until) => {
                    if outstanding.is_some() {
                        tracing::debug!(lease = self.id, "keepalive unanswered; next member");
                        stream = None;
                        failures += 1;
                        self.next_member();
                    } else if s.send(self.id).await.is_ok() {
                        outstanding = Some(Instant::now());
                    } else {
                        stream = None;
                    }
                }
            }
        }
    }

    /// Moves to the next member; forgets the cached leader if it was the
    /// one that failed, so other calls look for the new one.
    fn next_member(&mut self) {
        let endpoints = &self.client.inner.endpoints;
        if endpoints.leader() == Some(self.endpoint % endpoints.len()) {
            endpoints.set_leader(None);
        }
        self.endpoint = (self.endpoint + 1) % endpoints.len();
    }

    /// An answer to the keepalive sent at `sent`.
    fn answered(&self, sent: Instant, ttl: i64) {
        self.state.send_modify(|st| {
            if let Some(deadline) = st.alive_until() {
                if sent > deadline {
                    st.lapses.push(Lapse {
                        from: deadline,
                        to: sent,
                    });
                }
            }
            if ttl <= 0 {
                st.expired = true;
                st.ttl = 0;
                return;
            }
            st.ttl = ttl;
            st.renewed_ttl = ttl;
            st.renewed_at = Some(sent);
            st.renewals += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_go_every_third_of_the_ttl() {
        assert_eq!(interval(3), Duration::from_secs(1));
        assert_eq!(interval(10), Duration::from_millis(3333));
        assert_eq!(interval(0), Duration::from_millis(100));
        let limit = Duration::from_secs(5);
        assert_eq!(answer_timeout(3, limit), Duration::from_secs(1));
        assert_eq!(answer_timeout(1, limit), Duration::from_millis(500));
        assert_eq!(answer_timeout(60, limit), limit);
        assert_eq!(answer_timeout(0, limit), limit, "before the first answer");
    }

    #[tokio::test]
    async fn a_renewal_after_the_deadline_is_a_lapse_and_ttl_zero_expires() {
        let client = Client::connect(["127.0.0.1:1"]).unwrap();
        let (tx, rx) = watch::channel(KeeperState::default());
        let task = Task {
            client,
            id: 7,
            endpoint: 0,
            state: tx,
        };
        let t0 = Instant::now();
        task.answered(t0, 3);
        task.answered(t0 + Duration::from_secs(1), 3);
        assert!(rx.borrow().lapses.is_empty());
        assert_eq!(rx.borrow().alive_until(), Some(t0 + Duration::from_secs(4)));
        task.answered(t0 + Duration::from_secs(5), 3);
        assert_eq!(
            rx.borrow().lapses,
            vec![Lapse {
                from: t0 + Duration::from_secs(4),
                to: t0 + Duration::from_secs(5)
            }]
        );
        assert_eq!(rx.borrow().renewals, 3);
        task.answered(t0 + Duration::from_secs(6), 0);
        let state = rx.borrow().clone();
        assert!(state.expired);
        assert_eq!(state.ttl, 0);
        assert_eq!(state.renewals, 3);
        assert_eq!(
            state.alive_until(),
            Some(t0 + Duration::from_secs(8)),
            "the last renewal's guarantee outlives the expiry"
        );
        assert!(stopped(&state).is_none());
    }
}
