//! List-append workload: keys `a/<k>` hold comma-separated elements. An
//! append reads the key (value and mod_revision) and writes the extended
//! list in a transaction guarded by `mod_revision ==`, retrying a few times
//! on contention; reads fetch several keys in one transaction. A sliding
//! window of active keys keeps values short.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use nines_client::proto as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;
use pb::response_op::Response;
use rand::Rng;

use super::conn::{list_of, NodeConn, OpError};
use super::Ctx;
use crate::checker::APPEND_PREFIX;
use crate::history::{History, Phase, Value, F};

const ACTIVE_KEYS: i64 = 5;
const APPENDS_PER_KEY: i64 = 40;
const READ_KEYS: usize = 3;
const CAS_TRIES: usize = 3;

#[derive(Default)]
pub struct Shared {
    next: AtomicI64,
}

fn key_of(k: i64) -> String {
    format!("{APPEND_PREFIX}{k}")
}

pub async fn run(ctx: Ctx, process: i64, mut conn: NodeConn, shared: Arc<Shared>) {
    while ctx.running() {
        let base =
            shared.next.load(Ordering::Relaxed) / (APPENDS_PER_KEY * ACTIVE_KEYS) * ACTIVE_KEYS;
        let errored = if rand::thread_rng().gen_bool(0.6) {
            let x = shared.next.fetch_add(1, Ordering::Relaxed);
            let key = key_of(base + rand::thread_rng().gen_range(0..ACTIVE_KEYS));
            append(&ctx, process, &mut conn, &key, x).await
        } else {
            let mut keys: Vec<String> = (0..READ_KEYS)
                .map(|_| key_of(base + rand::thread_rng().gen_range(0..ACTIVE_KEYS)))
                .collect();
            keys.sort();
            keys.dedup();
            read(&ctx, process, &mut conn, &keys).await
        };
        ctx.stagger(errored).await;
    }
}

fn range(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// Returns true on error.
async fn append(ctx: &Ctx, process: i64, conn: &mut NodeConn, key: &str, x: i64) -> bool {
    let op = ctx.history.invoke(process, F::Append, key, Value::Int(x));
    for _ in 0..CAS_TRIES {
        let (list, mod_revision) = match conn.get(key).await {
            Ok(Some(kv)) => (list_of(&kv), kv.mod_revision),
            Ok(None) => (Vec::new(), 0),
            // Nothing was written yet, whatever the error: a definite fail.
            Err(e) => {
                ctx.fail(&op, OpError::Definite(e.message()));
                return true;
            }
        };
        let mut text: Vec<String> = list.iter().map(i64::to_string).collect();
        text.push(x.to_string());
        let req = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(TargetUnion::ModRevision(mod_revision)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: text.join(",").into_bytes(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        match conn.txn(req).await {
            Ok(resp) if resp.succeeded => {
                ctx.history.complete(&op, Phase::Ok, Value::None, None);
                return false;
            }
            // Someone else appended first: read again.
            Ok(_) => continue,
            Err(e) => {
                ctx.fail(&op, e);
                return true;
            }
        }
    }
    ctx.history
        .complete(&op, Phase::Fail, Value::None, Some("contention".into()));
    false
}

/// Returns true on error.
async fn read(ctx: &Ctx, process: i64, conn: &mut NodeConn, keys: &[String]) -> bool {
    let op = ctx
        .history
        .invoke(process, F::ReadMulti, keys.join(" "), Value::None);
    let req = pb::TxnRequest {
        success: keys.iter().map(|k| range(k)).collect(),
        ..Default::default()
    };
    match conn.txn(req).await {
        Ok(resp) => {
            let mut lists = BTreeMap::new();
            for (key, r) in keys.iter().zip(resp.responses) {
                if let Some(Response::ResponseRange(range)) = r.response {
                    lists.insert(key.clone(), range.kvs.first().map(list_of));
                }
            }
            ctx.history
                .complete(&op, Phase::Ok, Value::Lists(lists), None);
            false
        }
        Err(e) => {
            ctx.fail(&op, e);
            true
        }
    }
}

/// Returns true once a read succeeded.
pub async fn final_read(history: &History, process: i64, conn: &mut NodeConn) -> bool {
    let op = history.invoke(process, F::FinalRead, APPEND_PREFIX, Value::None);
    match conn.range_prefix(APPEND_PREFIX).await {
        Ok(kvs) => {
            let lists = kvs
                .iter()
                .map(|kv| {
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    (key, Some(list_of(kv)))
                })
                .collect();
            history.complete(&op, Phase::Ok, Value::Lists(lists), None);
            true
        }
        Err(e) => {
            history.complete(&op, Phase::Fail, Value::None, Some(e.message()));
            false
        }
    }
}
