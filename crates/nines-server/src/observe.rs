//! What a stalled node says about itself: leader and state changes as
//! openraft reports them, each logged with the node's view (term, leader,
//! last log, applied), plus the rate limiter every repeated warning here
//! goes through, so a failure that hits every request is said once per
//! interval with a count, not once per request.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nines_types::{Node, NodeId, Raft};
use openraft::{RaftMetrics, ServerState};
use tokio::sync::watch;

use crate::election::Election;
use crate::metrics::Counters;

/// How often one kind of repeated warning is said.
pub const SAY_EVERY: Duration = Duration::from_secs(10);
/// How often the watcher looks at time-based conditions.
const TICK: Duration = Duration::from_secs(1);
/// A tick this late says the process stalled.
const LATE_TICK: Duration = Duration::from_secs(1);
/// A leaderless stretch longer than this is worth a line.
const LEADERLESS_WARN: Duration = Duration::from_secs(3);
/// How often time without a leader in contact is accounted: losing
/// contact is a timeout, not an event openraft reports.
const CONTACT_POLL: Duration = Duration::from_millis(100);

/// This node's view of the cluster, for log lines.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub id: NodeId,
    pub state: Option<ServerState>,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    pub quorum_ack_ms: Option<u64>,
}

impl View {
    pub fn of(m: &RaftMetrics<NodeId, Node>) -> View {
        View {
            id: m.id,
            state: Some(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            quorum_ack_ms: m.millis_since_quorum_ack,
        }
    }

    pub fn of_raft(raft: &Raft) -> View {
        View::of(&raft.metrics().borrow())
    }
}

/// "-" for none: a log line reads better than `None`.
struct Opt(Option<u64>);

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("-"),
        }
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.map(state_name).unwrap_or("-");
        write!(
            f,
            "node {} {state} term {} leader {} last_log {} applied {}",
            self.id,
            self.term,
            Opt(self.leader),
            Opt(self.last_log),
            Opt(self.applied),
        )?;
        if let Some(ms) = self.quorum_ack_ms {
            write!(f, " quorum_ack {ms}ms ago")?;
        }
        Ok(())
    }
}

pub fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The `nines_raft_state` gauge's encoding.
pub fn state_code(state: ServerState) -> u64 {
    match state {
        ServerState::Follower => 0,
        ServerState::Candidate => 1,
        ServerState::Leader => 2,
        ServerState::Learner => 3,
        ServerState::Shutdown => 4,
    }
}

/// Milliseconds on a monotonic clock, never 0: a gauge holding "started
/// at" uses 0 for "nothing in flight".
pub fn mono_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Age of something started at `started` (a `mono_ms` value, 0 = none).
pub fn age_ms(started: &AtomicU64) -> u64 {
    match started.load(Ordering::Relaxed) {
        0 => 0,
        t => mono_ms().saturating_sub(t),
    }
}

