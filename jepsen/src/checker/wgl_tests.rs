//! Verdicts of the register checker on small hand-made histories, random
//! histories cross-checked against brute force, and its speed on long ones.

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

#[test]
fn failed_cas_may_observe_an_unread_info_write() {
    // Nobody reads 2, yet the info write of 2 explains why cas(1 -> 3)
    // failed: an info write is not droppable just because it is unread.
    let h = [
        e(0, Write(1), 0, Some(1)),
        e(1, Write(2), 2, None),
        e(2, CasFail(1), 3, Some(4)),
    ];
    assert!(ok(&h));
    // Invoked after the failed cas returned, it cannot explain it.
    let late = [
        e(0, Write(1), 0, Some(1)),
        e(1, Write(2), 5, None),
        e(2, CasFail(1), 3, Some(4)),
    ];
    assert!(!ok(&late));
}

#[test]
fn info_cas_applies_only_from_its_expected_value() {
    let applied = [
        e(0, Write(1), 0, Some(1)),
        e(1, Cas(1, 2), 2, None),
        e(2, Read(Some(2)), 5, Some(6)),
    ];
    assert!(ok(&applied));
    // The register held 4, not 1, when the cas was in flight.
    let wrong_state = [
        e(0, Write(4), 0, Some(1)),
        e(1, Cas(1, 2), 2, None),
        e(2, Read(Some(2)), 5, Some(6)),
    ];
    assert!(!ok(&wrong_state));
}

#[test]
fn info_read_carries_no_information() {
    // An info read has no value; whatever it holds must not constrain.
    let h = [
        e(0, Write(1), 0, Some(1)),
        e(1, Read(Some(9)), 2, None),
        e(2, Read(Some(1)), 3, Some(4)),
    ];
    assert!(ok(&h));
}

#[test]
fn many_unread_info_writes_are_decided_both_ways() {
    // 60 concurrent unread info writes, then a failed cas that needs one of
    // them (or not), then a stale read: the search must not try subsets.
    let mut h: Vec<RegEntry> = vec![e(0, Write(1), 0, Some(1))];
    for i in 0..60 {
        h.push(e(1 + i, Write(100 + i as i64), 2 + i, None));
    }
    h.push(e(100, CasFail(1), 70, Some(71)));
    h.push(e(101, Write(5), 72, Some(73)));
    h.push(e(102, CasFail(5), 74, Some(75)));
    assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    // A read of 1 after 5 was written: stale, whatever the info writes did.
    h.push(e(103, Read(Some(1)), 80, Some(81)));
    assert!(matches!(
        check(&h, BUDGET),
        Verdict::NotLinearizable { stuck: 103, .. }
    ));
}

