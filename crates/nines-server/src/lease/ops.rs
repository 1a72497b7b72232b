//! Lease operations of a member (no protocol types): grant and revoke go
//! through the log; keepalive and time-to-live are the leader's, since
//! only it counts down.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use nines_types::{Command, LeaseRemaining, Request, Response, Session, MAX_LEASE_TTL};
use openraft::ServerState;

use super::lessor::Renewal;
use crate::core::{NodeCore, Routed};
use crate::error::ApiError;
use crate::metrics::Counters;

/// etcd's smallest TTL with its default timings: a shorter one is raised to
/// it, so that a lease outlives a leader change.
pub const MIN_TTL: i64 = 2;

/// How many ids a grant tries when the one it picked is taken.
const PICK_ATTEMPTS: usize = 4;

/// What a leader says of a lease's time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    pub revision: i64,
    /// None if the lease is not granted (etcd answers TTL -1).
    pub lease: Option<LeaseTtl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    pub granted_ttl: i64,
    /// Seconds left, rounded up.
    pub remaining: i64,
    pub keys: Vec<Vec<u8>>,
}

/// A fresh lease id: positive, never 0, unlikely to be taken (a grant
/// that finds it taken tries another).
fn pick_id() -> i64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    match (hasher.finish() >> 1) as i64 {
        0 => 1,
        id => id,
    }
}

/// The id a grant under `session` asks for when the client left it to the
/// server: derived from the session, so that a retry of the grant is the
/// same request and the session table answers it (a fresh pick per try
/// would grant a second lease). A collision with a lease granted
/// otherwise (odds ~n/2^63) answers "lease already exists".
fn session_id(session: Session) -> i64 {
    // splitmix64's finalizer: every input bit reaches every output bit.
    let mut z = session.client_id ^ session.seq.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    match (z >> 1) as i64 {
        0 => 1,
        id => id,
    }
}

fn request(session: Option<Session>, command: Command) -> Request {
    Request { session, command }
}

