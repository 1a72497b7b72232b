//! Lock workload, after Jepsen's etcd lock tests: each process takes the
//! lock (etcd's Lock service, under a lease it keeps alive), reads a
//! register, writes the value + 1, and unlocks. With `fenced`, the write is
//! a fenced txn (it applies only while the lock key still has the create
//! revision it had when the lock was taken); without, it is a plain put,
//! as most users of etcd locks write.
//!
//! To give lost locks a chance, a process sometimes pauses while holding
//! the lock, keepalives included (a GC pause or a SIGSTOP of the client),
//! for longer than its lease's TTL: the lease expires, another process
//! takes the lock, and the paused one then writes what it read before.
//! Fencing must refuse that write; the unfenced variant lets it through.
//!
//! Each write is recorded as F::Write of the register with the value
//! written, completed with what the checker needs: the fence, the value
//! read, and the write's revision.

use std::collections::BTreeMap;
use std::time::Duration;

use nines_client::{Client, Fenced, LeaseKeeper, LockHeld};
use rand::Rng;

use super::Ctx;
use crate::checker::lock::{FENCE, LOCK_LOST, READ, REVISION};
use crate::history::{History, Phase, Value, F};

/// Lease TTL: etcd's minimum, so a pause outlives it quickly.
const TTL: i64 = 2;
/// How long a process waits for the lock before giving up on this round.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Bound on one read or write (the client retries within it).
const OP_DEADLINE: Duration = Duration::from_secs(3);
/// Share of rounds in which the holder pauses past its TTL.
const PAUSE_RATE: f64 = 0.05;
const PAUSE: Duration = Duration::from_millis(3_500);

/// The lock's name and the register it guards, under the variant's prefix.
pub fn names(prefix: &str) -> (String, String) {
    (format!("{prefix}lock"), format!("{prefix}reg"))
}

struct Holder {
    client: Client,
    lease: Option<(i64, LeaseKeeper)>,
}

impl Holder {
    /// A lease kept alive, granted anew when the last one is gone.
    async fn lease(&mut self) -> Option<i64> {
        if let Some((id, keeper)) = &self.lease {
            if !keeper.is_expired() && keeper.state().failed.is_none() {
                return Some(*id);
            }
        }
        self.lease = None;
        let granted = tokio::time::timeout(OP_DEADLINE, self.client.lease_grant(TTL, 0))
            .await
            .ok()?
            .ok()?;
        let keeper = tokio::time::timeout(OP_DEADLINE, self.client.lease_keep_alive(granted.id))
            .await
            .ok()?
            .ok()?;
        self.lease = Some((granted.id, keeper));
        Some(granted.id)
    }
}

pub fn client(addrs: &[String]) -> anyhow::Result<Client> {
    let mut config = crate::tls::client_config(addrs.to_vec());
    config.request_timeout = Duration::from_secs(1);
    config.retry_deadline = OP_DEADLINE;
    Ok(Client::new(config)?)
}

pub async fn run(ctx: Ctx, process: i64, client: Client, prefix: &'static str, fenced: bool) {
    let (lock, register) = names(prefix);
    let mut holder = Holder {
        client,
        lease: None,
    };
    while ctx.running() {
        let wrote = round(&ctx, process, &mut holder, &lock, &register, fenced).await;
        ctx.stagger(!wrote).await;
    }
}

/// One take-read-write-release round; false if it never got to write.
async fn round(
    ctx: &Ctx,
    process: i64,
    holder: &mut Holder,
    lock: &str,
    register: &str,
    fenced: bool,
) -> bool {
    let Some(lease) = holder.lease().await else {
        return false;
    };
    let client = holder.client.clone();
    let held = match tokio::time::timeout(LOCK_WAIT, client.lock(lock, lease)).await {
        Ok(Ok(held)) => held,
        _ => return false,
    };
    let read = match tokio::time::timeout(OP_DEADLINE, client.get(register)).await {
        Ok(Ok(kv)) => kv.map_or(Some(0), |kv| parse(&kv.value)),
        _ => None,
    };
    let Some(read) = read else {
        let _ = tokio::time::timeout(OP_DEADLINE, client.unlock(held.key)).await;
        return false;
    };
    if rand::thread_rng().gen_bool(PAUSE_RATE) {
        // The whole process stops, its keepalives too.
        holder.lease = None;
        tokio::time::sleep(PAUSE).await;
    }
    write(
        &ctx.history,
        process,
        &client,
        register,
        &held,
        read,
        fenced,
    )
    .await;
    let _ = tokio::time::timeout(OP_DEADLINE, client.unlock(held.key)).await;
    true
}

fn parse(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

async fn write(
    history: &History,
    process: i64,
    client: &Client,
    register: &str,
    held: &LockHeld,
    read: i64,
    fenced: bool,
) {
    let wrote = read + 1;
    let op = history.invoke(process, F::Write, register, Value::Int(wrote));
    let put = nines_client::put_op(register, wrote.to_string());
    let mut seen = BTreeMap::from([
        (FENCE.to_string(), Some(vec![held.fence])),
        (READ.to_string(), Some(vec![read])),
    ]);
    let outcome = match fenced {
        true => tokio::time::timeout(
            OP_DEADLINE,
            client.fenced_txn(&held.key, held.fence, vec![put]),
        )
        .await
        .map(|r| {
            r.map(|f| match f {
                Fenced::Applied(resp) => (true, resp.header.map_or(0, |h| h.revision)),
                Fenced::LockLost(_) => (false, 0),
            })
        }),
        false => {
            let txn = nines_client::proto::TxnRequest {
                success: vec![put],
                ..Default::default()
            };
            tokio::time::timeout(OP_DEADLINE, client.txn(txn))
                .await
                .map(|r| r.map(|resp| (true, resp.header.map_or(0, |h| h.revision))))
        }
    };
    match outcome {
        Ok(Ok((true, revision))) => {
            seen.insert(REVISION.to_string(), Some(vec![revision]));
            history.complete(&op, Phase::Ok, Value::Lists(seen), None);
        }
        Ok(Ok((false, _))) => {
            history.complete(&op, Phase::Fail, Value::Lists(seen), Some(LOCK_LOST.into()))
        }
        Ok(Err(e)) if !e.is_indeterminate() => {
            history.complete(&op, Phase::Fail, Value::Lists(seen), Some(e.to_string()))
        }
        Ok(Err(e)) => history.complete(&op, Phase::Info, Value::Lists(seen), Some(e.to_string())),
        Err(_) => history.complete(&op, Phase::Info, Value::Lists(seen), Some("timeout".into())),
    }
}

/// After healing: the register's value, read linearizably.
pub async fn final_read(history: &History, process: i64, addrs: &[String], prefix: &str) -> bool {
    let (_, register) = names(prefix);
    let Ok(client) = client(addrs) else {
        return false;
    };
    let op = history.invoke(process, F::FinalRead, &register, Value::None);
    match client.get(register.as_str()).await {
        Ok(kv) => {
            let value = kv.and_then(|kv| parse(&kv.value));
            history.complete(&op, Phase::Ok, Value::Read(value), None);
            true
        }
        Err(e) => {
            history.complete(&op, Phase::Fail, Value::None, Some(e.to_string()));
            false
        }
    }
}