/// Exhaustive reference: tries every order that respects real time; info
/// ops may be left out.
fn brute_force(ops: &[RegEntry]) -> bool {
    fn go(ops: &[RegEntry], used: &mut [bool], state: State) -> bool {
        if ops
            .iter()
            .zip(used.iter())
            .all(|(o, u)| *u || o.end.is_none())
        {
            return true;
        }
        for i in 0..ops.len() {
            let must_wait = (0..ops.len())
                .any(|j| !used[j] && j != i && ops[j].end.is_some_and(|end| end < ops[i].start));
            if used[i] || must_wait {
                continue;
            }
            // An info read's value means nothing.
            let op = match ops[i].op {
                Read(_) if ops[i].end.is_none() => Read(state),
                op => op,
            };
            if let Some(next) = step(state, op) {
                used[i] = true;
                if go(ops, used, next) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    go(ops, &mut vec![false; ops.len()], None)
}

/// A small history of arbitrary ops over few values: most are not
/// linearizable, and many values are written but never read.
fn arbitrary_history(rng: &mut StdRng) -> Vec<RegEntry> {
    let n = rng.gen_range(1..=7);
    (0..n)
        .map(|i| {
            let v1 = rng.gen_range(1..=3);
            let v2 = rng.gen_range(1..=3);
            let op = match rng.gen_range(0..5) {
                0 => Read(rng.gen_bool(0.8).then_some(v1)),
                1 => Write(v1),
                2 => Cas(v1, v2),
                3 => CasFail(v1),
                _ => Write(10 + i as i64),
            };
            let start = rng.gen_range(0..20);
            let info = !matches!(op, CasFail(_)) && rng.gen_bool(0.3);
            let end = (!info).then(|| start + rng.gen_range(1..8));
            e(i as u64, op, start, end)
        })
        .collect()
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    let mut rng = StdRng::seed_from_u64(2026);
    let (mut yes, mut no) = (0, 0);
    for round in 0..20_000 {
        let h = arbitrary_history(&mut rng);
        let expected = brute_force(&h);
        let verdict = check(&h, BUDGET);
        assert!(
            !matches!(verdict, Verdict::Unknown { .. }),
            "round {round}: {h:?}"
        );
        assert_eq!(
            verdict == Verdict::Linearizable,
            expected,
            "round {round}: {h:?}"
        );
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    // Both verdicts are well represented.
    assert!(yes > 3_000 && no > 3_000, "{yes} linearizable, {no} not");
}

/// A chaos run's key through an outage: no timeouts until op `from`, then
/// every write and cas times out (`info`, half of them having taken effect,
/// later reads may see them) and reads fail, until `info` writes and cas have
/// timed out; then ops complete again. Linearizable by construction.
fn outage_history(seed: u64, procs: usize, n: usize, from: usize, info: usize) -> Vec<RegEntry> {
    #[derive(Clone, Copy)]
    enum P {
        Idle,
        Called(usize, bool),
        Applied(usize, bool),
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut procs = vec![P::Idle; procs];
    let mut out: Vec<RegEntry> = Vec::new();
    let (mut state, mut next_value, mut time, mut timed_out) = (None, 0i64, 0u64, 0);
    while out.len() < n || procs.iter().any(|p| !matches!(p, P::Idle)) {
        time += 1;
        let p = rng.gen_range(0..procs.len());
        match procs[p] {
            P::Idle if out.len() < n => {
                next_value += 1;
                let op = match rng.gen_range(0..4) {
                    0 | 1 => Read(None),
                    2 => Write(next_value),
                    _ => Cas(state.unwrap_or(0), next_value),
                };
                let doomed = out.len() >= from && timed_out < info;
                timed_out += usize::from(doomed && !matches!(op, Read(_)));
                out.push(e(out.len() as u64, op, time, None));
                procs[p] = P::Called(out.len() - 1, doomed);
            }
            P::Idle => {}
            P::Called(i, true) if matches!(out[i].op, Read(_)) || rng.gen_bool(0.5) => {
                procs[p] = P::Idle;
            }
            P::Called(i, doomed) => {
                let op = match out[i].op {
                    Read(_) => Read(state),
                    Cas(old, _) if state != Some(old) => CasFail(old),
                    other => other,
                };
                state = step(state, op).expect("sequential step");
                out[i].op = op;
                procs[p] = P::Applied(i, doomed);
            }
            P::Applied(i, doomed) => {
                if !doomed {
                    out[i].end = Some(time);
                }
                procs[p] = P::Idle;
            }
        }
    }
    out
}

#[test]
fn outage_history_with_30_info_ops_is_decided_quickly() {
    // (linearizable, corrupted)
    let mut slowest = (Duration::ZERO, Duration::ZERO);
    for seed in 0..20 {
        let mut h = outage_history(seed, 5, 300, 100, 30);
        let info = h
            .iter()
            .filter(|x| x.end.is_none() && !matches!(x.op, Read(_)))
            .count();
        assert_eq!((h.len(), info), (300, 30), "seed {seed}");
        let started = Instant::now();
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable, "seed {seed}");
        slowest.0 = slowest.0.max(started.elapsed());
        // A completed write after the outage that a later read misses.
        let w = h
            .iter()
            .position(|x| x.start > h[200].start && matches!(x.op, Write(_)) && x.end.is_some())
            .expect("a write after the outage");
        let end = h[w].end.unwrap();
        h.push(e(1_000, Read(None), end + 1, Some(end + 2)));
        let started = Instant::now();
        let verdict = check(&h, BUDGET);
        slowest.1 = slowest.1.max(started.elapsed());
        assert!(
            matches!(verdict, Verdict::NotLinearizable { stuck: 1_000, .. }),
            "seed {seed}: {verdict:?}"
        );
    }
    // Before info ops were pruned, every corrupted key ran out of budget.
    eprintln!(
        "300 ops, 30 info, 20 keys: slowest linearizable {:?}, slowest not {:?}",
        slowest.0, slowest.1
    );
    assert!(
        slowest.0.max(slowest.1) < Duration::from_secs(5),
        "{slowest:?}"
    );
}
