//! Compaction on the in-memory engine: what is kept, etcd's rejections,
//! the sweep, reopening with a sweep unfinished, and a randomized model
//! check with compactions.

use nines_types::{Command, CommandResult, RejectReason};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::{check_reads, command_or_compact, Model};
use super::tests::{all, kv, put, Store};
use super::*;
use crate::engine::Engine;

fn compact(revision: i64) -> Command {
    Command::Compact {
        revision,
        physical: false,
    }
}

fn del(key: &str) -> Command {
    Command::Delete {
        key: key.into(),
        prev_kv: false,
    }
}

/// Revision records in the engine, oldest first.
fn records(s: &Store) -> Vec<Rev> {
    s.mvcc
        .engine
        .scan(&[REV_PREFIX], Some(&[REV_PREFIX + 1]))
        .map(|item| parse_rev_key(&item.unwrap().0).unwrap())
        .collect()
}

fn rev(main: i64) -> Rev {
    Rev { main, sub: 0 }
}

#[test]
fn compaction_keeps_what_reads_at_or_above_it_need() {
    let mut s = Store::new();
    s.apply(put("a", "1")); // 1
    s.apply(put("a", "2")); // 2
    s.apply(put("b", "1")); // 3
    s.apply(del("b")); // 4
    s.apply(put("c", "1")); // 5
    s.apply(put("a", "3")); // 6
    let before: Vec<_> = (4..=6).map(|r| s.all_at(r).data).collect();
    let r = s.apply(compact(4));
    assert_eq!(r.result, CommandResult::Compacted { revision: 4 });
    assert_eq!(r.revision, 6, "a compaction is not a write");
    assert_eq!(s.mvcc.compacted(), 4);
    for (r, want) in (4..=6).zip(&before) {
        assert_eq!(&s.all_at(r).data, want, "at {r}");
    }
    assert!(matches!(
        s.mvcc.range(&all(), 3),
        Err(StateError::Compacted {
            requested: 3,
            compacted: 4
        })
    ));
    // The index update is at apply; the records go with the sweep.
    assert_eq!(records(&s).len(), 6);
    assert_eq!(s.mvcc.sweep_all(4).unwrap(), 3);
    assert_eq!(records(&s), vec![rev(2), rev(5), rev(6)]);
    assert_eq!(s.all_at(4).data.kvs, vec![kv("a", "2", 1, 2, 2)]);
    assert_eq!(s.all_at(6).data.kvs[0], kv("a", "3", 1, 6, 3));
    // The meta went in the apply's batch: a reopen knows the compaction.
    let s = s.reopen();
    assert_eq!(s.mvcc.compacted(), 4);
    assert_eq!(s.mvcc.dropped_at_open(), 0);
    assert_eq!(s.all_at(6).data.kvs[0], kv("a", "3", 1, 6, 3));
}

#[test]
fn compactions_are_refused_like_etcd_refuses_them() {
    let mut s = Store::new();
    // etcd: compacting a store never compacted to 0 is a no-op, accepted.
    assert_eq!(
        s.apply(compact(0)).result,
        CommandResult::Compacted { revision: 0 }
    );
    s.apply(put("a", "1"));
    s.apply(put("a", "2"));
    s.apply(compact(1));
    let refused = |s: &mut Store, revision| s.apply(compact(revision)).result;
    assert_eq!(
        refused(&mut s, 1),
        CommandResult::Rejected(RejectReason::Compacted {
            requested: 1,
            compacted: 1
        })
    );
    assert_eq!(
        refused(&mut s, 3),
        CommandResult::Rejected(RejectReason::FutureRevision {
            requested: 3,
            current: 2
        })
    );
    // etcd: 0 and below are behind the compacted revision.
    for bad in [0, -1, i64::MIN] {
        assert!(matches!(
            refused(&mut s, bad),
            CommandResult::Rejected(RejectReason::Compacted { compacted: 1, .. })
        ));
    }
    assert_eq!(refused(&mut s, i64::MAX), {
        CommandResult::Rejected(RejectReason::FutureRevision {
            requested: i64::MAX,
            current: 2,
        })
    });
    assert_eq!(s.mvcc.compacted(), 1);
    // Compacting to the current revision is allowed; reading it still is.
    assert_eq!(refused(&mut s, 2), CommandResult::Compacted { revision: 2 });
    assert_eq!(s.all_at(0).data.kvs, vec![kv("a", "2", 1, 2, 2)]);
}

