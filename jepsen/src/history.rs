//! The operation history: every client op is recorded as an invocation and a
//! completion (ok / fail / info), Jepsen style, with monotonic times.
//!
//! Checkers never look at raw events; they look at [`Op`]s, which pair each
//! invocation with its completion. An invocation without a completion (the run
//! was cut short) is treated like `info`: it may or may not have happened.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checker::lease::LeaseLog;
use crate::checker::watch::WatchLog;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Invoke,
    /// Definitely happened.
    Ok,
    /// Definitely did not happen (or, for a cas, the compare failed).
    Fail,
    /// Unknown: a timeout or a lost connection. It may take effect at any
    /// time after its invocation, or never.
    Info,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum F {
    Read,
    Write,
    Cas,
    Add,
    Append,
    ReadMulti,
    FinalRead,
    Nemesis,
    /// A delete of one key (the watch workload).
    Delete,
    /// One watcher's whole life: invoked when it starts, completed with
    /// every event it received once it drained (or stalled).
    Watch,
    /// One lease's whole life: invoked at its grant, completed with what
    /// the workload knew of it once it was done with it.
    Lease,
}

impl F {
    /// Ops that change state; the first ok one after a fault ends its
    /// unavailability window.
    pub fn is_write(self) -> bool {
        matches!(self, F::Write | F::Cas | F::Add | F::Append | F::Delete)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    #[default]
    None,
    /// A written value, an added element, an appended element.
    Int(i64),
    /// A register read: `None` when the key did not exist.
    Read(Option<i64>),
    /// Compare-and-set: (expected, new).
    Cas(i64, i64),
    /// Per-key lists (append reads); `None` when the key did not exist.
    Lists(BTreeMap<String, Option<Vec<i64>>>),
    /// Elements of a set read.
    Set(Vec<i64>),
    /// Free text (nemesis descriptions).
    Text(String),
    /// An acknowledged write's committed revision (its response header);
    /// `changed` is false for a delete that found nothing, which makes no
    /// revision and no watch event.
    Rev { revision: i64, changed: bool },
    /// What one watcher received.
    Watch(WatchLog),
    /// One lease's life (the lease workload).
    Lease(LeaseLog),
}

/// Error text that marks a cas whose compare failed: a definite `fail` that
/// still tells the checker the register did not hold the expected value.
pub const CAS_MISMATCH: &str = "cas-mismatch";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    /// Pairs an invocation with its completion.
    pub op: u64,
    /// Logical client process; -1 for the nemesis.
    pub process: i64,
    /// Nanoseconds since the start of the run (monotonic clock).
    pub time: u64,
    pub phase: Phase,
    pub f: F,
    pub key: String,
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A started op; hand it back to [`History::complete`].
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: u64,
    pub process: i64,
    pub f: F,
    pub key: String,
}

/// Thread-safe recorder shared by all client tasks and the nemesis.
pub struct History {
    start: Instant,
    next_op: AtomicU64,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            next_op: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// `t` on the history's clock (0 if before the run started).
    pub fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }

    pub fn invoke(&self, process: i64, f: F, key: impl Into<String>, value: Value) -> Pending {
        let pending = Pending {
            id: self.next_op.fetch_add(1, Ordering::Relaxed),
            process,
            f,
            key: key.into(),
        };
        self.push(&pending, Phase::Invoke, value, None);
        pending
    }

    pub fn complete(&self, op: &Pending, phase: Phase, value: Value, error: Option<String>) {
        self.push(op, phase, value, error);
    }

    fn push(&self, op: &Pending, phase: Phase, value: Value, error: Option<String>) {
        // The time is taken under the lock so the event order matches time order.
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(Event {
            op: op.id,
            process: op.process,
            time: self.now(),
            phase,
            f: op.f,
            key: op.key.clone(),
            value,
            error,
        });
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for event in self.events() {
            serde_json::to_writer(&mut out, &event)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// One op: its invocation and its completion.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Op {
    pub id: u64,
    pub process: i64,
    pub f: F,
    pub key: String,
    /// The invocation's value (what was written / expected).
    pub input: Value,
    /// The completion's value (what was read).
    pub output: Value,
    /// Ok, Fail or Info (never Invoke).
    pub phase: Phase,
    pub start: u64,
    /// Completion time; `None` for info ops, which may take effect at any
    /// time after `start` (their return is at +infinity).
    pub end: Option<u64>,
    pub error: Option<String>,
}

/// Pairs invocations with completions, in invocation order.
pub fn pair(events: &[Event]) -> Vec<Op> {
    let mut open: BTreeMap<u64, Op> = BTreeMap::new();
    let mut done = Vec::new();
    for e in events {
        if e.phase == Phase::Invoke {
            open.insert(
                e.op,
                Op {
                    id: e.op,
                    process: e.process,
                    f: e.f,
                    key: e.key.clone(),
                    input: e.value.clone(),
                    output: Value::None,
                    phase: Phase::Info,
                    start: e.time,
                    end: None,
                    error: None,
                },
            );
        } else if let Some(mut op) = open.remove(&e.op) {
            op.phase = e.phase;
            op.output = e.value.clone();
            op.error = e.error.clone();
            op.end = (e.phase != Phase::Info).then_some(e.time);
            done.push(op);
        }
    }
    // Never completed: unknown outcome.
    done.extend(open.into_values());
    done.sort_by_key(|op| (op.start, op.id));
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_treats_unfinished_as_info() {
        let h = History::new();
        let a = h.invoke(0, F::Write, "k", Value::Int(1));
        let b = h.invoke(1, F::Read, "k", Value::None);
        h.complete(&a, Phase::Ok, Value::None, None);
        let c = h.invoke(2, F::Write, "k", Value::Int(2));
        h.complete(&c, Phase::Info, Value::None, Some("timeout".into()));
        let ops = pair(&h.events());
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].phase, Phase::Ok);
        assert!(ops[0].end.is_some());
        assert_eq!(
            (ops[1].id, ops[1].phase, ops[1].end),
            (b.id, Phase::Info, None)
        );
        assert_eq!((ops[2].phase, ops[2].end), (Phase::Info, None));
    }

    #[test]
    fn events_round_trip_as_json() {
        let h = History::new();
        let a = h.invoke(3, F::Cas, "r/1", Value::Cas(1, 2));
        h.complete(&a, Phase::Fail, Value::None, Some(CAS_MISMATCH.into()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        h.write_jsonl(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let back: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, h.events());
    }
}
