//! The leader's lease countdowns. Pure bookkeeping (time is passed in), so
//! the rules are tested without a cluster:
//! - only a member leading in a term counts down, and only for that term;
//! - a new leader starts every lease from its last checkpointed remaining
//!   TTL (its TTL if never checkpointed), plus `extend` for clients to
//!   find it: never from a TTL that had already run, never all at once;
//! - a keepalive restarts a lease's countdown from its TTL;
//! - an expired lease is handed out once for revoking, and handed out
//!   again only if that revoke failed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nines_state::LeaseInfo;
use nines_types::LeaseRemaining;

#[derive(Debug, Clone, Copy)]
struct Countdown {
    expiry: Instant,
    ttl: i64,
    /// A revoke of it is proposed and not answered yet.
    revoking: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The term this member leads in and counts down for.
    term: Option<u64>,
    leases: HashMap<i64, Countdown>,
    /// The countdowns of the term it last stopped counting for: taken up
    /// again if it counts for that term once more (see `promote`).
    kept: Option<(u64, HashMap<i64, Countdown>)>,
}

/// What a keepalive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The lease expired and its revoke is under way (etcd answers TTL 0).
    Expiring,
    /// This member no longer leads in the term the caller confirmed.
    NotLeading,
}

/// The lease commands (checkpoints, keepalive clearings) of one term in
/// the order they were queued. They reach the log in that order, so once
/// one of them is applied, each queued before it is applied too or will
/// never be (dropped, or refused with the term). While a checkpoint may
/// still land, a keepalive clears the lease's recorded remaining TTL even
/// if the applied table shows none: the checkpoint would record one older
/// than the keepalive.
#[derive(Debug, Default)]
pub struct Order {
    term: u64,
    /// Sequence numbers of the term's commands: the last one queued, the
    /// last checkpoint queued, and the highest one applied.
    queued: u64,
    checkpoint: u64,
    applied: u64,
}

impl Order {
    /// A command of `term` is queued; answers its sequence number.
    pub fn queued(&mut self, term: u64, is_checkpoint: bool) -> u64 {
        if term < self.term {
            // Ignored at apply: nothing to order it with.
            return 0;
        }
        if term > self.term {
            // An older term's commands are ignored at apply from now on.
            *self = Order {
                term,
                ..Order::default()
            };
        }
        self.queued += 1;
        if is_checkpoint {
            self.checkpoint = self.queued;
        }
        self.queued
    }

    /// The command `seq` of `term` is applied (and with it every one of
    /// the term queued before it).
    pub fn applied(&mut self, term: u64, seq: u64) {
        if term == self.term {
            self.applied = self.applied.max(seq);
        }
    }

    /// Whether a checkpoint of `term` may still land.
    pub fn unsettled(&self, term: u64) -> bool {
        term == self.term && self.checkpoint > self.applied
    }
}

