//! Register workload: independent keys `r/<n>`, each a register read with
//! linearizable gets, written with puts and compare-and-set transactions.
//! After a few hundred ops the processes move to a fresh key, which keeps
//! every key's history small enough for the linearizability search.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use nines_client::proto as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use rand::Rng;

use super::conn::{int_of, NodeConn};
use super::Ctx;
use crate::checker::REGISTER_PREFIX;
use crate::history::{Phase, Value, CAS_MISMATCH, F};

const OPS_PER_KEY: u64 = 300;

#[derive(Default)]
pub struct Shared {
    ops: AtomicU64,
    /// Values are unique across keys, hence unique per key.
    next_value: AtomicI64,
}

pub async fn run(ctx: Ctx, process: i64, mut conn: NodeConn, shared: Arc<Shared>) {
    // The last value this process saw, the likeliest to make a cas succeed.
    let mut last: Option<(String, i64)> = None;
    while ctx.running() {
        let key = format!(
            "{REGISTER_PREFIX}{}",
            shared.ops.fetch_add(1, Ordering::Relaxed) / OPS_PER_KEY
        );
        let choice = rand::thread_rng().gen_range(0..10);
        let errored = if choice < 4 {
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
            outcome == Outcome::Error
        };
        ctx.stagger(errored).await;
    }
}

/// Returns true on error.
async fn read(
    ctx: &Ctx,
    process: i64,
    conn: &mut NodeConn,
    key: &str,
    last: &mut Option<(String, i64)>,
) -> bool {
    let op = ctx.history.invoke(process, F::Read, key, Value::None);
    match conn.get(key).await {
        Ok(kv) => {
            let v = kv.as_ref().and_then(int_of);
            if let Some(v) = v {
                *last = Some((key.to_string(), v));
            }
            ctx.history.complete(&op, Phase::Ok, Value::Read(v), None);
            false
        }
        Err(e) => {
            ctx.fail(&op, e);
            true
        }
    }
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Ok,
    Mismatch,
    Error,
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
        Err(e) => {
            ctx.fail(&op, e);
            Outcome::Error
        }
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
        Err(e) => {
            ctx.fail(&op, e);
            Outcome::Error
        }
    }
}
