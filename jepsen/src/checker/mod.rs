//! Turns the paired history into each workload's checker input and runs it.

pub mod append;
pub mod lease;
pub mod lock;
pub mod pairs;
pub mod set;
pub mod watch;
pub mod wgl;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{Op, Phase, Value, CAS_MISMATCH, F};
use set::AddOutcome;
use wgl::{RegEntry, RegOp, Verdict};

/// Key prefixes, one per workload, so `all` can run them side by side.
pub const REGISTER_PREFIX: &str = "r/";
pub const SET_PREFIX: &str = "s/";
pub const APPEND_PREFIX: &str = "a/";
pub const PAIRS_PREFIX: &str = "p/";
pub const WATCH_PREFIX: &str = "w/";
pub const LEASE_PREFIX: &str = "l/";
pub const LOCK_PREFIX: &str = "k/";
pub const UNFENCED_PREFIX: &str = "u/";

#[derive(Debug, Clone, Serialize)]
pub struct RegisterAnomaly {
    pub key: String,
    pub stuck_op: u64,
    pub state_before: Option<i64>,
    pub linearized_prefix: usize,
    /// The stuck op and the ops overlapping it: the evidence.
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RegisterResult {
    pub keys: usize,
    pub linearizable_keys: usize,
    pub anomalies: Vec<RegisterAnomaly>,
    /// Keys whose search ran out of time: neither valid nor invalid.
    pub unknown_keys: Vec<String>,
    /// The most indeterminate (`info`) ops any one key holds: what drives
    /// the search's cost, bounded by the workload.
    pub max_info_per_key: usize,
    pub check_millis: u128,
}

fn outcome(op: &Op) -> AddOutcome {
    match op.phase {
        Phase::Ok => AddOutcome::Ok,
        Phase::Fail => AddOutcome::Fail,
        Phase::Info | Phase::Invoke => AddOutcome::Info,
    }
}

/// The checker's view of one register op; `None` when it cannot matter
/// (a definitely failed write, a read without a result).
fn reg_entry(op: &Op) -> Option<RegEntry> {
    let reg = match (op.f, op.phase, &op.input, &op.output) {
        (F::Read, Phase::Ok, _, Value::Read(v)) => RegOp::Read(*v),
        (F::Write, Phase::Ok | Phase::Info, Value::Int(v), _) => RegOp::Write(*v),
        (F::Cas, Phase::Ok | Phase::Info, Value::Cas(old, new), _) => RegOp::Cas(*old, *new),
        (F::Cas, Phase::Fail, Value::Cas(old, _), _)
            if op.error.as_deref() == Some(CAS_MISMATCH) =>
        {
            RegOp::CasFail(*old)
        }
        _ => return None,
    };
    Some(RegEntry {
        id: op.id,
        op: reg,
        start: op.start,
        end: if op.phase == Phase::Info {
            None
        } else {
            op.end
        },
    })
}

pub fn check_register(ops: &[Op], budget_per_key: Duration) -> RegisterResult {
    let started = Instant::now();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.key.starts_with(REGISTER_PREFIX)) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut r = RegisterResult {
        keys: by_key.len(),
        ..RegisterResult::default()
    };
    for (key, key_ops) in by_key {
        let info = key_ops.iter().filter(|o| o.phase == Phase::Info).count();
        r.max_info_per_key = r.max_info_per_key.max(info);
        let entries: Vec<RegEntry> = key_ops.iter().filter_map(|o| reg_entry(o)).collect();
        match wgl::check(&entries, budget_per_key) {
            Verdict::Linearizable => r.linearizable_keys += 1,
            Verdict::Unknown { .. } => r.unknown_keys.push(key.to_string()),
            Verdict::NotLinearizable {
                stuck,
                prefix_state,
                prefix_len,
            } => {
                let stuck_op = key_ops.iter().find(|o| o.id == stuck).copied();
                let (s, e) = stuck_op
                    .map(|o| (o.start, o.end.unwrap_or(u64::MAX)))
                    .unwrap_or((0, u64::MAX));
                let mut evidence: Vec<Op> = key_ops
                    .iter()
                    .filter(|o| o.start <= e && o.end.unwrap_or(u64::MAX) >= s)
                    .filter(|o| reg_entry(o).is_some())
                    .map(|o| (*o).clone())
                    .collect();
                evidence.truncate(30);
                r.anomalies.push(RegisterAnomaly {
                    key: key.to_string(),
                    stuck_op: stuck,
                    state_before: prefix_state,
                    linearized_prefix: prefix_len,
                    ops: evidence,
                });
            }
        }
    }
    r.check_millis = started.elapsed().as_millis();
    r
}