#[derive(Debug)]
pub struct Lessor {
    /// Held by a periodic checkpoint from reading the countdowns until its
    /// commands are queued, and by a keepalive from renewing until its
    /// clearing is queued: commands of one term reach the log in the order
    /// they were queued, so a checkpoint taken before a renewal never lands
    /// after the renewal's clearing (a new leader would then count down
    /// from a remaining TTL older than the keepalive). Neither waits for a
    /// commit under it; a keepalive while a checkpoint may still land waits
    /// for its own clearing, queued behind it (see `Order`).
    order: Mutex<Order>,
    state: Mutex<State>,
    /// Added to every countdown a new leader starts.
    extend: Duration,
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// Where a lease's countdown starts on a leader that did not renew it.
fn start(info: &LeaseInfo) -> i64 {
    if info.remaining > 0 {
        info.remaining.min(info.ttl)
    } else {
        info.ttl
    }
}

/// A kept countdown of `id` belongs to a lease that is gone now.
fn forget_kept(state: &mut State, id: i64) {
    if let Some((_, kept)) = state.kept.as_mut() {
        kept.remove(&id);
    }
}

impl Lessor {
    pub fn new(extend: Duration) -> Self {
        Self {
            order: Mutex::new(Order::default()),
            state: Mutex::new(State::default()),
            extend,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See `Lessor::order`. Taken before the countdowns' lock, never after.
    pub fn order(&self) -> std::sync::MutexGuard<'_, Order> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The term this member counts down for, if it leads.
    pub fn leading(&self) -> Option<u64> {
        self.lock().term
    }

    /// Starts counting down as the leader of `term`, from the applied
    /// leases. Nothing happens if it already counts for `term`.
    pub fn promote(&self, term: u64, table: &[LeaseInfo], now: Instant) {
        let mut state = self.lock();
        if state.term == Some(term) {
            return;
        }
        // Counting for the term it stopped counting for (a leadership
        // confirmation failed, then succeeded, in one term): the table may
        // not show yet a keepalive's clearing of a recorded remaining TTL
        // (its commit may be pending), but the countdown it kept does, so
        // that goes on; at least `extend`, for clients that were turned
        // away meanwhile. Its revoke marks go: none is under way then.
        let kept = match state.kept.take() {
            Some((kept_term, leases)) if kept_term == term => leases,
            _ => HashMap::new(),
        };
        state.term = Some(term);
        state.leases = table
            .iter()
            .map(|info| {
                let countdown = match kept.get(&info.id) {
                    Some(c) => Countdown {
                        expiry: c.expiry.max(now + self.extend),
                        ttl: c.ttl,
                        revoking: false,
                    },
                    None => Countdown {
                        expiry: now + secs(start(info)) + self.extend,
                        ttl: info.ttl,
                        revoking: false,
                    },
                };
                (info.id, countdown)
            })
            .collect();
    }

    /// `promote`, reading the table only if `term` is new to it, and only
    /// once this member has applied an entry of `term` (`applied_term` is
    /// the term of its last applied entry): before that, entries committed
    /// in earlier terms may still be unapplied here, among them the
    /// keepalive's clearing of a recorded remaining TTL, and counting from
    /// the older record would revoke a kept-alive lease early. Says whether
    /// it counts for `term`.
    pub fn promote_if_new(
        &self,
        term: u64,
        applied_term: u64,
        table: impl FnOnce() -> Vec<LeaseInfo>,
        now: Instant,
    ) -> bool {
        if self.leading() == Some(term) {
            return true;
        }
        if applied_term < term {
            return false;
        }
        self.promote(term, &table(), now);
        true
    }

    /// Stops counting down: this member no longer leads.
    pub fn demote(&self) {
        let mut state = self.lock();
        if let Some(term) = state.term.take() {
            let leases = std::mem::take(&mut state.leases);
            state.kept = Some((term, leases));
        }
    }

    /// Follows the applied leases: a lease granted since starts from its
    /// TTL (or checkpoint), a revoked one is forgotten.
    pub fn sync(&self, table: &[LeaseInfo], now: Instant) {
        let mut state = self.lock();
        if state.term.is_none() {
            return;
        }
        if state.leases.len() != table.len()
            || table.iter().any(|i| !state.leases.contains_key(&i.id))
        {
            let mut next = HashMap::with_capacity(table.len());
            for info in table {
                let countdown = state.leases.get(&info.id).copied().unwrap_or(Countdown {
                    expiry: now + secs(start(info)),
                    ttl: info.ttl,
                    revoking: false,
                });
                next.insert(info.id, countdown);
            }
            state.leases = next;
        }
    }

    /// Restarts lease `id`'s countdown from `ttl`, if this member still
    /// leads in `term`. The caller confirmed leadership and that the lease
    /// is granted.
    pub fn renew(&self, term: u64, id: i64, ttl: i64, now: Instant) -> Renewal {
        let mut state = self.lock();
        if state.term != Some(term) {
            return Renewal::NotLeading;
        }
        let countdown = state.leases.entry(id).or_insert(Countdown {
            expiry: now,
            ttl,
            revoking: false,
        });
        // A lease being revoked is not brought back: the revoke decides.
        if countdown.revoking {
            return Renewal::Expiring;
        }
        countdown.expiry = now + secs(ttl);
        countdown.ttl = ttl;
        Renewal::Renewed
    }

    /// Time left on lease `id`, if this member counts it down.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        let state = self.lock();
        state.term?;
        state
            .leases
            .get(&id)
            .map(|c| c.expiry.saturating_duration_since(now))
    }

    /// Up to `max` expired leases to revoke in `term`, marked as being
    /// revoked.
    pub fn take_expired(&self, term: u64, now: Instant, max: usize) -> Vec<i64> {
        let mut state = self.lock();
        if state.term != Some(term) {
            return Vec::new();
        }
        let mut expired: Vec<(Instant, i64)> = state
            .leases
            .iter()
            .filter(|(_, c)| !c.revoking && c.expiry <= now)
            .map(|(&id, c)| (c.expiry, id))
            .collect();
        // The longest expired go first.
        expired.sort_unstable();
        expired.truncate(max);
        for (_, id) in &expired {
            if let Some(c) = state.leases.get_mut(id) {
                c.revoking = true;
            }
        }
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// A grant this member applied as leader: lease `id` counts down from
    /// `ttl` now. `sync` sees only which ids are granted, so a revoke and a
    /// new grant of one id between two syncs looked like no change, and the
    /// old lease's countdown went on: its early expiry, or its mark of being
    /// revoked, so that the new lease never expired here and every
    /// keepalive of it was answered TTL 0.
    pub fn granted(&self, id: i64, ttl: i64, now: Instant) {
        let mut state = self.lock();
        forget_kept(&mut state, id);
        if state.term.is_some() {
            let countdown = Countdown {
                expiry: now + secs(ttl),
                ttl,
                revoking: false,
            };
            state.leases.insert(id, countdown);
        }
    }

    /// A revoke this member applied as leader: lease `id` is gone.
    pub fn revoked(&self, id: i64) {
        let mut state = self.lock();
        forget_kept(&mut state, id);
        state.leases.remove(&id);
    }

    /// A revoke that did not happen (timeout, lost leadership): the lease
    /// is handed out again once it is due.
    pub fn revoke_failed(&self, id: i64) {
        if let Some(c) = self.lock().leases.get_mut(&id) {
            c.revoking = false;
        }
    }

    /// Remaining TTLs worth recording: of leases whose TTL is longer than
    /// `interval` (for shorter ones, a new leader restarting the full TTL
    /// overshoots by less than a checkpoint would).
    pub fn checkpoints(&self, now: Instant, interval: Duration) -> Vec<LeaseRemaining> {
        let state = self.lock();
        if state.term.is_none() {
            return Vec::new();
        }
        let mut list: Vec<LeaseRemaining> = state
            .leases
            .iter()
            .filter(|(_, c)| !c.revoking && secs(c.ttl) > interval)
            .map(|(&id, c)| LeaseRemaining {
                id,
                // Rounded up: a checkpoint must not shorten a lease.
                remaining: c.expiry.saturating_duration_since(now).as_secs_f64().ceil() as i64,
            })
            .filter(|c| c.remaining > 0)
            .collect();
        list.sort_unstable_by_key(|c| c.id);
        list
    }
}