/// Says each kind of message at most once per interval and counts the
/// repeats held back in between.
pub struct Limiter {
    every: Duration,
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Limiter {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            kinds: Mutex::default(),
        }
    }

    /// Some(repeats suppressed since it was last said) when `kind` may be
    /// said now; None when it was said within the interval.
    pub fn say(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match kinds.get_mut(kind) {
            Some((last, suppressed)) if now.duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

static LIMITER: LazyLock<Limiter> = LazyLock::new(|| Limiter::new(SAY_EVERY));

/// The process-wide limiter: `if let Some(suppressed) = say("kind") { log }`.
pub fn say(kind: &'static str) -> Option<u64> {
    LIMITER.say(kind)
}

/// What the watcher remembers between two metrics updates.
struct Seen {
    state: ServerState,
    leader: Option<NodeId>,
    /// The last leader known, across leaderless stretches.
    last_known_leader: Option<NodeId>,
    /// Start of the current stretch without a leader as openraft reports
    /// it (for the log line when one is known again).
    leaderless_start: Option<Instant>,
    /// The current stretch without a leader in contact (`leader_contact`).
    outage: Option<Outage>,
    /// When the last such stretch ended: the next one never starts before
    /// it, so no time is counted twice.
    outage_end: Instant,
}

/// A stretch without a leader in contact.
struct Outage {
    start: Instant,
    /// How far the stretch is already in `leaderless_ms`.
    counted: Instant,
}

impl Seen {
    fn new(state: ServerState, now: Instant) -> Seen {
        Seen {
            state,
            leader: None,
            last_known_leader: None,
            leaderless_start: Some(now),
            outage: None,
            outage_end: now,
        }
    }
}

/// Ok if this node has a leader it is in contact with (as `/readyz` and
/// `NodeCore::write` judge contact: within `limit`); otherwise how long it
/// has been without one, as far as it can tell.
///
/// A leader id known to openraft is not enough. With the pre-vote, a
/// follower whose leader died keeps that leader's id until another one
/// wins, which a member left without a quorum never sees; and a leader
/// keeps its role without a quorum (openraft 0.9 has no CheckQuorum).
/// Either way nothing can be written, so it counts as no leader.
fn leader_contact(
    m: &RaftMetrics<NodeId, Node>,
    since_contact: Duration,
    limit: Duration,
) -> Result<(), Duration> {
    match m.current_leader {
        // Without a leader since the last contact with one (an election
        // starts a while after the leader went silent).
        None => Err(since_contact),
        Some(leader) if leader == m.id => match m.millis_since_quorum_ack {
            Some(ms) if Duration::from_millis(ms) <= limit => Ok(()),
            Some(ms) => Err(Duration::from_millis(ms)),
            // Just elected: nothing commits before the first quorum ack.
            None => Err(Duration::ZERO),
        },
        Some(_) if since_contact <= limit => Ok(()),
        Some(_) => Err(since_contact),
    }
}

/// Accounts time without a leader in contact: `has_leader`,
/// `leaderless_ms` and `leaderless_stretch`, as of `now`.
fn on_poll(contact: Result<(), Duration>, seen: &mut Seen, counters: &Counters, now: Instant) {
    if let (Err(without), None) = (contact, &seen.outage) {
        let start = now.checked_sub(without).unwrap_or(now).max(seen.outage_end);
        seen.outage = Some(Outage {
            start,
            counted: start,
        });
    }
    if let Some(outage) = seen.outage.as_mut() {
        let ms = now.saturating_duration_since(outage.counted).as_millis() as u64;
        counters.leaderless_ms.fetch_add(ms, Ordering::Relaxed);
        outage.counted = now;
        let stretch = now.saturating_duration_since(outage.start).as_millis() as u64;
        counters
            .leaderless_stretch
            .store(stretch, Ordering::Relaxed);
    }
    if contact.is_ok() && seen.outage.take().is_some() {
        seen.outage_end = now;
        counters.leaderless_stretch.store(0, Ordering::Relaxed);
    }
    counters
        .has_leader
        .store(contact.is_ok() as u64, Ordering::Relaxed);
}

/// Follows openraft's metrics for the node's lifetime: logs and counts
/// every leader and state change, accumulates time without a leader in
/// contact (`contact`: when this follower last heard from one), and warns
/// while a leader has not heard from a quorum for `quorum_limit_ms`.
pub async fn watch_raft(
    raft: Raft,
    counters: Arc<Counters>,
    contact: Arc<Election>,
    quorum_limit_ms: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let metrics = raft.metrics();
    // Woken by the server metrics (role, leader, vote, membership) only:
    // the full metrics change with every append, commit, apply and
    // replication ack, and RaftCore paid a thread wakeup (futex) for each
    // while this task waited on them, 4% of the members' CPU under load.
    let mut server = raft.server_metrics();
    let now = Instant::now();
    let mut seen = {
        let m = metrics.borrow();
        tracing::info!(view = %View::of(&m), "raft view at start");
        counters
            .raft_state
            .store(state_code(m.state), Ordering::Relaxed);
        Seen::new(m.state, now)
    };
    let limit = Duration::from_millis(quorum_limit_ms);
    let mut poll = tokio::time::interval(CONTACT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first update compares against "no leader yet".
    on_update(&metrics.borrow(), &mut seen, &counters);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            changed = server.changed() => {
                if changed.is_err() {
                    return;
                }
                on_update(&current(&raft, &mut server), &mut seen, &counters);
            }
            _ = poll.tick() => {
                let in_contact = leader_contact(&metrics.borrow(), contact.contact.since(), limit);
                on_poll(in_contact, &mut seen, &counters, Instant::now());
            }
            _ = tick.tick() => {
                ticks += 1;
                let now = Instant::now();
                note_late_tick(now.duration_since(last_tick), &counters);
                last_tick = now;
                on_tick(&metrics.borrow(), &seen, quorum_limit_ms);
                if ticks.is_multiple_of(SAY_EVERY.as_secs().max(1)) {
                    crate::log_repeats::report_suppressed();
                }
            }
            res = stopped.changed() => {
                if res.is_err() || *stopped.borrow() {
                    return;
                }
            }
        }
    }
}

/// The full metrics with the role, leader and vote of the server metrics
/// just seen: RaftCore sends the full metrics after the server metrics, so
/// they may still hold the state before the change that woke us.
fn current(
    raft: &Raft,
    server: &mut watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, Node>>,
) -> RaftMetrics<NodeId, Node> {
    let mut m = raft.metrics().borrow().clone();
    let s = server.borrow_and_update();
    m.state = s.state;
    m.current_leader = s.current_leader;
    m.current_term = m.current_term.max(s.vote.leader_id().get_term());
    m.vote = s.vote;
    m
}

/// A 1 s timer that fires seconds late means nothing on this runtime ran:
/// CPU starvation, a blocking call on an async worker, swap, or SIGSTOP.
/// Every request on the node stalled with it, and nothing else can say so.
fn note_late_tick(since_last: Duration, counters: &Counters) {
    let late = since_last.saturating_sub(TICK);
    if late < LATE_TICK {
        return;
    }
    Counters::inc(&counters.runtime_stalls);
    if let Some(suppressed) = say("runtime_stall") {
        tracing::warn!(
            suppressed,
            "this node was not scheduled for {} ms (a 1 s timer fired late): \
             CPU starvation, a blocking call on the runtime, swap or SIGSTOP",
            late.as_millis()
        );
    }
}

fn on_update(m: &RaftMetrics<NodeId, Node>, seen: &mut Seen, counters: &Counters) {
    if m.state != seen.state {
        let view = View::of(m);
        let from = state_name(seen.state);
        match (seen.state, m.state) {
            (_, ServerState::Leader) => {
                Counters::inc(&counters.became_leader);
                tracing::info!(view = %view, "became leader (was {from})");
            }
            (ServerState::Leader, to) => {
                Counters::inc(&counters.stepped_down);
                tracing::info!(view = %view, "stepped down: leader -> {}", state_name(to));
            }
            (_, to) => tracing::info!(view = %view, "state {from} -> {}", state_name(to)),
        }
        seen.state = m.state;
        counters
            .raft_state
            .store(state_code(m.state), Ordering::Relaxed);
    }
    if m.current_leader != seen.leader {
        let view = View::of(m);
        // Through a leaderless stretch, "from" is the last leader known.
        let (from, to) = (
            Opt(seen.leader.or(seen.last_known_leader)),
            Opt(m.current_leader),
        );
        let now = Instant::now();
        match m.current_leader {
            Some(leader) => {
                let changed = seen.last_known_leader != Some(leader);
                if changed {
                    Counters::inc(&counters.leader_changes);
                }
                let what = if changed {
                    "leader changed"
                } else {
                    "leader again"
                };
                seen.last_known_leader = Some(leader);
                match seen.leaderless_start.take() {
                    Some(start) => tracing::info!(
                        view = %view,
                        "{what} {from} -> {to} after {} ms without one",
                        now.duration_since(start).as_millis()
                    ),
                    None => tracing::info!(view = %view, "{what} {from} -> {to}"),
                }
            }
            None => {
                seen.leaderless_start = Some(now);
                tracing::info!(view = %view, "leader lost: {from} -> none");
            }
        }
        seen.leader = m.current_leader;
    }
}

fn on_tick(m: &RaftMetrics<NodeId, Node>, seen: &Seen, quorum_limit_ms: u64) {
    if let Some(outage) = &seen.outage {
        let stretch = Instant::now().saturating_duration_since(outage.start);
        if stretch >= LEADERLESS_WARN {
            if let Some(suppressed) = say("no_leader") {
                tracing::warn!(
                    view = %View::of(m),
                    suppressed,
                    "no leader in contact for {} ms",
                    stretch.as_millis()
                );
            }
        }
    }
    if m.state == ServerState::Leader {
        if let Some(ms) = m.millis_since_quorum_ack.filter(|ms| *ms > quorum_limit_ms) {
            if let Some(suppressed) = say("leader_without_quorum") {
                tracing::warn!(
                    view = %View::of(m),
                    suppressed,
                    "leader has heard from no quorum for {ms} ms: writes are refused until it does"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_says_once_per_interval_and_counts_the_rest() {
        let limiter = Limiter::new(Duration::from_millis(200));
        assert_eq!(limiter.say("a"), Some(0));
        assert_eq!(limiter.say("a"), None);
        assert_eq!(limiter.say("a"), None);
        assert_eq!(limiter.say("b"), Some(0), "kinds are limited apart");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limiter.say("a"), Some(2));
    }

    #[test]
    fn leader_and_state_changes_are_counted() {
        let counters = Counters::default();
        let mut m = RaftMetrics::<NodeId, Node>::new_initial(1);
        let mut seen = Seen::new(m.state, Instant::now());
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut step = |m: &RaftMetrics<NodeId, Node>| on_update(m, &mut seen, &counters);

        m.current_leader = Some(3);
        step(&m);
        assert_eq!(get(&counters.leader_changes), 1);
        // Lost, then the same leader again: not a change.
        m.current_leader = None;
        step(&m);
        m.current_leader = Some(3);
        step(&m);
        assert_eq!(get(&counters.leader_changes), 1);
        // This node wins the next election, then steps down.
        m.current_leader = None;
        m.state = ServerState::Candidate;
        step(&m);
        m.current_leader = Some(1);
        m.state = ServerState::Leader;
        step(&m);
        assert_eq!(get(&counters.leader_changes), 2);
        assert_eq!(get(&counters.became_leader), 1);
        assert_eq!(get(&counters.raft_state), state_code(ServerState::Leader));
        m.state = ServerState::Follower;
        m.current_leader = Some(2);
        step(&m);
        assert_eq!(get(&counters.stepped_down), 1);
        assert_eq!(get(&counters.leader_changes), 3);
        assert_eq!(get(&counters.raft_state), 0);
    }

    #[test]
    fn a_leader_counts_only_in_contact() {
        let limit = Duration::from_millis(600);
        let ms = Duration::from_millis;
        let mut m = RaftMetrics::<NodeId, Node>::new_initial(1);
        assert_eq!(leader_contact(&m, ms(50), limit), Err(ms(50)));
        // A follower: its leader must have been heard from within the limit.
        m.current_leader = Some(2);
        assert_eq!(leader_contact(&m, ms(100), limit), Ok(()));
        assert_eq!(leader_contact(&m, ms(700), limit), Err(ms(700)));
        // A leader: its quorum must have acknowledged it within the limit.
        m.current_leader = Some(1);
        m.state = ServerState::Leader;
        assert_eq!(leader_contact(&m, ms(9000), limit), Err(Duration::ZERO));
        m.millis_since_quorum_ack = Some(20);
        assert_eq!(leader_contact(&m, ms(9000), limit), Ok(()));
        m.millis_since_quorum_ack = Some(2000);
        assert_eq!(leader_contact(&m, ms(0), limit), Err(ms(2000)));
    }

    #[test]
    fn time_without_a_leader_in_contact_is_counted_once() {
        let counters = Counters::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut seen = Seen::new(ServerState::Follower, t0);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ms = Duration::from_millis;
        on_poll(Ok(()), &mut seen, &counters, at(1000));
        assert_eq!(get(&counters.has_leader), 1);
        assert_eq!(get(&counters.leaderless_ms), 0);
        // Contact lost at 1400 ms, noticed at 2100 ms: counted from 1400.
        on_poll(Err(ms(700)), &mut seen, &counters, at(2100));
        assert_eq!(get(&counters.has_leader), 0);
        assert_eq!(get(&counters.leaderless_ms), 700);
        on_poll(Err(ms(800)), &mut seen, &counters, at(2200));
        assert_eq!(get(&counters.leaderless_ms), 800);
        assert_eq!(get(&counters.leaderless_stretch), 800);
        on_poll(Ok(()), &mut seen, &counters, at(2300));
        assert_eq!(get(&counters.has_leader), 1);
        assert_eq!(get(&counters.leaderless_ms), 900);
        assert_eq!(get(&counters.leaderless_stretch), 0);
        on_poll(Ok(()), &mut seen, &counters, at(5000));
        assert_eq!(get(&counters.leaderless_ms), 900, "stopped rising");
        // A new stretch that claims to reach back before the last one
        // ended starts where that one ended.
        on_poll(Err(ms(10_000)), &mut seen, &counters, at(5100));
        assert_eq!(get(&counters.leaderless_ms), 900 + 2800);
    }

    #[test]
    fn view_reads_as_a_line() {
        let mut m = RaftMetrics::<NodeId, Node>::new_initial(2);
        m.current_term = 7;
        m.current_leader = Some(2);
        m.state = ServerState::Leader;
        m.last_log_index = Some(10);
        m.millis_since_quorum_ack = Some(12);
        assert_eq!(
            View::of(&m).to_string(),
            "node 2 leader term 7 leader 2 last_log 10 applied - quorum_ack 12ms ago"
        );
    }
}
