//! The watch check, after Jepsen's etcd watch test: several watchers follow
//! the prefix from revision 1 through every fault, each recording every
//! event; writers put unique values and sometimes delete. Since the values
//! are unique and every acknowledged write knows its revision, each
//! watcher's sequence can be checked exactly:
//!
//! - *duplicate* / *reorder*: revisions never go back; one key never has two
//!   events at one revision; a put value is never delivered twice.
//! - *phantom*: every event is under the prefix and comes from a write that
//!   was attempted and did not definitely fail.
//! - *gap*: every acknowledged write at revision R is in every sequence that
//!   covers R, at R, with its key, type and value.
//! - *disagreement*: sequences covering R hold the same events for R (this
//!   also catches a lost write whose client never heard back).
//! - *prev-kv*: an event's prev_kv is the previous put to the key in the
//!   same sequence (none after a delete, or before any put).
//! - *final-state*: replaying a sequence up to the final read's revision
//!   gives exactly what the final read returned.
//! - *stalled*: after healing, every watcher reaches the final read's
//!   revision.
//!
//! A compaction forces a watcher to restart from the compacted revision:
//! that starts a new *segment*, checked on its own, whose state before its
//! start is unknown (its prev_kv and final state are checked only for keys
//! it saw change).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The event's mod_revision.
    pub revision: i64,
    pub key: String,
    /// The put's value; `None` for a delete. A value that does not parse
    /// is recorded as `i64::MIN` (then a phantom).
    pub value: Option<i64>,
    /// prev_kv as (value, mod_revision).
    pub prev: Option<(i64, i64)>,
}

/// Events delivered from one start revision on, without a restart forced
/// by compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub start: i64,
    /// Every revision up to here was delivered (the last event's, or a
    /// progress notification's); `start - 1` when nothing was.
    pub reached: i64,
    pub events: Vec<WatchEvent>,
}

/// Everything one watcher received, segment by segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchLog {
    pub segments: Vec<Segment>,
    /// Streams the client replaced after one broke (member killed, paused,
    /// cut off or removed), over the whole run.
    #[serde(default)]
    pub reconnects: u64,
}

/// One write to the watched prefix, as the writers recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchWrite {
    pub op: u64,
    pub key: String,
    /// The put's value; `None` for a delete.
    pub value: Option<i64>,
    pub outcome: super::set::AddOutcome,
    /// Ok writes: the committed revision, and whether it changed anything
    /// (a delete of an absent key does not).
    pub revision: Option<i64>,
    pub changed: bool,
}