pub fn check_set(ops: &[Op]) -> set::SetResult {
    let mut adds = BTreeMap::new();
    let mut final_read = None;
    for op in ops.iter().filter(|o| o.key.starts_with(SET_PREFIX)) {
        match (op.f, &op.input, &op.output, op.phase) {
            (F::Add, Value::Int(x), _, _) => {
                adds.insert(*x, outcome(op));
            }
            (F::FinalRead, _, Value::Set(xs), Phase::Ok) => final_read = Some(xs.clone()),
            _ => {}
        }
    }
    set::check(&adds, final_read.as_deref())
}

pub fn check_append(ops: &[Op]) -> append::AppendResult {
    let mut appends = Vec::new();
    let mut reads = Vec::new();
    let mut finals = None;
    for op in ops.iter().filter(|o| o.key.starts_with(APPEND_PREFIX)) {
        match (op.f, &op.input, &op.output, op.phase) {
            (F::Append, Value::Int(x), _, _) => appends.push(append::Append {
                op: op.id,
                key: op.key.clone(),
                element: *x,
                outcome: outcome(op),
            }),
            (F::ReadMulti, _, Value::Lists(lists), Phase::Ok) => {
                reads.extend(lists.iter().map(|(k, l)| append::KeyRead {
                    op: op.id,
                    key: k.clone(),
                    list: l.clone().unwrap_or_default(),
                }));
            }
            (F::FinalRead, _, Value::Lists(lists), Phase::Ok) => {
                finals = Some(
                    lists
                        .iter()
                        .map(|(k, l)| (k.clone(), l.clone().unwrap_or_default()))
                        .collect::<BTreeMap<_, _>>(),
                )
            }
            _ => {}
        }
    }
    append::check(&appends, &reads, finals.as_ref())
}

pub fn check_pairs(ops: &[Op]) -> pairs::PairsResult {
    use crate::workloads::pairs::HEADER_KEY;
    let mut reads = Vec::new();
    let mut writes_ok = 0;
    for op in ops.iter().filter(|o| o.key.starts_with(PAIRS_PREFIX)) {
        match (op.f, &op.output, op.phase) {
            (F::Write, _, Phase::Ok) => writes_ok += 1,
            (F::ReadMulti, Value::Lists(seen), Phase::Ok) => {
                let header = seen
                    .get(HEADER_KEY)
                    .and_then(|v| v.as_ref()?.first().copied())
                    .unwrap_or(0);
                let keys = seen
                    .iter()
                    .filter(|(k, _)| k.as_str() != HEADER_KEY)
                    .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                    .filter(|(_, v)| v.len() == 2)
                    .collect();
                reads.push(pairs::PairRead {
                    op: op.id,
                    pair: op.key.clone(),
                    keys,
                    header_revision: header,
                });
            }
            _ => {}
        }
    }
    pairs::check(&reads, writes_ok)
}

pub fn check_lease(ops: &[Op]) -> lease::LeaseResult {
    lease::check(LEASE_PREFIX, ops)
}

pub fn check_watch(ops: &[Op]) -> watch::WatchResult {
    use crate::workloads::watch::REVISION_KEY;
    let mut writes = Vec::new();
    let mut watchers = Vec::new();
    let mut final_state = None;
    for op in ops.iter().filter(|o| o.key.starts_with(WATCH_PREFIX)) {
        match (op.f, &op.input, &op.output, op.phase) {
            (F::Write | F::Delete, input, output, _) => {
                let (revision, changed) = match output {
                    Value::Rev { revision, changed } if op.phase == Phase::Ok => {
                        (Some(*revision), *changed)
                    }
                    _ => (None, true),
                };
                writes.push(watch::WatchWrite {
                    op: op.id,
                    key: op.key.clone(),
                    value: match input {
                        Value::Int(x) => Some(*x),
                        _ => None,
                    },
                    outcome: outcome(op),
                    revision,
                    changed,
                });
            }
            // A stalled watcher completes as info, with what it received.
            (F::Watch, _, Value::Watch(log), _) => watchers.push(log.clone()),
            (F::FinalRead, _, Value::Lists(seen), Phase::Ok) => {
                let first = |v: &Option<Vec<i64>>| v.as_ref().and_then(|l| l.first().copied());
                final_state = Some(watch::FinalState {
                    revision: seen.get(REVISION_KEY).and_then(first).unwrap_or(0),
                    kvs: seen
                        .iter()
                        .filter(|(k, _)| k.starts_with(WATCH_PREFIX))
                        .filter_map(|(k, v)| Some((k.clone(), first(v)?)))
                        .collect(),
                });
            }
            _ => {}
        }
    }
    watch::check(WATCH_PREFIX, &writes, &watchers, final_state.as_ref())
}