#[test]
fn a_reopen_with_the_sweep_unfinished_drops_the_rest() {
    let mut s = Store::new();
    for i in 0..20 {
        s.apply(put("k", &i.to_string()));
        s.apply(put(&format!("gone{i}"), "x"));
        s.apply(del(&format!("gone{i}")));
    }
    // Kept at 59: k's last put (58) and gone19's put (59, deleted at 60).
    s.apply(compact(59));
    // A crash after two records of the sweep.
    let (next, deleted) = s.mvcc.sweep(59, None, 2).unwrap();
    assert!(next.is_some());
    assert_eq!(deleted, 2);
    let s = s.reopen();
    assert_eq!(s.mvcc.dropped_at_open(), 55);
    let at_59 = vec![kv("gone19", "x", 59, 59, 1), kv("k", "19", 1, 58, 20)];
    assert_eq!(s.all_at(59).data.kvs, at_59);
    assert_eq!(s.mvcc.sweep_all(59).unwrap(), 55);
    assert_eq!(records(&s), vec![rev(58), rev(59), rev(60)]);
    assert_eq!(s.all_at(59).data.kvs, at_59);
    assert_eq!(s.reopen().mvcc.dropped_at_open(), 0);
}

#[test]
fn reads_match_a_model_across_compactions_sweeps_and_reopens() {
    for seed in [7, 11, 2024, 31337, 271828, 5150] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = Store::new();
        let mut model = Model::new();
        let mut compactions = 0;
        for step in 0..300 {
            let command = command_or_compact(&mut rng, &model);
            let want = model.apply(&command);
            assert_eq!(s.apply(command.clone()), want, "seed {seed} step {step}");
            if let CommandResult::Compacted { revision } = want.result {
                compactions += 1;
                // Sweep some of it, as far as a crash may have let it go.
                let max = rng.gen_range(1..8);
                s.mvcc.sweep(revision, None, max).unwrap();
                check_reads(
                    |req, at| s.mvcc.range(req, at),
                    &model,
                    &mut rng,
                    &format!("seed {seed} step {step}"),
                );
            }
            if rng.gen_bool(0.02) {
                s = s.reopen();
            }
        }
        assert!(compactions > 3, "seed {seed}: {compactions} compactions");
        s = s.reopen();
        check_reads(|r, at| s.mvcc.range(r, at), &model, &mut rng, "reopened");
        s.mvcc.sweep_all(model.compacted).unwrap();
        check_reads(|r, at| s.mvcc.range(r, at), &model, &mut rng, "swept");
        let s = s.reopen();
        assert_eq!(s.mvcc.dropped_at_open(), 0, "seed {seed}");
        check_reads(
            |r, at| s.mvcc.range(r, at),
            &model,
            &mut rng,
            "swept, reopened",
        );
    }
}

/// Reads at a revision racing a compaction above it and its sweep: each
/// answers what the revision held or `Compacted`, never a half-dropped
/// history or a missing record (the recheck in `Mvcc::checked`).
#[test]
fn reads_racing_a_compaction_answer_whole_or_compacted() {
    let mut s = Store::new();
    for round in 0..20 {
        for k in 0..50 {
            s.apply(put(&format!("k{k:02}"), &round.to_string()));
        }
    }
    let at = 500;
    let want = s.all_at(at).data;
    let entries: Vec<_> = (0..5).map(|i| s.entry(compact(at + 1 + i * 100))).collect();
    let (mvcc, opts) = (&s.mvcc, &s.opts);
    let compacted_reads = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for entry in entries {
                let done = crate::apply::apply_entries(mvcc, opts, &[entry], |w| {
                    mvcc.engine.write_batch(&w)
                })
                .unwrap();
                mvcc.sweep_all(done.compacted.unwrap()).unwrap();
            }
        });
        for _ in 0..2 {
            scope.spawn(|| loop {
                match mvcc.range(&all(), at) {
                    Ok(read) => assert_eq!(read.data, want),
                    Err(StateError::Compacted { requested, .. }) => {
                        assert_eq!(requested, at);
                        compacted_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Err(e) => panic!("{e}"),
                }
            });
        }
    });
    assert_eq!(compacted_reads.into_inner(), 2);
}

/// Bytes of the revision records, counted the slow way.
fn engine_record_bytes(s: &Store) -> u64 {
    s.mvcc
        .engine
        .scan(&[REV_PREFIX], Some(&[REV_PREFIX + 1]))
        .map(|item| {
            let (k, v) = item.unwrap();
            (k.len() + v.len()) as u64
        })
        .sum()
}

/// The quota's measure: applies add each record's bytes, sweeps subtract
/// what they delete, and a reopen recounts the same figure.
#[test]
fn record_bytes_follow_writes_compaction_and_reopen() {
    let mut s = Store::new();
    assert_eq!(s.mvcc.record_bytes(), 0);
    let big = "v".repeat(1000);
    for _ in 0..10 {
        s.apply(put("a", &big));
    }
    s.apply(del("a"));
    let full = s.mvcc.record_bytes();
    assert!(full > 10_000, "{full}");
    assert_eq!(full, engine_record_bytes(&s));
    s.apply(compact(11));
    assert_eq!(
        s.mvcc.record_bytes(),
        full,
        "the sweep frees, not the apply"
    );
    s.mvcc.sweep_all(11).unwrap();
    let freed = s.mvcc.record_bytes();
    assert_eq!(freed, engine_record_bytes(&s));
    assert!(freed < 100, "only the meta-free tombstone is left: {freed}");
    let s = s.reopen();
    assert_eq!(s.mvcc.record_bytes(), freed);
}
