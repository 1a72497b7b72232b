//! Set workload: every add puts a fresh key `s/<n>` (value n); after the
//! run one linearizable prefix read returns the whole set.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::conn::{int_of, NodeConn};
use super::Ctx;
use crate::checker::SET_PREFIX;
use crate::history::{History, Phase, Value, F};

#[derive(Default)]
pub struct Shared {
    next: AtomicI64,
}

pub async fn run(ctx: Ctx, process: i64, mut conn: NodeConn, shared: Arc<Shared>) {
    while ctx.running() {
        let x = shared.next.fetch_add(1, Ordering::Relaxed);
        let key = format!("{SET_PREFIX}{x}");
        let op = ctx.history.invoke(process, F::Add, &key, Value::Int(x));
        let errored = match conn.put(&key, x.to_string()).await {
            Ok(()) => {
                ctx.history.complete(&op, Phase::Ok, Value::None, None);
                false
            }
            Err(e) => {
                ctx.fail(&op, e);
                true
            }
        };
        ctx.stagger(errored).await;
    }
}

/// Returns true once a read succeeded.
pub async fn final_read(history: &History, process: i64, conn: &mut NodeConn) -> bool {
    let op = history.invoke(process, F::FinalRead, SET_PREFIX, Value::None);
    match conn.range_prefix(SET_PREFIX).await {
        Ok(kvs) => {
            // The element is the value; a value that does not parse would
            // be corruption, reported as an unexpected element.
            let xs = kvs
                .iter()
                .map(|kv| int_of(kv).unwrap_or(i64::MIN))
                .collect();
            history.complete(&op, Phase::Ok, Value::Set(xs), None);
            true
        }
        Err(e) => {
            history.complete(&op, Phase::Fail, Value::None, Some(e.message()));
            false
        }
    }
}