/// The lock workload's register under `prefix` (fenced or not).
pub fn check_lock(ops: &[Op], prefix: &str, fenced: bool) -> lock::LockResult {
    let (_, register) = crate::workloads::lock::names(prefix);
    lock::check(ops, &register, fenced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, History};

    #[test]
    fn register_history_from_recorder_is_checked_per_key() {
        let h = History::new();
        let w = h.invoke(0, F::Write, "r/0", Value::Int(1));
        h.complete(&w, Phase::Ok, Value::None, None);
        let c = h.invoke(1, F::Cas, "r/0", Value::Cas(5, 6));
        h.complete(&c, Phase::Fail, Value::None, Some(CAS_MISMATCH.into()));
        let r = h.invoke(2, F::Read, "r/0", Value::None);
        h.complete(&r, Phase::Ok, Value::Read(Some(1)), None);
        let i = h.invoke(3, F::Write, "r/0", Value::Int(9));
        h.complete(&i, Phase::Info, Value::None, Some("timeout".into()));
        // A stale read on another key.
        let w = h.invoke(0, F::Write, "r/1", Value::Int(2));
        h.complete(&w, Phase::Ok, Value::None, None);
        let r = h.invoke(2, F::Read, "r/1", Value::None);
        h.complete(&r, Phase::Ok, Value::Read(None), None);
        let result = check_register(&pair(&h.events()), Duration::from_secs(5));
        assert_eq!((result.keys, result.linearizable_keys), (2, 1));
        assert_eq!(result.max_info_per_key, 1);
        assert_eq!(result.anomalies.len(), 1);
        assert_eq!(result.anomalies[0].key, "r/1");
        assert_eq!(result.anomalies[0].stuck_op, r.id);
    }

    #[test]
    fn watch_history_from_recorder_is_checked() {
        use crate::workloads::watch::REVISION_KEY;
        use watch::{Segment, WatchEvent, WatchLog};
        let h = History::new();
        let w = h.invoke(9, F::Watch, WATCH_PREFIX, Value::None);
        let p = h.invoke(0, F::Write, "w/0", Value::Int(7));
        let rev = |revision| Value::Rev {
            revision,
            changed: true,
        };
        h.complete(&p, Phase::Ok, rev(2), None);
        let d = h.invoke(1, F::Delete, "w/0", Value::None);
        h.complete(&d, Phase::Ok, rev(3), None);
        let f = h.invoke(5, F::FinalRead, WATCH_PREFIX, Value::None);
        let read = BTreeMap::from([(REVISION_KEY.to_string(), Some(vec![3]))]);
        h.complete(&f, Phase::Ok, Value::Lists(read), None);
        let event = |revision, value, prev| WatchEvent {
            revision,
            key: "w/0".into(),
            value,
            prev,
        };
        let log = WatchLog {
            reconnects: 0,
            segments: vec![Segment {
                start: 1,
                reached: 3,
                events: vec![event(2, Some(7), None), event(3, None, Some((7, 2)))],
            }],
        };
        let mut lossy = log.clone();
        h.complete(&w, Phase::Ok, Value::Watch(log.clone()), None);
        // Through JSON, as history.jsonl holds it.
        let events: Vec<crate::history::Event> = h
            .events()
            .iter()
            .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
            .collect();
        let r = check_watch(&pair(&events));
        assert!(r.valid(), "{r:?}");
        assert_eq!((r.acked_writes, r.final_revision), (2, Some(3)));
        // The same run with the delete lost by a second watcher.
        lossy.segments[0].events.pop();
        let w2 = h.invoke(10, F::Watch, WATCH_PREFIX, Value::None);
        h.complete(&w2, Phase::Ok, Value::Watch(lossy), None);
        let r = check_watch(&pair(&h.events()));
        assert!(!r.valid());
        assert!(r.anomaly_counts.contains_key(&watch::Kind::Gap), "{r:?}");
    }
}