/// The final linearizable read of the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FinalState {
    pub revision: i64,
    pub kvs: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Duplicate,
    Reorder,
    Phantom,
    Gap,
    Disagreement,
    PrevKv,
    FinalState,
    Stalled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchAnomaly {
    pub kind: Kind,
    /// Index of the watcher (in the result's `watchers` order).
    pub watcher: usize,
    pub revision: i64,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatchResult {
    /// Events received, per watcher.
    pub events_per_watcher: Vec<usize>,
    /// Compaction restarts, per watcher.
    pub restarts_per_watcher: Vec<usize>,
    /// Broken streams the client resumed on another member, per watcher.
    pub reconnects_per_watcher: Vec<u64>,
    pub writes_attempted: usize,
    /// Ok writes that made an event (puts, deletes that found the key).
    pub acked_writes: usize,
    pub final_revision: Option<i64>,
    /// Kind -> how many.
    pub anomaly_counts: BTreeMap<Kind, usize>,
    /// The first few of each kind.
    pub anomalies: Vec<WatchAnomaly>,
}

impl WatchResult {
    /// Never unknown: no final read, no watcher or no event is a failure.
    pub fn valid(&self) -> bool {
        self.final_revision.is_some()
            && !self.events_per_watcher.is_empty()
            && self.events_per_watcher.iter().any(|&n| n > 0)
            && self.anomaly_counts.is_empty()
    }

    pub fn anomaly_total(&self) -> usize {
        self.anomaly_counts.values().sum()
    }

    fn add(&mut self, kind: Kind, watcher: usize, revision: i64, detail: String) {
        let n = self.anomaly_counts.entry(kind).or_default();
        *n += 1;
        if *n <= MAX_EXAMPLES {
            self.anomalies.push(WatchAnomaly {
                kind,
                watcher,
                revision,
                detail,
            });
        }
    }
}

const MAX_EXAMPLES: usize = 10;

/// A segment of watcher `.0`, with its events indexed by revision.
type Covered<'a> = (usize, &'a Segment, BTreeMap<i64, Vec<&'a WatchEvent>>);

fn show(e: &WatchEvent) -> String {
    match e.value {
        Some(v) => format!("put {}={v}@{}", e.key, e.revision),
        None => format!("delete {}@{}", e.key, e.revision),
    }
}

pub fn check(
    prefix: &str,
    writes: &[WatchWrite],
    watchers: &[WatchLog],
    final_state: Option<&FinalState>,
) -> WatchResult {
    use super::set::AddOutcome;
    let mut r = WatchResult {
        events_per_watcher: watchers
            .iter()
            .map(|w| w.segments.iter().map(|s| s.events.len()).sum())
            .collect(),
        restarts_per_watcher: watchers
            .iter()
            .map(|w| w.segments.len().saturating_sub(1))
            .collect(),
        reconnects_per_watcher: watchers.iter().map(|w| w.reconnects).collect(),
        writes_attempted: writes.len(),
        final_revision: final_state.map(|f| f.revision),
        ..WatchResult::default()
    };
    // Unique values: a put event names the write it came from.
    let puts: BTreeMap<i64, &WatchWrite> =
        writes.iter().filter_map(|w| Some((w.value?, w))).collect();
    let deletable: BTreeSet<&str> = writes
        .iter()
        .filter(|w| w.value.is_none() && w.outcome != AddOutcome::Fail)
        .map(|w| w.key.as_str())
        .collect();
    let acked: Vec<(i64, &WatchWrite)> = writes
        .iter()
        .filter(|w| w.outcome == AddOutcome::Ok && w.changed)
        .filter_map(|w| Some((w.revision?, w)))
        .collect();
    r.acked_writes = acked.len();

    // (watcher, segment) -> revision -> its events there, for agreement.
    let mut by_revision: Vec<Covered> = Vec::new();
    for (w, log) in watchers.iter().enumerate() {
        for seg in &log.segments {
            check_order(&mut r, w, seg);
            check_phantoms(&mut r, w, seg, prefix, &puts, &deletable);
            check_prev_kv(&mut r, w, seg);
            let mut at: BTreeMap<i64, Vec<&WatchEvent>> = BTreeMap::new();
            for e in &seg.events {
                at.entry(e.revision).or_default().push(e);
            }
            for &(rev, write) in &acked {
                if rev < seg.start || rev > seg.reached {
                    continue;
                }
                let seen = at.get(&rev).map(Vec::as_slice).unwrap_or(&[]);
                let right = seen
                    .iter()
                    .any(|e| e.key == write.key && e.value == write.value);
                if !right {
                    let what = match write.value {
                        Some(v) => format!("put {}={v}", write.key),
                        None => format!("delete {}", write.key),
                    };
                    let got: Vec<String> = seen.iter().map(|e| show(e)).collect();
                    r.add(
                        Kind::Gap,
                        w,
                        rev,
                        format!(
                            "acknowledged {what} (op {}) at {rev} missing; watcher had {got:?} there",
                            write.op
                        ),
                    );
                }
            }
            if let Some(f) = final_state {
                check_final(&mut r, w, seg, f);
            }
            by_revision.push((w, seg, at));
        }
        if let (Some(f), Some(last)) = (final_state, log.segments.last()) {
            if last.reached < f.revision {
                r.add(
                    Kind::Stalled,
                    w,
                    last.reached,
                    format!(
                        "watch stalled at revision {} below the final read's {}",
                        last.reached, f.revision
                    ),
                );
            }
        }
        if log.segments.is_empty() && final_state.is_some() {
            r.add(Kind::Stalled, w, 0, "watcher received nothing".into());
        }
    }
    check_agreement(&mut r, &by_revision);
    r
}

/// Revisions strictly increase across events (equal only for distinct keys
/// of one txn); a put value comes once.
fn check_order(r: &mut WatchResult, w: usize, seg: &Segment) {
    let mut values = BTreeSet::new();
    let mut prev: Option<&WatchEvent> = None;
    for e in &seg.events {
        if e.revision < seg.start {
            r.add(
                Kind::Reorder,
                w,
                e.revision,
                format!("{} before the watch's start {}", show(e), seg.start),
            );
        }
        if let Some(p) = prev {
            if e.revision < p.revision {
                r.add(
                    Kind::Reorder,
                    w,
                    e.revision,
                    format!("{} after {}", show(e), show(p)),
                );
            }
        }
        prev = Some(e);
        if let Some(v) = e.value {
            if !values.insert(v) {
                r.add(
                    Kind::Duplicate,
                    w,
                    e.revision,
                    format!("{} delivered again", show(e)),
                );
            }
        }
    }
    let mut keys_at: BTreeSet<(i64, &str)> = BTreeSet::new();
    for e in &seg.events {
        if !keys_at.insert((e.revision, e.key.as_str())) {
            r.add(
                Kind::Duplicate,
                w,
                e.revision,
                format!("two events for {} at {}", e.key, e.revision),
            );
        }
    }
}

fn check_phantoms(
    r: &mut WatchResult,
    w: usize,
    seg: &Segment,
    prefix: &str,
    puts: &BTreeMap<i64, &WatchWrite>,
    deletable: &BTreeSet<&str>,
) {
    use super::set::AddOutcome;
    for e in &seg.events {
        let why = if !e.key.starts_with(prefix) {
            Some("outside the watched prefix".to_string())
        } else {
            match e.value {
                Some(v) => match puts.get(&v) {
                    None => Some("no write of this value was invoked".into()),
                    Some(p) if p.key != e.key => {
                        Some(format!("the value was written to {}", p.key))
                    }
                    Some(p) if p.outcome == AddOutcome::Fail => {
                        Some(format!("its write (op {}) definitely failed", p.op))
                    }
                    Some(_) => None,
                },
                None => (!deletable.contains(e.key.as_str()))
                    .then(|| "no delete of this key may have happened".into()),
            }
        };
        if let Some(why) = why {
            r.add(Kind::Phantom, w, e.revision, format!("{}: {why}", show(e)));
        }
    }
}

/// Replays the segment: each event's prev_kv must be the key's last put.
/// From revision 1 every key starts absent; a later start knows a key only
/// once it saw it change.
fn check_prev_kv(r: &mut WatchResult, w: usize, seg: &Segment) {
    let mut last: BTreeMap<&str, Option<(i64, i64)>> = BTreeMap::new();
    for e in &seg.events {
        let known = if seg.start <= 1 {
            Some(last.get(e.key.as_str()).copied().flatten())
        } else {
            last.get(e.key.as_str()).copied()
        };
        if let Some(expected) = known {
            if e.prev != expected {
                r.add(
                    Kind::PrevKv,
                    w,
                    e.revision,
                    format!(
                        "{} has prev_kv {:?}, expected {expected:?} (value, mod_revision)",
                        show(e),
                        e.prev
                    ),
                );
            }
        }
        last.insert(&e.key, e.value.map(|v| (v, e.revision)));
    }
}

/// The segment replayed up to the final read's revision equals the read
/// (for a segment not from revision 1: on the keys it saw change).
fn check_final(r: &mut WatchResult, w: usize, seg: &Segment, f: &FinalState) {
    if seg.start > f.revision || seg.reached < f.revision {
        return;
    }
    let mut state: BTreeMap<&str, Option<i64>> = BTreeMap::new();
    for e in seg.events.iter().filter(|e| e.revision <= f.revision) {
        state.insert(&e.key, e.value);
    }
    let mut diffs = Vec::new();
    for (k, v) in &state {
        let read = f.kvs.get(*k).copied();
        if *v != read {
            diffs.push(format!("{k}: watch {v:?}, read {read:?}"));
        }
    }
    if seg.start <= 1 {
        for (k, v) in &f.kvs {
            if !state.contains_key(k.as_str()) {
                diffs.push(format!("{k}: watch None, read Some({v})"));
            }
        }
    }
    if !diffs.is_empty() {
        r.add(
            Kind::FinalState,
            w,
            f.revision,
            format!("replay up to {} differs: {}", f.revision, diffs.join("; ")),
        );
    }
}

/// Every sequence covering a revision holds the same events there.
fn check_agreement(r: &mut WatchResult, segs: &[Covered]) {
    let revisions: BTreeSet<i64> = segs
        .iter()
        .flat_map(|(_, _, at)| at.keys())
        .copied()
        .collect();
    for rev in revisions {
        let mut first: Option<(usize, Vec<String>)> = None;
        for (w, seg, at) in segs {
            if rev < seg.start || rev > seg.reached {
                continue;
            }
            let mut seen: Vec<String> = at
                .get(&rev)
                .map(|es| es.iter().map(|e| show(e)).collect())
                .unwrap_or_default();
            seen.sort();
            match &first {
                None => first = Some((*w, seen)),
                Some((w0, seen0)) if *seen0 != seen => {
                    r.add(
                        Kind::Disagreement,
                        *w,
                        rev,
                        format!("watcher {w0} saw {seen0:?} at {rev}, watcher {w} saw {seen:?}"),
                    );
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::set::AddOutcome;
    use super::*;

    const P: &str = "w/";

    fn put(rev: i64, key: &str, v: i64, prev: Option<(i64, i64)>) -> WatchEvent {
        WatchEvent {
            revision: rev,
            key: key.into(),
            value: Some(v),
            prev,
        }
    }

    fn del(rev: i64, key: &str, prev: Option<(i64, i64)>) -> WatchEvent {
        WatchEvent {
            revision: rev,
            key: key.into(),
            value: None,
            prev,
        }
    }

    fn write(op: u64, key: &str, value: Option<i64>, rev: Option<i64>) -> WatchWrite {
        WatchWrite {
            op,
            key: key.into(),
            value,
            outcome: if rev.is_some() {
                AddOutcome::Ok
            } else {
                AddOutcome::Info
            },
            revision: rev,
            changed: true,
        }
    }

    fn log(events: Vec<WatchEvent>, reached: i64) -> WatchLog {
        WatchLog {
            reconnects: 0,
            segments: vec![Segment {
                start: 1,
                reached,
                events,
            }],
        }
    }

    /// Revisions 2..=6 on the prefix (1 and 4 went to other prefixes): two
    /// puts to w/0, a put to w/1, a delete of w/0, an info put to w/1.
    fn history() -> (Vec<WatchWrite>, Vec<WatchEvent>, FinalState) {
        let writes = vec![
            write(0, "w/0", Some(10), Some(2)),
            write(1, "w/1", Some(11), Some(3)),
            write(2, "w/0", Some(12), Some(5)),
            write(3, "w/0", None, Some(6)),
            write(4, "w/1", Some(13), None),
            // A definitely failed put never shows.
            WatchWrite {
                outcome: AddOutcome::Fail,
                ..write(5, "w/2", Some(14), None)
            },
        ];
        let events = vec![
            put(2, "w/0", 10, None),
            put(3, "w/1", 11, None),
            put(5, "w/0", 12, Some((10, 2))),
            del(6, "w/0", Some((12, 5))),
            put(7, "w/1", 13, Some((11, 3))),
        ];
        let f = FinalState {
            revision: 8,
            kvs: BTreeMap::from([("w/1".to_string(), 13)]),
        };
        (writes, events, f)
    }

    fn run(events: Vec<WatchEvent>) -> WatchResult {
        let (writes, good, f) = history();
        // A second, correct watcher alongside the one under test.
        check(P, &writes, &[log(good, 9), log(events, 9)], Some(&f))
    }

    fn flags(r: &WatchResult, kind: Kind) {
        assert!(!r.valid(), "{r:?}");
        assert!(r.anomaly_counts.contains_key(&kind), "{r:?}");
        assert!(r.anomalies.iter().all(|a| a.watcher == 1), "{r:?}");
    }

    #[test]
    fn a_complete_history_is_valid() {
        let (_, events, _) = history();
        let r = run(events);
        assert!(r.valid(), "{r:?}");
        assert_eq!(r.events_per_watcher, vec![5, 5]);
        assert_eq!((r.acked_writes, r.writes_attempted), (4, 6));
    }

    #[test]
    fn a_missing_acknowledged_write_is_a_gap() {
        let (_, mut events, _) = history();
        events.remove(1);
        let r = run(events);
        flags(&r, Kind::Gap);
        assert!(r
            .anomalies
            .iter()
            .any(|a| a.kind == Kind::Gap && a.revision == 3));
        // Beyond the sequence's reach a write is not yet due.
        let (writes, mut events, f) = history();
        events.truncate(1);
        let early = check(P, &writes, &[log(events, 2)], None);
        assert!(early.anomaly_counts.is_empty(), "{early:?}");
        assert!(!early.valid(), "no final read: never valid");
        let stalled = check(P, &writes, &[log(history().1, 7)], Some(&f));
        assert_eq!(
            stalled.anomaly_counts.keys().collect::<Vec<_>>(),
            [&Kind::Stalled]
        );
    }

    #[test]
    fn a_lost_unacknowledged_write_is_a_disagreement() {
        let (_, mut events, _) = history();
        events.pop();
        let r = run(events);
        flags(&r, Kind::Disagreement);
    }

    #[test]
    fn a_redelivered_event_is_a_duplicate() {
        let (_, mut events, _) = history();
        events.insert(2, events[1].clone());
        let r = run(events);
        flags(&r, Kind::Duplicate);
        // Same key twice at one revision, different values.
        let (_, mut events, _) = history();
        events.insert(1, put(2, "w/0", 11, None));
        flags(&run(events), Kind::Duplicate);
    }

    #[test]
    fn events_out_of_order_are_a_reorder() {
        let (_, mut events, _) = history();
        events.swap(1, 2);
        let r = run(events);
        flags(&r, Kind::Reorder);
    }

    #[test]
    fn an_unwritten_or_failed_value_is_a_phantom() {
        for bad in [
            put(8, "w/3", 99, None),
            put(8, "w/2", 14, None),
            put(8, "w/3", 13, None),
            put(8, "x/0", 10, None),
            del(8, "w/1", None),
        ] {
            let (_, mut events, _) = history();
            events.push(bad);
            let r = run(events);
            assert!(r.anomaly_counts.contains_key(&Kind::Phantom), "{r:?}");
        }
    }

    #[test]
    fn a_wrong_prev_kv_is_caught() {
        let (_, mut events, _) = history();
        events[2].prev = Some((11, 3));
        flags(&run(events), Kind::PrevKv);
        let (_, mut events, _) = history();
        events[4].prev = None;
        flags(&run(events), Kind::PrevKv);
        let (_, mut events, _) = history();
        events[0].prev = Some((10, 1));
        flags(&run(events), Kind::PrevKv);
    }

    #[test]
    fn a_replay_that_differs_from_the_final_read_fails() {
        let (writes, events, mut f) = history();
        f.kvs.insert("w/0".into(), 12);
        let r = check(P, &writes, &[log(events, 9)], Some(&f));
        assert_eq!(
            r.anomaly_counts.keys().collect::<Vec<_>>(),
            [&Kind::FinalState]
        );
        assert!(!r.valid());
    }

    #[test]
    fn a_compaction_restart_is_checked_from_its_start() {
        let (writes, events, f) = history();
        // Restarted at 5 after seeing revision 2: 3 is not owed, and the
        // prev_kv of w/0 at 5 (first seen in that segment) is unknown.
        let w = WatchLog {
            reconnects: 0,
            segments: vec![
                Segment {
                    start: 1,
                    reached: 2,
                    events: events[..1].to_vec(),
                },
                Segment {
                    start: 5,
                    reached: 9,
                    events: events[2..].to_vec(),
                },
            ],
        };
        let r = check(P, &writes, &[log(events.clone(), 9), w], Some(&f));
        assert!(r.valid(), "{r:?}");
        assert_eq!(r.restarts_per_watcher, vec![0, 1]);
    }
}
