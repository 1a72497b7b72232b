//! Checker for the lock workload: every acknowledged write of the register
//! read the value the previous acknowledged write left (no lost update),
//! acknowledged writes carry fencing tokens that grow in commit order (no
//! two holders' writes interleaved out of order), and the final value
//! accounts for every acknowledged increment.

use serde::Serialize;

use crate::history::{Op, Phase, Value, F};

/// Keys of a write's recorded value.
pub const FENCE: &str = "fence";
pub const READ: &str = "read";
pub const REVISION: &str = "revision";
/// The error of a fenced write the store refused: the lock was gone.
pub const LOCK_LOST: &str = "lock-lost";

/// One acknowledged write, as the checker reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Write {
    pub op: u64,
    pub process: i64,
    pub fence: i64,
    pub read: i64,
    pub wrote: i64,
    pub revision: i64,
}

/// Two acknowledged writes, consecutive in commit order, that break a rule.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub before: Write,
    pub after: Write,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LockResult {
    pub fenced: bool,
    pub writes_attempted: usize,
    pub writes_ok: usize,
    /// Fenced writes the store refused because the lock was gone: fencing
    /// at work.
    pub writes_refused: usize,
    pub writes_info: usize,
    pub final_value: Option<i64>,
    /// `after` read a value older than what `before` wrote: `before`'s
    /// update was lost.
    pub lost_updates: Vec<Pair>,
    /// `after` carries a fence no greater than `before`'s: two holders'
    /// writes committed out of lock order.
    pub fences_out_of_order: Vec<Pair>,
    /// The final value does not account for the acknowledged writes.
    pub final_anomaly: Option<String>,
}

impl LockResult {
    pub fn valid(&self) -> bool {
        self.final_value.is_some()
            && self.lost_updates.is_empty()
            && self.fences_out_of_order.is_empty()
            && self.final_anomaly.is_none()
    }
}

fn one(value: &Value, key: &str) -> Option<i64> {
    match value {
        Value::Lists(lists) => lists.get(key)?.as_ref()?.first().copied(),
        _ => None,
    }
}

