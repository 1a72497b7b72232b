//! Register workload: independent keys `r/<n>`, each a register read with
//! linearizable gets, written with puts and compare-and-set transactions.
//!
//! All processes share one key at a time, so its ops are concurrent, and move
//! to a fresh key after a few hundred ops, or as soon as any op on the key
//! ends `info` (indeterminate), as Jepsen's independent checker does with a
//! crashed process. Keys only grow, so no process ever returns to a key it
//! left, and every info op on a key was in flight when the key was
//! abandoned: a key holds at most one info op per process (`concurrency`,
//! 5 by default). Each info op may or may not have happened, so this keeps
//! every key's linearizability search small, even through a long outage.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use nines_client::proto as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use rand::Rng;

use super::conn::{int_of, NodeConn};
use super::Ctx;
use crate::checker::REGISTER_PREFIX;
use crate::history::{Phase, Value, CAS_MISMATCH, F};

const OPS_PER_KEY: u64 = 300;

/// The key the processes share now, and how many ops were started on it.
#[derive(Default)]
struct Current {
    key: u64,
    ops: u64,
}

#[derive(Default)]
pub struct Shared {
    current: Mutex<Current>,
    /// Values are unique across keys, hence unique per key.
    next_value: AtomicI64,
}

impl Shared {
    /// The key for a process's next op.
    fn next_key(&self) -> u64 {
        let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if c.ops >= OPS_PER_KEY {
            c.key += 1;
            c.ops = 0;
        }
        c.ops += 1;
        c.key
    }

    /// An op on `key` ended info: no op starts on `key` again.
    fn abandon(&self, key: u64) {
        let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if c.key == key {
            c.key += 1;
            c.ops = 0;
        }
    }
}

pub async fn run(ctx: Ctx, process: i64, mut conn: NodeConn, shared: Arc<Shared>) {
    // The last value this process saw, the likeliest to make a cas succeed.
    let mut last: Option<(String, i64)> = None;
    while ctx.running() {
        let id = shared.next_key();
        let key = format!("{REGISTER_PREFIX}{id}");
        let choice = rand::thread_rng().gen_range(0..10);
        let outcome = if choice < 4 {
            read(&ctx, process, &mut conn, &key, &mut last).await
        } else {
            let value = shared.next_value.fetch_add(1, Ordering::Relaxed) + 1;
            let expected = last.as_ref().filter(|(k, _)| *k == key).map(|(_, v)| *v);
            let outcome = match expected {
                Some(old) if choice >= 7 => cas(&ctx, process, &mut conn, &key, old, value).await,
                _ => write(&ctx, process, &mut conn, &key, value).await,
            };
            if outcome == Outcome::Ok {
                last = Some((key.clone(), value));
            }
            outcome
        };
        if outcome == Outcome::Info {
            shared.abandon(id);
        }
        ctx.stagger(matches!(outcome, Outcome::Failed | Outcome::Info))
            .await;
    }
}

async fn read(
    ctx: &Ctx,
    process: i64,
    conn: &mut NodeConn,
    key: &str,
    last: &mut Option<(String, i64)>,
) -> Outcome {
    let op = ctx.history.invoke(process, F::Read, key, Value::None);
    match conn.get(key).await {
        Ok(kv) => {
            let v = kv.as_ref().and_then(int_of);
            if let Some(v) = v {
                *last = Some((key.to_string(), v));
            }
            ctx.history.complete(&op, Phase::Ok, Value::Read(v), None);
            Outcome::Ok
        }
        Err(e) => Outcome::of_error(ctx.fail(&op, e)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Mismatch,
    /// Definitely did not happen.
    Failed,
    /// May or may not have happened.
    Info,
}

impl Outcome {
    fn of_error(recorded: Phase) -> Outcome {
        if recorded == Phase::Info {
            Outcome::Info
        } else {
            Outcome::Failed
        }
    }
}

async fn write(ctx: &Ctx, process: i64, conn: &mut NodeConn, key: &str, value: i64) -> Outcome {
    let op = ctx
        .history
        .invoke(process, F::Write, key, Value::Int(value));
    match conn.put(key, value.to_string()).await {
        Ok(()) => {
            ctx.history.complete(&op, Phase::Ok, Value::None, None);
            Outcome::Ok
        }
        Err(e) => Outcome::of_error(ctx.fail(&op, e)),
    }
}

async fn cas(
    ctx: &Ctx,
    process: i64,
    conn: &mut NodeConn,
    key: &str,
    old: i64,
    new: i64,
) -> Outcome {
    let op = ctx
        .history
        .invoke(process, F::Cas, key, Value::Cas(old, new));
    let req = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(old.to_string().into_bytes())),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: new.to_string().into_bytes(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    match conn.txn(req).await {
        Ok(resp) if resp.succeeded => {
            ctx.history.complete(&op, Phase::Ok, Value::None, None);
            Outcome::Ok
        }
        Ok(_) => {
            ctx.history
                .complete(&op, Phase::Fail, Value::None, Some(CAS_MISMATCH.into()));
            Outcome::Mismatch
        }
        Err(e) => Outcome::of_error(ctx.fail(&op, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::BTreeMap;

    #[test]
    fn processes_share_a_key_and_rotate_after_ops_per_key() {
        let shared = Shared::default();
        let keys: Vec<u64> = (0..2 * OPS_PER_KEY + 1)
            .map(|_| shared.next_key())
            .collect();
        assert!(keys[..OPS_PER_KEY as usize].iter().all(|&k| k == 0));
        assert!(keys[OPS_PER_KEY as usize..2 * OPS_PER_KEY as usize]
            .iter()
            .all(|&k| k == 1));
        assert_eq!(keys.last(), Some(&2));
    }

    /// Five processes run ops with random overlap through a long outage in
    /// which most ops end info: no key may hold more than one info op per
    /// process, however many info ops there are in all.
    #[test]
    fn info_ops_per_key_are_bounded_by_the_process_count() {
        const PROCS: usize = 5;
        let shared = Shared::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut in_flight: Vec<Option<u64>> = vec![None; PROCS];
        let mut info_per_key: BTreeMap<u64, usize> = BTreeMap::new();
        let mut info_by: BTreeMap<(u64, usize), usize> = BTreeMap::new();
        for step in 0..200_000 {
            let p = rng.gen_range(0..PROCS);
            match in_flight[p] {
                None => in_flight[p] = Some(shared.next_key()),
                Some(key) => {
                    // Steps 50k..150k are an outage: 90% of ops time out.
                    let outage = (50_000..150_000).contains(&step);
                    if rng.gen_bool(if outage { 0.9 } else { 0.01 }) {
                        *info_per_key.entry(key).or_default() += 1;
                        *info_by.entry((key, p)).or_default() += 1;
                        shared.abandon(key);
                    }
                    in_flight[p] = None;
                }
            }
        }
        let total: usize = info_per_key.values().sum();
        assert!(total > 40_000, "{total} info ops");
        assert!(info_by.values().all(|&n| n == 1));
        let max = info_per_key.values().copied().max().unwrap_or(0);
        assert!(max <= PROCS, "a key holds {max} info ops");
        // Before, keys rotated only by op count: 300 ops, most of them info.
        assert!(max >= 2, "the processes overlap on keys");
    }
}