impl NodeCore {
    /// The term this member leads in, if it leads.
    pub fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.server_metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader).then(|| m.vote.leader_id().get_term())
    }

    /// Where a leader-only lease call must go, when this member does not lead.
    fn to_lease_leader<T>(&self, forwarded: bool) -> Result<Routed<T>, ApiError> {
        let leader = self.leader();
        self.redirect(
            leader.as_ref().map(|(id, _)| *id),
            leader.map(|(_, node)| node),
            forwarded,
        )
    }

    /// etcd's LeaseGrant: `id` 0 lets the leader pick one; a TTL below
    /// [`MIN_TTL`] is raised to it, one above etcd's maximum refused.
    /// Under a `session` (exactly-once), a retry answers what the first
    /// try did: the same lease, granted once.
    pub async fn lease_grant(
        &self,
        id: i64,
        ttl: i64,
        session: Option<Session>,
        forwarded: bool,
    ) -> Result<Routed<Response>, ApiError> {
        if ttl > MAX_LEASE_TTL {
            return Err(ApiError::LeaseTtlTooLarge);
        }
        let ttl = ttl.max(MIN_TTL);
        let id = match (id, session) {
            (0, Some(s)) => session_id(s),
            (id, _) => id,
        };
        if id != 0 {
            let grant = request(session, Command::LeaseGrant { id, ttl });
            let done = self.write(grant, forwarded).await?;
            self.count_down_granted(&done);
            return Ok(done);
        }
        // Picked on the leader only: a follower forwards the request as is.
        if self.leading_term().is_none() {
            return self.to_lease_leader(forwarded);
        }
        let mut last = None;
        for _ in 0..PICK_ATTEMPTS {
            let command = Command::LeaseGrant { id: pick_id(), ttl };
            match self.write(Request::new(command), forwarded).await? {
                Routed::Local(Response {
                    result:
                        nines_types::CommandResult::Rejected(nines_types::RejectReason::LeaseExists(_)),
                    ..
                }) => {}
                done => {
                    self.count_down_granted(&done);
                    return Ok(done);
                }
            }
            last = Some(ApiError::LeaseExists);
        }
        Err(last.unwrap_or(ApiError::LeaseExists))
    }

    /// etcd's LeaseRevoke: the lease and its keys go in one revision.
    /// Under a `session`, a retry of a revoke that was applied answers as
    /// the first try did, not "lease not found".
    pub async fn lease_revoke(
        &self,
        id: i64,
        session: Option<Session>,
        forwarded: bool,
    ) -> Result<Routed<Response>, ApiError> {
        let done = self
            .write(request(session, Command::LeaseRevoke { id }), forwarded)
            .await?;
        if let Routed::Local(Response {
            result:
                nines_types::CommandResult::LeaseRevoked { .. }
                | nines_types::CommandResult::Rejected(nines_types::RejectReason::LeaseNotFound(_)),
            ..
        }) = &done
        {
            self.lessor.revoked(id);
        }
        Ok(done)
    }

    /// A grant applied here starts its countdown now (see `Lessor::granted`).
    fn count_down_granted(&self, done: &Routed<Response>) {
        if let Routed::Local(Response {
            result: nines_types::CommandResult::LeaseGranted { id, ttl },
            ..
        }) = done
        {
            self.lessor.granted(*id, *ttl, Instant::now());
        }
    }

    /// Confirms this member still leads in `term` with a quorum, and that
    /// it applied what it committed before: so a lease granted before is
    /// known, and a deposed leader (paused, cut off) never answers for
    /// leases a new leader counts down.
    async fn confirm_leading(&self, term: u64) -> Result<(), ApiError> {
        // A leader's read index is at least its term's first entry, so once
        // it is applied the lease table is current and counting can start.
        let confirmed = matches!(self.linearize(true).await?, Routed::Local(()))
            && self.leading_term() == Some(term)
            && self.lessor.promote_if_new(
                term,
                self.applied_term(),
                || self.reader.leases(),
                Instant::now(),
            );
        if confirmed {
            Ok(())
        } else {
            Err(self.leader_changed())
        }
    }

    /// The term of the last entry this member applied (0 before any).
    pub fn applied_term(&self) -> u64 {
        self.reader
            .last_applied()
            .map_or(0, |l| l.leader_id.get_term())
    }

    /// etcd's keepalive: restarts lease `id`'s countdown on the leader and
    /// answers its TTL; 0 if the lease is not granted (or expiring).
    /// Returns the revision the answer is current to, and the TTL.
    pub async fn lease_renew(
        &self,
        id: i64,
        forwarded: bool,
    ) -> Result<Routed<(i64, i64)>, ApiError> {
        let Some(term) = self.leading_term() else {
            return self.to_lease_leader(forwarded);
        };
        self.confirm_leading(term).await?;
        let revision = self.reader.revision();
        let (ttl, clearing) = {
            let mut order = self.lessor.order();
            let Some(info) = self.reader.lease(id) else {
                return Ok(Routed::Local((revision, 0)));
            };
            match self.lessor.renew(term, id, info.ttl, Instant::now()) {
                // A recorded remaining TTL, or one a queued checkpoint may
                // still record, predates this keepalive: clear it before
                // answering, so that a new leader never counts down from
                // less than this keepalive promised (etcd does the same,
                // without waiting). At most once per lease per checkpoint
                // interval, or while a checkpoint is in flight.
                Renewal::Renewed if info.remaining > 0 || order.unsettled(term) => {
                    let clear = vec![LeaseRemaining { id, remaining: 0 }];
                    let queued = self.submit_checkpoint(term, clear)?;
                    (info.ttl, Some((order.queued(term, false), queued)))
                }
                Renewal::Renewed => (info.ttl, None),
                Renewal::Expiring => return Ok(Routed::Local((revision, 0))),
                Renewal::NotLeading => return Err(self.leader_changed()),
            }
        };
        if let Some((seq, clearing)) = clearing {
            self.settle(term, seq, clearing).await?;
            // Applied only from an entry of `term`: if this member no
            // longer leads in it, the clearing may have been skipped.
            if self.leading_term() != Some(term) {
                return Err(self.leader_changed());
            }
        }
        Ok(Routed::Local((revision, ttl)))
    }

    /// etcd's LeaseTimeToLive, answered by the leader.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
        forwarded: bool,
    ) -> Result<Routed<TimeToLive>, ApiError> {
        let Some(term) = self.leading_term() else {
            return self.to_lease_leader(forwarded);
        };
        self.confirm_leading(term).await?;
        let revision = self.reader.revision();
        let lease = self.reader.lease(id).map(|info| {
            let left = self.lessor.remaining(id, Instant::now());
            LeaseTtl {
                granted_ttl: info.ttl,
                remaining: left.map_or(info.ttl, |d| d.as_secs_f64().ceil() as i64),
                keys: if keys {
                    self.reader.lease_keys(id)
                } else {
                    Vec::new()
                },
            }
        });
        Ok(Routed::Local(TimeToLive { revision, lease }))
    }

    /// Records the leader's remaining TTLs in the log as the leader of
    /// `term`, in commands of at most etcd's batch size.
    pub async fn lease_checkpoint(&self, term: u64, interval: Duration) -> Result<(), ApiError> {
        let queued = {
            let mut order = self.lessor.order();
            if self.lessor.leading() != Some(term) {
                // The countdowns are another term's now, or none.
                return Ok(());
            }
            let list = self.lessor.checkpoints(Instant::now(), interval);
            let mut queued = Vec::new();
            for chunk in list.chunks(nines_types::MAX_CHECKPOINT_LEASES) {
                match self.submit_checkpoint(term, chunk.to_vec()) {
                    Ok(done) => queued.push(Ok((order.queued(term, true), done))),
                    // Those queued before it are still waited for.
                    Err(e) => {
                        queued.push(Err(e));
                        break;
                    }
                }
            }
            queued
        };
        for next in queued {
            let (seq, done) = next?;
            self.settle(term, seq, done).await?;
            Counters::inc(&self.counters.lease_checkpoints);
        }
        Ok(())
    }

    /// Waits for the lease command `seq` of `term` and records it applied
    /// (see `Order::applied`).
    async fn settle(
        &self,
        term: u64,
        seq: u64,
        done: impl Future<Output = Result<Routed<Response>, ApiError>>,
    ) -> Result<(), ApiError> {
        match done.await? {
            Routed::Local(_) => {
                self.lessor.order().applied(term, seq);
                Ok(())
            }
            Routed::Forward(_) => Err(self.leader_changed()),
        }
    }

    fn leader_changed(&self) -> ApiError {
        ApiError::LeaderChanged {
            leader: self.leader(),
        }
    }

    /// Queues a `LeaseCheckpointOf` of `term` (see `Lessor::order`).
    fn submit_checkpoint(
        &self,
        term: u64,
        list: Vec<LeaseRemaining>,
    ) -> Result<impl Future<Output = Result<Routed<Response>, ApiError>> + Send + '_, ApiError>
    {
        let command = Command::LeaseCheckpointOf { term, list };
        self.submit_write(Request::new(command), true)
    }
}
