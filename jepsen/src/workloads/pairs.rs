//! Atomic-read workload: a transaction writes one fresh value to both keys
//! of a pair (`p/<g>/a`, `p/<g>/b`); reads are one Range over the pair's
//! prefix, linearizable or serializable, served outside the log. Every
//! read must see both keys equal (a txn is atomic) and a header revision at
//! or above each key's mod_revision (the read is a snapshot at it). A store
//! that applies a txn key by key fails this within seconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use nines_client::proto as pb;
use pb::request_op::Request;
use rand::Rng;

use super::conn::{int_of, NodeConn};
use super::Ctx;
use crate::checker::PAIRS_PREFIX;
use crate::history::{Phase, Value, F};

/// Few pairs, so reads race writes to the same pair.
const PAIRS: i64 = 3;

/// Where a read's header revision goes in its recorded value.
pub const HEADER_KEY: &str = "header";

#[derive(Default)]
pub struct Shared {
    next: AtomicI64,
}

fn prefix_of(g: i64) -> String {
    format!("{PAIRS_PREFIX}{g}/")
}

pub async fn run(ctx: Ctx, process: i64, mut conn: NodeConn, shared: Arc<Shared>) {
    while ctx.running() {
        let prefix = prefix_of(rand::thread_rng().gen_range(0..PAIRS));
        let errored = if rand::thread_rng().gen_bool(0.4) {
            let x = shared.next.fetch_add(1, Ordering::Relaxed);
            write(&ctx, process, &mut conn, &prefix, x).await
        } else {
            let serializable = rand::thread_rng().gen_bool(0.5);
            read(&ctx, process, &mut conn, &prefix, serializable).await
        };
        ctx.stagger(errored).await;
    }
}

fn put(key: String, x: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: key.into_bytes(),
            value: x.to_string().into_bytes(),
            ..Default::default()
        })),
    }
}

/// Returns true on error.
async fn write(ctx: &Ctx, process: i64, conn: &mut NodeConn, prefix: &str, x: i64) -> bool {
    let op = ctx.history.invoke(process, F::Write, prefix, Value::Int(x));
    let req = pb::TxnRequest {
        success: vec![put(format!("{prefix}a"), x), put(format!("{prefix}b"), x)],
        ..Default::default()
    };
    match conn.txn(req).await {
        Ok(_) => {
            ctx.history.complete(&op, Phase::Ok, Value::None, None);
            false
        }
        Err(e) => {
            ctx.fail(&op, e);
            true
        }
    }
}

/// Records each key as `[value, mod_revision]` and the header revision
/// under `HEADER_KEY`. Returns true on error.
async fn read(
    ctx: &Ctx,
    process: i64,
    conn: &mut NodeConn,
    prefix: &str,
    serializable: bool,
) -> bool {
    let op = ctx
        .history
        .invoke(process, F::ReadMulti, prefix, Value::None);
    match conn.range_prefix_at(prefix, serializable).await {
        Ok(resp) => {
            let mut seen = BTreeMap::new();
            for kv in &resp.kvs {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let value = int_of(kv).unwrap_or(-1);
                seen.insert(key, Some(vec![value, kv.mod_revision]));
            }
            let header = resp.header.map_or(0, |h| h.revision);
            seen.insert(HEADER_KEY.to_string(), Some(vec![header]));
            ctx.history
                .complete(&op, Phase::Ok, Value::Lists(seen), None);
            false
        }
        Err(e) => {
            ctx.fail(&op, e);
            true
        }
    }
}
