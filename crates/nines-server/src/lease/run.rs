//! The leader's lease loop: follows leadership, expires leases by
//! proposing their revoke (after confirming leadership with a quorum, so a
//! leader that was paused or cut off never revokes what clients kept alive
//! through a new one), and checkpoints remaining TTLs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_types::{CommandResult, RejectReason};
use tokio::sync::watch;

use crate::core::{NodeCore, Routed};
use crate::metrics::Counters;

/// How often expiry is checked: an expired lease is revoked within about
/// this much of its deadline, plus a commit.
pub const TICK: Duration = Duration::from_millis(100);
/// Revokes proposed per tick (etcd's rate is 1000/s): a mass expiry must
/// not crowd out client writes.
const REVOKES_PER_TICK: usize = 100;

pub async fn run(core: Arc<NodeCore>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        let Some(term) = core.leading_term() else {
            core.lessor.demote();
            continue;
        };
        let now = Instant::now();
        let lessor = &core.lessor;
        if !lessor.promote_if_new(term, core.applied_term(), || core.reader.leases(), now) {
            // Leading, but not caught up on what earlier terms committed.
            lessor.demote();
            continue;
        }
        lessor.sync(&core.reader.leases(), now);
        let expired = lessor.take_expired(term, now, REVOKES_PER_TICK);
        if !expired.is_empty() {
            expire(&core, term, expired).await;
        }
        let interval = core.config.lease_checkpoint_interval;
        if last_checkpoint.elapsed() >= interval {
            last_checkpoint = Instant::now();
            if let Err(e) = core.lease_checkpoint(term, interval).await {
                tracing::debug!("lease checkpoint: {e}");
            }
        }
    }
}

/// Revokes `expired` if this member still leads in `term`, confirmed by a
/// quorum now; hands back what it could not revoke.
async fn expire(core: &NodeCore, term: u64, expired: Vec<i64>) {
    let confirmed = matches!(core.linearize(true).await, Ok(Routed::Local(())))
        && core.leading_term() == Some(term);
    if !confirmed {
        tracing::info!(
            leases = expired.len(),
            "not revoking expired leases: leadership of term {term} not confirmed"
        );
        core.lessor.demote();
        return;
    }
    let revokes = expired.iter().map(|&id| async move {
        let done = core.lease_revoke(id, None, true).await;
        (id, done)
    });
    for (id, done) in futures::future::join_all(revokes).await {
        match done {
            Ok(Routed::Local(resp)) => match resp.result {
                CommandResult::LeaseRevoked { .. }
                | CommandResult::Rejected(RejectReason::LeaseNotFound(_)) => {
                    Counters::inc(&core.counters.leases_expired);
                }
                other => {
                    tracing::warn!(lease = id, "revoking an expired lease: {other:?}");
                    core.lessor.revoke_failed(id);
                }
            },
            Ok(Routed::Forward(_)) | Err(_) => core.lessor.revoke_failed(id),
        }
    }
}