/// Checks the ops on `register`.
pub fn check(ops: &[Op], register: &str, fenced: bool) -> LockResult {
    let mut r = LockResult {
        fenced,
        ..LockResult::default()
    };
    let mut acked = Vec::new();
    for op in ops.iter().filter(|o| o.key == register) {
        match (op.f, op.phase) {
            (F::FinalRead, Phase::Ok) => {
                if let Value::Read(v) = op.output {
                    r.final_value = Some(v.unwrap_or(0));
                }
            }
            (F::Write, phase) => {
                r.writes_attempted += 1;
                match phase {
                    Phase::Ok => {
                        let (Value::Int(wrote), Some(fence), Some(read), Some(revision)) = (
                            &op.input,
                            one(&op.output, FENCE),
                            one(&op.output, READ),
                            one(&op.output, REVISION),
                        ) else {
                            continue;
                        };
                        r.writes_ok += 1;
                        acked.push(Write {
                            op: op.id,
                            process: op.process,
                            fence,
                            read,
                            wrote: *wrote,
                            revision,
                        });
                    }
                    Phase::Fail if op.error.as_deref() == Some(LOCK_LOST) => r.writes_refused += 1,
                    Phase::Info | Phase::Invoke => r.writes_info += 1,
                    Phase::Fail => {}
                }
            }
            _ => {}
        }
    }
    acked.sort_by_key(|w| w.revision);
    for pair in acked.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if after.read < before.wrote {
            r.lost_updates.push(Pair { before, after });
        }
        // The same fence twice is one holder writing twice: a lock call
        // under a lease whose key still stands (its unlock failed or timed
        // out) takes that key again, as etcd's Mutex does, so the fence is
        // the key's create revision again and the lock was never let go.
        // A fence is one lease's key, and a lease one process's.
        let same_holder = after.fence == before.fence && after.process == before.process;
        if after.fence <= before.fence && !same_holder {
            r.fences_out_of_order.push(Pair { before, after });
        }
    }
    if let Some(value) = r.final_value {
        let highest = acked.iter().map(|w| w.wrote).max().unwrap_or(0);
        // Each applied write adds one to what it read: with no update lost
        // the value counts the applied writes, which are the acknowledged
        // ones and some of the indeterminate ones.
        let most = (r.writes_ok + r.writes_info) as i64;
        if value < highest {
            r.final_anomaly = Some(format!(
                "final value {value} is below the acknowledged write of {highest}"
            ));
        } else if value > most {
            r.final_anomaly = Some(format!(
                "final value {value} exceeds the {most} writes that may have applied"
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn write(id: u64, phase: Phase, fence: i64, read: i64, revision: i64) -> Op {
        let mut lists = BTreeMap::from([
            (FENCE.to_string(), Some(vec![fence])),
            (READ.to_string(), Some(vec![read])),
        ]);
        if phase == Phase::Ok {
            lists.insert(REVISION.to_string(), Some(vec![revision]));
        }
        Op {
            id,
            process: id as i64 % 3,
            f: F::Write,
            key: "k/reg".into(),
            input: Value::Int(read + 1),
            output: Value::Lists(lists),
            phase,
            start: id * 10,
            end: (phase != Phase::Info).then_some(id * 10 + 5),
            error: None,
        }
    }

    fn final_read(value: i64) -> Op {
        Op {
            id: 999,
            process: 9,
            f: F::FinalRead,
            key: "k/reg".into(),
            input: Value::None,
            output: Value::Read(Some(value)),
            phase: Phase::Ok,
            start: 10_000,
            end: Some(10_001),
            error: None,
        }
    }

    #[test]
    fn a_chain_of_increments_is_valid() {
        let mut ops = vec![
            write(1, Phase::Ok, 5, 0, 6),
            write(2, Phase::Ok, 8, 1, 9),
            write(3, Phase::Info, 11, 2, 0),
            write(4, Phase::Ok, 14, 3, 15),
        ];
        let mut refused = write(5, Phase::Fail, 7, 1, 0);
        refused.error = Some(LOCK_LOST.into());
        ops.push(refused);
        ops.push(final_read(4));
        let r = check(&ops, "k/reg", true);
        assert!(r.valid(), "{r:?}");
        assert_eq!((r.writes_ok, r.writes_info, r.writes_refused), (3, 1, 1));
    }

    #[test]
    fn a_stale_holder_writing_late_is_caught_twice() {
        // Holder with fence 5 read 0, paused; holder 8 read 0 and wrote 1;
        // then the paused one's write of 1 commits.
        let ops = vec![
            write(1, Phase::Ok, 8, 0, 9),
            write(2, Phase::Ok, 5, 0, 10),
            final_read(1),
        ];
        let r = check(&ops, "k/reg", false);
        assert!(!r.valid());
        assert_eq!(r.lost_updates.len(), 1);
        assert_eq!(r.fences_out_of_order.len(), 1);
        assert_eq!(r.lost_updates[0].after.op, 2);
    }

    #[test]
    fn one_holder_writing_twice_under_one_fence_is_in_order() {
        // Process 1 wrote under fence 5, its unlock was lost, and its next
        // lock under the same lease took the same key: fence 5 again.
        let mut again = write(4, Phase::Ok, 5, 1, 9);
        again.process = 1;
        let ops = vec![write(1, Phase::Ok, 5, 0, 6), again, final_read(2)];
        let r = check(&ops, "k/reg", true);
        assert!(r.valid(), "{r:?}");
        // The same fence from another process is two holders.
        let mut other = write(5, Phase::Ok, 5, 1, 9);
        other.process = 2;
        let ops = vec![write(1, Phase::Ok, 5, 0, 6), other, final_read(2)];
        assert_eq!(check(&ops, "k/reg", true).fences_out_of_order.len(), 1);
    }

    #[test]
    fn a_final_value_that_lost_an_acknowledged_write_is_caught() {
        let ops = vec![
            write(1, Phase::Ok, 5, 0, 6),
            write(2, Phase::Ok, 8, 1, 9),
            final_read(1),
        ];
        assert!(check(&ops, "k/reg", true).final_anomaly.is_some());
        let no_final = vec![write(1, Phase::Ok, 5, 0, 6)];
        assert!(!check(&no_final, "k/reg", true).valid(), "undecided");
    }
}
