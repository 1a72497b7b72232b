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

use crate::metrics::Counters;

/// How often one kind of repeated warning is said.
pub const SAY_EVERY: Duration = Duration::from_secs(10);
/// How often the watcher looks at time-based conditions.
const TICK: Duration = Duration::from_secs(1);
/// A tick this late says the process stalled.
const LATE_TICK: Duration = Duration::from_secs(1);
/// A leaderless stretch longer than this is worth a line.
const LEADERLESS_WARN: Duration = Duration::from_secs(3);

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
    /// Start of the current stretch without a leader.
    leaderless_start: Option<Instant>,
    /// How far that stretch is already in `leaderless_ms`.
    leaderless_counted: Option<Instant>,
}

impl Seen {
    /// Moves the uncounted part of a leaderless stretch into the total.
    fn count_leaderless(&mut self, counters: &Counters, now: Instant) {
        if let Some(counted) = self.leaderless_counted.as_mut() {
            let ms = now.duration_since(*counted).as_millis() as u64;
            counters.leaderless_ms.fetch_add(ms, Ordering::Relaxed);
            *counted = now;
        }
    }
}

/// Follows openraft's metrics for the node's lifetime: logs and counts
/// every leader and state change, accumulates time without a leader, and
/// warns while a leader has not heard from a quorum for `quorum_limit_ms`.
pub async fn watch_raft(
    raft: Raft,
    counters: Arc<Counters>,
    quorum_limit_ms: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    let now = Instant::now();
    let mut seen = {
        let m = metrics.borrow_and_update();
        tracing::info!(view = %View::of(&m), "raft view at start");
        counters
            .raft_state
            .store(state_code(m.state), Ordering::Relaxed);
        Seen {
            state: m.state,
            leader: None,
            last_known_leader: None,
            leaderless_start: Some(now),
            leaderless_counted: Some(now),
        }
    };
    // The first update compares against "no leader yet".
    on_update(&metrics.borrow(), &mut seen, &counters);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                on_update(&metrics.borrow_and_update(), &mut seen, &counters);
            }
            _ = tick.tick() => {
                ticks += 1;
                let now = Instant::now();
                note_late_tick(now.duration_since(last_tick), &counters);
                last_tick = now;
                on_tick(&metrics.borrow(), &mut seen, &counters, quorum_limit_ms);
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
                seen.count_leaderless(counters, now);
                seen.leaderless_counted = None;
                counters.leaderless_stretch.store(0, Ordering::Relaxed);
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
                seen.leaderless_counted = Some(now);
                tracing::info!(view = %view, "leader lost: {from} -> none");
            }
        }
        seen.leader = m.current_leader;
        counters
            .has_leader
            .store(m.current_leader.is_some() as u64, Ordering::Relaxed);
    }
}

fn on_tick(
    m: &RaftMetrics<NodeId, Node>,
    seen: &mut Seen,
    counters: &Counters,
    quorum_limit_ms: u64,
) {
    // Keep the total current while a stretch lasts: a scrape during an
    // outage must show it.
    let now = Instant::now();
    seen.count_leaderless(counters, now);
    if let Some(start) = seen.leaderless_start {
        let stretch = now.duration_since(start);
        counters
            .leaderless_stretch
            .store(stretch.as_millis() as u64, Ordering::Relaxed);
        if stretch >= LEADERLESS_WARN {
            if let Some(suppressed) = say("no_leader") {
                tracing::warn!(
                    view = %View::of(m),
                    suppressed,
                    "no leader known for {} ms",
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
        let now = Instant::now();
        let mut seen = Seen {
            state: m.state,
            leader: None,
            last_known_leader: None,
            leaderless_start: Some(now),
            leaderless_counted: Some(now),
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut step = |m: &RaftMetrics<NodeId, Node>| on_update(m, &mut seen, &counters);

        m.current_leader = Some(3);
        step(&m);
        assert_eq!(get(&counters.leader_changes), 1);
        assert_eq!(get(&counters.has_leader), 1);
        // Lost, then the same leader again: not a change.
        m.current_leader = None;
        step(&m);
        assert_eq!(get(&counters.has_leader), 0);
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
