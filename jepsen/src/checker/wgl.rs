//! Linearizability checking of a single register (read, write, cas) with the
//! Wing–Gong–Lowe search, as in Porcupine: walk the history's call/return
//! entries, tentatively linearize any op whose call is reachable before the
//! first pending return, and backtrack when a return is reached before its op
//! was linearized. A cache of (linearized set, register state) prunes
//! configurations already explored, which keeps real histories tractable.
//!
//! `info` ops have no return entry (return at +infinity): they may be
//! linearized anywhere after their call, or never. The search succeeds once
//! every op that did complete has been linearized.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A register op as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RegOp {
    /// Read returned this value (`None`: the key did not exist).
    Read(Option<i64>),
    Write(i64),
    /// A cas that was applied: the register held `.0` and now holds `.1`.
    Cas(i64, i64),
    /// A cas whose compare failed: the register did not hold `.0`.
    CasFail(i64),
}

/// Register state: `None` until the key is first written.
pub type State = Option<i64>;

fn step(state: State, op: RegOp) -> Option<State> {
    match op {
        RegOp::Read(v) => (state == v).then_some(state),
        RegOp::Write(v) => Some(Some(v)),
        RegOp::Cas(old, new) => (state == Some(old)).then_some(Some(new)),
        RegOp::CasFail(old) => (state != Some(old)).then_some(state),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegEntry {
    /// The history op id, so anomalies can point back at the history.
    pub id: u64,
    pub op: RegOp,
    pub start: u64,
    /// `None`: unknown outcome, may take effect at any time after `start`.
    pub end: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `stuck` is an op that could not be placed
    /// after the longest linearizable prefix found; `prefix_state` is the
    /// register value after that prefix.
    NotLinearizable {
        stuck: u64,
        prefix_state: State,
        prefix_len: usize,
    },
    /// The search exceeded its time budget: no verdict.
    Unknown {
        explored: u64,
    },
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Node {
    /// Index into the op list.
    op: usize,
    is_call: bool,
    /// For a call: its return node (NIL for info ops).
    ret: usize,
    prev: usize,
    next: usize,
}

/// A doubly linked list of call/return entries with O(1) removal and
/// reinsertion (undone strictly in LIFO order while backtracking).
struct Entries {
    nodes: Vec<Node>,
}

impl Entries {
    const HEAD: usize = 0;

    fn new(ops: &[RegEntry]) -> Entries {
        // (time, is_return, op): calls sort before returns at equal times,
        // making touching ops concurrent, which can only be more lenient.
        let mut order: Vec<(u64, bool, usize)> = Vec::new();
        for (i, e) in ops.iter().enumerate() {
            order.push((e.start, false, i));
            if let Some(end) = e.end {
                order.push((end.max(e.start), true, i));
            }
        }
        order.sort_unstable();
        let head = Node {
            op: NIL,
            is_call: false,
            ret: NIL,
            prev: NIL,
            next: NIL,
        };
        let mut nodes = vec![head];
        let mut ret_of = vec![NIL; ops.len()];
        let mut call_of = vec![NIL; ops.len()];
        for (_, is_ret, i) in &order {
            let idx = nodes.len();
            nodes.push(Node {
                op: *i,
                is_call: !is_ret,
                ret: NIL,
                prev: idx - 1,
                next: NIL,
            });
            nodes[idx - 1].next = idx;
            if *is_ret {
                ret_of[*i] = idx;
            } else {
                call_of[*i] = idx;
            }
        }
        for i in 0..ops.len() {
            nodes[call_of[i]].ret = ret_of[i];
        }
        Entries { nodes }
    }

    fn unlink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = n;
        if next != NIL {
            self.nodes[next].prev = n;
        }
    }

    /// Removes a call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.nodes[call].ret;
        if ret != NIL {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// Checks one register's history within `budget`.
pub fn check(ops: &[RegEntry], budget: Duration) -> Verdict {
    let deadline = Instant::now() + budget;
    let mut entries = Entries::new(ops);
    let words = ops.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut remaining = ops.iter().filter(|e| e.end.is_some()).count();
    let mut entry = entries.nodes[Entries::HEAD].next;
    let mut explored = 0u64;
    let mut best: Option<(usize, u64, State)> = None;

    while remaining > 0 {
        explored += 1;
        if explored & 4095 == 0 && Instant::now() > deadline {
            return Verdict::Unknown { explored };
        }
        let node = if entry == NIL {
            None
        } else {
            Some(entries.nodes[entry])
        };
        if let Some(node) = node.filter(|n| n.is_call) {
            let op = &ops[node.op];
            if let Some(next_state) = step(state, op.op) {
                let (word, bit) = (node.op / 64, 1u64 << (node.op % 64));
                linearized[word] |= bit;
                if cache.insert((linearized.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    if op.end.is_some() {
                        remaining -= 1;
                    }
                    entries.lift(entry);
                    entry = entries.nodes[Entries::HEAD].next;
                    continue;
                }
                linearized[word] &= !bit;
            }
            entry = node.next;
            continue;
        }
        // A return (or the end of the list): the op it belongs to should have
        // been linearized by now. Remember the deepest dead end for the report.
        if let Some(node) = node {
            if best.is_none_or(|(depth, _, _)| stack.len() >= depth) {
                best = Some((stack.len(), ops[node.op].id, state));
            }
        }
        let Some((call, prev_state)) = stack.pop() else {
            let (prefix_len, stuck, prefix_state) = best.unwrap_or((0, 0, None));
            return Verdict::NotLinearizable {
                stuck,
                prefix_state,
                prefix_len,
            };
        };
        let i = entries.nodes[call].op;
        linearized[i / 64] &= !(1u64 << (i % 64));
        if ops[i].end.is_some() {
            remaining += 1;
        }
        state = prev_state;
        entries.unlift(call);
        entry = entries.nodes[call].next;
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const BUDGET: Duration = Duration::from_secs(10);

    fn e(id: u64, op: RegOp, start: u64, end: Option<u64>) -> RegEntry {
        RegEntry { id, op, start, end }
    }

    fn ok(ops: &[RegEntry]) -> bool {
        check(ops, BUDGET) == Verdict::Linearizable
    }

    use RegOp::*;

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            e(0, Read(None), 0, Some(1)),
            e(1, Write(1), 2, Some(3)),
            e(2, Read(Some(1)), 4, Some(5)),
            e(3, Cas(1, 2), 6, Some(7)),
            e(4, CasFail(1), 8, Some(9)),
            e(5, Read(Some(2)), 10, Some(11)),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn concurrent_ops_may_reorder() {
        // The read overlaps both writes, so it may see either.
        let h = [
            e(0, Write(1), 0, Some(10)),
            e(1, Write(2), 1, Some(11)),
            e(2, Read(Some(1)), 2, Some(12)),
            e(3, Read(Some(1)), 13, Some(14)),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn info_write_may_or_may_not_take_effect() {
        // Took effect, late: long after it was invoked.
        let took = [
            e(0, Write(1), 0, Some(1)),
            e(1, Write(2), 2, None),
            e(2, Read(Some(1)), 10, Some(11)),
            e(3, Read(Some(2)), 20, Some(21)),
        ];
        assert!(ok(&took));
        // Never took effect.
        let never = [
            e(0, Write(1), 0, Some(1)),
            e(1, Write(2), 2, None),
            e(2, Read(Some(1)), 10, Some(11)),
        ];
        assert!(ok(&never));
    }

    #[test]
    fn stale_read_is_rejected() {
        let h = [
            e(0, Write(1), 0, Some(1)),
            e(1, Write(2), 2, Some(3)),
            e(2, Read(Some(1)), 4, Some(5)),
        ];
        assert!(matches!(
            check(&h, BUDGET),
            Verdict::NotLinearizable { stuck: 2, .. }
        ));
    }

    #[test]
    fn lost_write_is_rejected() {
        // A completed write vanishes: a later read sees the initial state.
        let h = [e(0, Write(7), 0, Some(1)), e(1, Read(None), 5, Some(6))];
        assert!(!ok(&h));
    }

    #[test]
    fn info_write_cannot_take_effect_before_its_invocation() {
        let h = [e(0, Read(Some(3)), 0, Some(1)), e(1, Write(3), 5, None)];
        assert!(!ok(&h));
    }

    #[test]
    fn double_applied_cas_is_rejected() {
        // Only one of two cas(1 -> x) can succeed on one register.
        let h = [
            e(0, Write(1), 0, Some(1)),
            e(1, Cas(1, 2), 2, Some(5)),
            e(2, Cas(1, 3), 3, Some(6)),
        ];
        assert!(!ok(&h));
        // Same cas applied twice: 1 -> 2, then observed 1 again and 2 again.
        let twice = [
            e(0, Write(1), 0, Some(1)),
            e(1, Cas(1, 2), 2, Some(3)),
            e(2, Read(Some(2)), 4, Some(5)),
            e(3, Read(Some(1)), 6, Some(7)),
        ];
        assert!(!ok(&twice));
    }

    #[test]
    fn cas_mismatch_must_be_consistent() {
        // The compare failed although the register held 1 throughout.
        let h = [
            e(0, Write(1), 0, Some(1)),
            e(1, CasFail(1), 2, Some(3)),
            e(2, Read(Some(1)), 4, Some(5)),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn read_of_never_written_value_is_rejected() {
        let h = [e(0, Write(1), 0, Some(2)), e(1, Read(Some(42)), 1, Some(3))];
        assert!(!ok(&h));
    }

    #[test]
    fn exceeded_budget_is_unknown_not_valid() {
        let h = random_history(11, 5, 2_000);
        assert!(matches!(check(&h, Duration::ZERO), Verdict::Unknown { .. }));
    }

    /// A history produced by a sequential register whose ops are given real
    /// overlapping intervals: each op takes effect at a moment between its
    /// call and its return. Some ops end as info (never return), with or
    /// without having taken effect. Linearizable by construction.
    fn random_history(seed: u64, procs: usize, n: usize) -> Vec<RegEntry> {
        #[derive(Clone, Copy)]
        enum P {
            Idle,
            Called(usize),
            Applied(usize),
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut procs = vec![P::Idle; procs];
        let mut out: Vec<RegEntry> = Vec::new();
        let mut state: State = None;
        let mut next_value = 0i64;
        let mut time = 0u64;
        while out.len() < n || procs.iter().any(|p| !matches!(p, P::Idle)) {
            time += 1;
            let p = rng.gen_range(0..procs.len());
            match procs[p] {
                P::Idle if out.len() < n => {
                    let op = match rng.gen_range(0..4) {
                        0 | 1 => Read(None),
                        2 => {
                            next_value += 1;
                            Write(next_value)
                        }
                        _ => {
                            next_value += 1;
                            // Expect the current value half the time.
                            let old = match state {
                                Some(v) if rng.gen_bool(0.5) => v,
                                _ => rng.gen_range(0..=next_value),
                            };
                            Cas(old, next_value)
                        }
                    };
                    out.push(e(out.len() as u64, op, time, None));
                    procs[p] = P::Called(out.len() - 1);
                }
                P::Idle => {}
                P::Called(i) if !matches!(out[i].op, Read(_)) && rng.gen_bool(0.02) => {
                    // Timed out and never took effect.
                    procs[p] = P::Idle;
                }
                P::Called(i) => {
                    // The linearization point: apply to the sequential register.
                    let op = match out[i].op {
                        Read(_) => Read(state),
                        Cas(old, _) if state != Some(old) => CasFail(old),
                        other => other,
                    };
                    state = step(state, op).expect("sequential step");
                    out[i].op = op;
                    procs[p] = P::Applied(i);
                }
                P::Applied(i) => {
                    // 3% of ops time out: info, their effect already happened.
                    if rng.gen_bool(0.97) || matches!(out[i].op, Read(_)) {
                        out[i].end = Some(time);
                    }
                    procs[p] = P::Idle;
                }
            }
        }
        out
    }

    #[test]
    fn large_random_linearizable_history_is_accepted_quickly() {
        for seed in 0..3 {
            let h = random_history(seed, 5, 2_000);
            assert_eq!(h.len(), 2_000);
            let started = Instant::now();
            let verdict = check(&h, BUDGET);
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");
            assert!(started.elapsed() < Duration::from_secs(10));
        }
    }

    #[test]
    fn corrupted_random_history_is_rejected() {
        let mut h = random_history(7, 5, 500);
        // Make a completed read late in the history return a value nobody wrote.
        let i = h
            .iter()
            .rposition(|x| matches!(x.op, Read(_)) && x.end.is_some())
            .unwrap();
        h[i].op = Read(Some(-5));
        assert!(!ok(&h));
    }
}
