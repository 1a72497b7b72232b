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
//!
//! Timed-out ops would make the search try every subset of them at every
//! point, so the history is first reduced (see [`simplify`]) and the search
//! linearizes an info op only when that changes the register, and only the
//! earliest-invoked unused one among info ops with the same effect.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A register op as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
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
    /// register value after that prefix (values no op reads or compares
    /// against are merged, and reported as the first such value written).
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

/// Rewrites a history into one that is linearizable exactly when it is, and
/// cheaper to search:
/// - info ops that cannot change the register (reads, failed cas) are
///   dropped: an info read returned nothing, so it constrains nothing;
/// - values no op compares against (reads, cas expected values, failed cas)
///   are merged into one, `u`: every op behaves the same on any of them, so
///   this shrinks the state space without changing any verdict;
/// - an info op that can only leave `u` is dropped when nothing can tell it
///   happened. After it, reads and cas fail until a write overwrites `u`;
///   only a failed cas can tell `u` from the value before. So an info
///   `write(u)` with no failed cas returning after its invocation, or an info
///   `cas(o, u)` with no failed `cas(o, _)` returning after it, is a write that
///   may never have happened (Knossos' unread-info-write trick, kept sound
///   for failed cas).
///
/// Dropping an op can leave more values unobserved, so this runs to a
/// fixpoint.
fn simplify(ops: &[RegEntry]) -> Vec<RegEntry> {
    let mut ops: Vec<RegEntry> = ops
        .iter()
        .filter(|e| e.end.is_some() || matches!(e.op, RegOp::Write(_) | RegOp::Cas(..)))
        .cloned()
        .collect();
    loop {
        let observed: HashSet<i64> = ops
            .iter()
            .filter_map(|e| match e.op {
                RegOp::Read(v) => v,
                RegOp::Cas(old, _) | RegOp::CasFail(old) => Some(old),
                RegOp::Write(_) => None,
            })
            .collect();
        let unobserved = ops.iter().find_map(|e| match e.op {
            RegOp::Write(v) | RegOp::Cas(_, v) => (!observed.contains(&v)).then_some(v),
            _ => None,
        });
        let Some(u) = unobserved else {
            return ops;
        };
        for e in &mut ops {
            match &mut e.op {
                RegOp::Write(v) | RegOp::Cas(_, v) if !observed.contains(v) => *v = u,
                _ => {}
            }
        }
        // Last return of any failed cas, and of the failed cas per value.
        let mut last_fail: Option<u64> = None;
        let mut last_fail_of: HashMap<i64, u64> = HashMap::new();
        for e in &ops {
            if let (RegOp::CasFail(old), Some(end)) = (e.op, e.end) {
                last_fail = last_fail.max(Some(end));
                let last = last_fail_of.entry(old).or_default();
                *last = end.max(*last);
            }
        }
        let before = ops.len();
        ops.retain(|e| {
            let inert = match e.op {
                RegOp::Write(v) if v == u => last_fail.is_none_or(|end| end < e.start),
                RegOp::Cas(old, v) if v == u => {
                    last_fail_of.get(&old).is_none_or(|&end| end < e.start)
                }
                _ => false,
            };
            e.end.is_some() || !inert
        });
        if ops.len() == before {
            return ops;
        }
    }
}

/// Checks one register's history within `budget`.
pub fn check(ops: &[RegEntry], budget: Duration) -> Verdict {
    let deadline = Instant::now() + budget;
    let ops = &simplify(ops)[..];
    // Info ops with the same effect are interchangeable (no return bounds
    // them), so any linearization can be rewritten to use the earliest
    // invoked ones, in invocation order: an info op may be linearized only
    // after the previous one of its kind.
    let mut info: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].end.is_none()).collect();
    info.sort_by_key(|&i| (ops[i].start, i));
    let mut after = vec![NIL; ops.len()];
    let mut last_of: HashMap<RegOp, usize> = HashMap::new();
    for i in info {
        if let Some(prev) = last_of.insert(ops[i].op, i) {
            after[i] = prev;
        }
    }
    let is_set = |bits: &[u64], i: usize| bits[i / 64] & (1u64 << (i % 64)) != 0;
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
            let info = op.end.is_none();
            let next = if info && after[node.op] != NIL && !is_set(&linearized, after[node.op]) {
                None
            } else {
                // Linearizing an info op that leaves the state as it was
                // proves nothing: any linearization without it is as good.
                step(state, op.op).filter(|next| !info || *next != state)
            };
            if let Some(next_state) = next {
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
#[path = "wgl_tests.rs"]
mod tests;
